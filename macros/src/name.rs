//! The topic a type gets when `#[event(topic = "...")]` does not name one:
//! its name in snake_case. The grammar itself lives in `tidings-grammar`,
//! shared with the runtime's `tidings::Topic`.

/// `OrderCreated` → `order_created`, `HTTPRequest` → `http_request`.
pub(crate) fn snake_case(name: &str) -> String {
    let chars: Vec<char> = name.chars().collect();
    let mut out = String::with_capacity(name.len() + 4);
    for (i, &c) in chars.iter().enumerate() {
        if c.is_uppercase() {
            let prev = i.checked_sub(1).map(|p| chars[p]);
            let next = chars.get(i + 1);
            let starts_word = match prev {
                None => false,
                Some('_') => false,
                Some(p) if p.is_lowercase() || p.is_ascii_digit() => true,
                Some(p) if p.is_uppercase() => next.is_some_and(|n| n.is_lowercase()),
                Some(_) => false,
            };
            if starts_word {
                out.push('_');
            }
            out.extend(c.to_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snake_case_of_type_names() {
        for (name, want) in [
            ("OrderCreated", "order_created"),
            ("HTTPRequest", "http_request"),
            ("Ping", "ping"),
            ("V2Order", "v2_order"),
            ("Order2Shipped", "order2_shipped"),
            ("already_snake", "already_snake"),
            ("ABC", "abc"),
        ] {
            assert_eq!(snake_case(name), want, "snake_case({name:?})");
        }
    }
}
