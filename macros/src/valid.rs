//! The topic grammar, checked at compile time. `tidings::Topic::parse` holds
//! the same rules for topics known only at run time; the UI tests and the
//! runtime's unit tests pin both to the same cases.

/// Longest topic, in bytes.
pub(crate) const MAX_TOPIC_LEN: usize = 255;

/// Checks `topic` against the grammar: dot-separated segments of
/// `[a-z0-9_-]`, 1..=255 bytes in all, no empty segment.
pub(crate) fn check_topic(topic: &str) -> Result<(), String> {
    if topic.is_empty() {
        return Err("topic is empty".to_owned());
    }
    if topic.len() > MAX_TOPIC_LEN {
        return Err(format!(
            "topic is {} bytes long, the limit is {MAX_TOPIC_LEN}",
            topic.len()
        ));
    }
    for (i, segment) in topic.split('.').enumerate() {
        if segment.is_empty() {
            return Err(format!(
                "topic `{topic}` has an empty segment (segment {}): segments are separated by single dots",
                i + 1
            ));
        }
    }
    if let Some((at, c)) = topic
        .char_indices()
        .find(|&(_, c)| !matches!(c, 'a'..='z' | '0'..='9' | '_' | '-' | '.'))
    {
        return Err(format!(
            "topic `{topic}` has the character {c:?} at byte {at}: topics allow only `a-z`, `0-9`, `_`, `-` and `.` between segments"
        ));
    }
    Ok(())
}

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

    #[test]
    fn grammar() {
        for ok in ["a", "orders.created", "a-b_c.9", &"x".repeat(255)] {
            assert!(check_topic(ok).is_ok(), "{ok:?} should be valid");
        }
        for bad in [
            "",
            ".a",
            "a.",
            "a..b",
            "Orders",
            "a b",
            "a/b",
            "é",
            &"x".repeat(256),
        ] {
            assert!(check_topic(bad).is_err(), "{bad:?} should be invalid");
        }
    }
}
