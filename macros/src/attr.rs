//! Parsing of the `#[event(...)]` attribute.

use syn::{Attribute, LitStr, Path};

/// What `#[event(...)]` said, each key at most once.
#[derive(Default)]
pub(crate) struct EventAttrs {
    pub(crate) topic: Option<LitStr>,
    pub(crate) krate: Option<Path>,
    /// `serde`: the type is serializable by topic name.
    pub(crate) serde: bool,
}

const EXPECTED: &str = "expected one of: `topic`, `crate`, `serde`";

pub(crate) fn parse(attrs: &[Attribute]) -> syn::Result<EventAttrs> {
    let mut out = EventAttrs::default();
    for attr in attrs.iter().filter(|a| a.path().is_ident("event")) {
        attr.parse_nested_meta(|meta| {
            if meta.path.is_ident("topic") {
                if out.topic.is_some() {
                    return Err(meta.error("duplicate attribute `topic`"));
                }
                out.topic = Some(meta.value()?.parse()?);
            } else if meta.path.is_ident("crate") {
                if out.krate.is_some() {
                    return Err(meta.error("duplicate attribute `crate`"));
                }
                let lit: LitStr = meta.value()?.parse()?;
                out.krate = Some(lit.parse()?);
            } else if meta.path.is_ident("serde") {
                if out.serde {
                    return Err(meta.error("duplicate attribute `serde`"));
                }
                out.serde = true;
            } else {
                let name = meta
                    .path
                    .get_ident()
                    .map(ToString::to_string)
                    .unwrap_or_else(|| "?".to_owned());
                return Err(meta.error(format!("unknown attribute `{name}`, {EXPECTED}")));
            }
            Ok(())
        })?;
    }
    Ok(out)
}
