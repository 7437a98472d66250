//! The allow-list as an [AsyncAPI 3.0](https://www.asyncapi.com/docs/reference/specification/v3.0.0)
//! document (feature `asyncapi`): the contract other teams' tools read.
//!
//! One channel per topic (its address is the topic, or the subject a
//! bridge gives it), one message per event type (its JSON Schema with the
//! `schemars` feature and [`AsyncApi::schema`]), a `send` operation for
//! every topic on the allow-list (anything on it may be published) and a
//! `receive` operation for every topic this process subscribes to when the
//! document is made. The bus's own topics (`tidings.*`) are left out.
//!
//! ```
//! use tidings::{asyncapi::AsyncApi, Bus, Event};
//!
//! #[derive(Debug, Event)]
//! #[event(topic = "orders.placed")]
//! struct OrderPlaced { id: u64 }
//!
//! let bus = Bus::builder().topic::<OrderPlaced>().build()?;
//! let doc = AsyncApi::new(&bus).title("orders").version("1.4.0").to_json();
//! assert_eq!(doc["asyncapi"], "3.0.0");
//! assert_eq!(doc["channels"]["orders.placed"]["address"], "orders.placed");
//! assert_eq!(doc["operations"]["send.orders.placed"]["action"], "send");
//! # Ok::<(), tidings::error::BuildError>(())
//! ```

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use crate::Bus;

/// A topic named to an [`AsyncApi`] setter is not in the document: not on
/// the bus's allow-list, or one of the bus's own (`tidings.*`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("topic `{topic}` is not in the AsyncAPI document (not on the bus's allow-list)")]
pub struct UnknownTopic {
    /// The topic as given.
    pub topic: String,
}

/// The AsyncAPI version of the documents made here.
pub const ASYNCAPI_VERSION: &str = "3.0.0";

/// An AsyncAPI 3.0 document of a bus's allow-list, made by
/// [`AsyncApi::new`] and finished by its setters.
#[derive(Clone, Debug)]
#[must_use = "a document does nothing until turned into JSON"]
pub struct AsyncApi {
    title: String,
    version: String,
    description: Option<String>,
    servers: BTreeMap<String, (String, String)>,
    topics: Vec<Topic>,
}

#[derive(Clone, Debug)]
struct Topic {
    name: &'static str,
    type_name: &'static str,
    serializable: bool,
    retain: usize,
    subscriptions: Vec<String>,
    address: Option<String>,
    server: Option<String>,
    schema: Option<Value>,
}

impl AsyncApi {
    /// The document of `bus`'s allow-list and of its subscriptions now;
    /// titled "tidings bus", version "0.0.0" until set.
    pub fn new(bus: &Bus) -> Self {
        let stats = bus.stats();
        let topics = bus
            .topics()
            .into_iter()
            .filter(|t| !t.starts_with("tidings."))
            .filter_map(|t| bus.topic_info(t))
            .map(|info| Topic {
                name: info.name,
                type_name: info.type_name,
                serializable: info.serializable,
                retain: info.retain,
                subscriptions: stats
                    .topic(info.name)
                    .map(|t| t.subscriptions.iter().map(|s| s.name.clone()).collect())
                    .unwrap_or_default(),
                address: None,
                server: None,
                schema: None,
            })
            .collect();
        AsyncApi {
            title: "tidings bus".into(),
            version: "0.0.0".into(),
            description: None,
            servers: BTreeMap::new(),
            topics,
        }
    }

    /// The document's title (`info.title`): the service's name.
    pub fn title(mut self, title: impl Into<String>) -> Self {
        self.title = title.into();
        self
    }

