//! How an event type is (de)serialized without being named: [`Codec`],
//! made by `#[event(serde)]`.

#[cfg(feature = "serde")]
use std::any::Any;
use std::fmt;

#[cfg(feature = "serde")]
type SerializeFn = fn(&(dyn Any + Send + Sync)) -> Option<&dyn erased_serde::Serialize>;
#[cfg(feature = "serde")]
type DeserializeFn = for<'de> fn(
    &mut dyn erased_serde::Deserializer<'de>,
) -> Result<Box<dyn Any + Send + Sync>, erased_serde::Error>;

/// How one event type is serialized and deserialized without naming it:
/// made by `#[event(serde)]` (feature `serde`), looked up by topic name.
#[derive(Copy, Clone)]
pub struct Codec {
    #[cfg(feature = "serde")]
    pub(crate) serialize: SerializeFn,
    #[cfg(feature = "serde")]
    pub(crate) deserialize: DeserializeFn,
    _private: (),
}

impl Codec {
    /// The codec of `E`. `#[event(serde)]` calls this for you.
    #[cfg(feature = "serde")]
    pub fn of<E>() -> Codec
    where
        E: Any + Send + Sync + serde::Serialize + serde::de::DeserializeOwned,
    {
        Codec {
            serialize: |any| {
                any.downcast_ref::<E>()
                    .map(|e| e as &dyn erased_serde::Serialize)
            },
            deserialize: |d| erased_serde::deserialize::<E>(d).map(|e| Box::new(e) as _),
            _private: (),
        }
    }
}

impl fmt::Debug for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Codec")
    }
}