    /// The version of the service's API (`info.version`).
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = version.into();
        self
    }

    /// A description of the service (`info.description`, CommonMark).
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.description = Some(description.into());
        self
    }

    /// Adds a server (`servers.<name>`), e.g. the NATS server a bridge uses:
    /// `host` is `host[:port]`, `protocol` e.g. `nats`.
    pub fn server(
        mut self,
        name: impl Into<String>,
        host: impl Into<String>,
        protocol: impl Into<String>,
    ) -> Self {
        self.servers
            .insert(name.into(), (host.into(), protocol.into()));
        self
    }

    /// Gives `topic`'s channel the address it has on `server` (a server
    /// added with [`server`](Self::server)): a bridge's subject.
    pub fn address(
        mut self,
        topic: &str,
        address: impl Into<String>,
        server: impl Into<String>,
    ) -> Result<Self, UnknownTopic> {
        let entry = self.entry(topic)?;
        entry.address = Some(address.into());
        entry.server = Some(server.into());
        Ok(self)
    }

    /// Adds the JSON Schema of `E` (draft-07, through `schemars`) as the
    /// payload of its topic's message.
    #[cfg(feature = "schemars")]
    pub fn schema<E: crate::Event + schemars::JsonSchema>(mut self) -> Result<Self, UnknownTopic> {
        let schema = schemars::generate::SchemaSettings::draft07()
            .into_generator()
            .into_root_schema_for::<E>();
        let schema = serde_json::to_value(schema).unwrap_or(Value::Null);
        self.entry(E::TOPIC)?.schema = Some(schema);
        Ok(self)
    }

    fn entry(&mut self, topic: &str) -> Result<&mut Topic, UnknownTopic> {
        match self.topics.iter().position(|t| t.name == topic) {
            Some(at) => Ok(&mut self.topics[at]),
            None => Err(UnknownTopic {
                topic: topic.into(),
            }),
        }
    }

    /// The document as JSON.
    pub fn to_json(&self) -> Value {
        let mut info = json!({ "title": self.title, "version": self.version });
        if let (Some(description), Some(info)) = (&self.description, info.as_object_mut()) {
            info.insert("description".into(), json!(description));
        }
        let mut channels = Map::new();
        let mut operations = Map::new();
        let mut messages = Map::new();
        for topic in &self.topics {
            let id = topic.name;
            let short = short_name(topic.type_name);
            let mut message = json!({
                "name": short,
                "title": short,
                "x-tidings-type": topic.type_name,
            });
            if let Some(message) = message.as_object_mut() {
                if topic.serializable {
                    message.insert("contentType".into(), json!("application/json"));
                } else {
                    message.insert(
                        "description".into(),
                        json!("In-process only: the type has no codec (`#[event(serde)]`)."),
                    );
                }
                if let Some(schema) = &topic.schema {
                    message.insert(
                        "payload".into(),
                        json!({
                            "schemaFormat": "application/schema+json;version=draft-07",
                            "schema": schema,
                        }),
                    );
                }
            }
            messages.insert(id.into(), message);
            let mut channel = json!({
                "address": topic.address.as_deref().unwrap_or(topic.name),
                "title": topic.name,
                "messages": { id: { "$ref": format!("#/components/messages/{id}") } },
                "x-tidings-retain": topic.retain,
            });
            if let (Some(server), Some(channel)) = (&topic.server, channel.as_object_mut()) {
                channel.insert(
                    "servers".into(),
                    json!([{ "$ref": format!("#/servers/{server}") }]),
                );
            }
            channels.insert(id.into(), channel);
            let reference = json!([{ "$ref": format!("#/channels/{id}/messages/{id}") }]);
            operations.insert(
                format!("send.{id}"),
                json!({
                    "action": "send",
                    "channel": { "$ref": format!("#/channels/{id}") },
                    "summary": format!("This service may publish `{short}`."),
                    "messages": reference,
                }),
            );
            if !topic.subscriptions.is_empty() {
                operations.insert(
                    format!("receive.{id}"),
                    json!({
                        "action": "receive",
                        "channel": { "$ref": format!("#/channels/{id}") },
                        "summary": format!("Subscribed by: {}.", topic.subscriptions.join(", ")),
                        "messages": reference,
                        "x-tidings-subscriptions": topic.subscriptions,
                    }),
                );
            }
        }
        let servers: Map<String, Value> = self
            .servers
            .iter()
            .map(|(name, (host, protocol))| {
                (name.clone(), json!({ "host": host, "protocol": protocol }))
            })
            .collect();
        let mut doc = json!({
            "asyncapi": ASYNCAPI_VERSION,
            "info": info,
            "defaultContentType": "application/json",
            "channels": channels,
            "operations": operations,
            "components": { "messages": messages },
        });
        if let (false, Some(doc)) = (servers.is_empty(), doc.as_object_mut()) {
            doc.insert("servers".into(), Value::Object(servers));
        }
        doc
    }

    /// The document as pretty-printed JSON text.
    pub fn to_string_pretty(&self) -> String {
        serde_json::to_string_pretty(&self.to_json()).unwrap_or_default()
    }
}

/// `crate::module::OrderPlaced<T>` → `OrderPlaced`.
fn short_name(type_name: &'static str) -> &'static str {
    let plain = type_name.split('<').next().unwrap_or(type_name);
    plain.rsplit("::").next().unwrap_or(plain)
}

#[cfg(test)]
mod tests {
    #[test]
    fn short_names() {
        assert_eq!(super::short_name("a::b::OrderPlaced"), "OrderPlaced");
        assert_eq!(super::short_name("a::Wrap<b::C>"), "Wrap");
        assert_eq!(super::short_name("Plain"), "Plain");
    }
}
