//! An [AsyncAPI 3.0](https://www.asyncapi.com/docs/reference/specification/v3.0.0) document of an
//! app, from what the link-time registry knows: a channel per topic, a `receive` operation per
//! handler and a `send` operation per handler that returns values to publish, a message per
//! payload type, and a server per backend URL given.
//!
//! ```
//! use millstream::asyncapi::AsyncApi;
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> millstream::Result<()> {
//! let app = millstream::App::from_registry();
//! let document = AsyncApi::new("shop", "1.0.0")
//!     .server("production", "kafka://broker-1:9092")?
//!     .document(&app.topology());
//! assert_eq!(document["asyncapi"], "3.0.0");
//! # Ok(()) }
//! ```
//!
//! Payloads are described by their JSON Schema with the `schema` feature when the type derives
//! `schemars::JsonSchema` (draft-07, subschemas inline), else by their type's name
//! (`{"type": "object", "title": "OrderPlaced"}`);
//! handlers that take the raw message or JSON (`Json<T>`, `Bytes`) get a message of the topic's
//! name with any payload. Where the servers' protocol has AsyncAPI bindings, operations carry
//! them: the consumer group as Kafka's `groupId` and NATS's `queue`, QoS 1 for MQTT, acks for
//! AMQP. Each operation names its handler, group and source location in `x-millstream-*`
//! extensions.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use crate::error::{Error, ErrorKind, Result};
use crate::registry::Role;
use crate::topology::{Node, Topology};

/// What the document says about the app itself, and where it runs.
#[derive(Clone, Debug)]
pub struct AsyncApi {
    title: String,
    version: String,
    description: Option<String>,
    servers: Vec<Server>,
}

#[derive(Clone, Debug)]
struct Server {
    name: String,
    protocol: &'static str,
    host: String,
    pathname: Option<String>,
}

impl AsyncApi {
    /// A document titled `title` for version `version` of the app.
    pub fn new(title: impl Into<String>, version: impl Into<String>) -> Self {
        AsyncApi { title: title.into(), version: version.into(), description: None, servers: Vec::new() }
    }

    /// A description of the app.
    pub fn description(mut self, text: impl Into<String>) -> Self {
        self.description = Some(text.into());
        self
    }

    /// A server the app runs against, from its backend URL (the scheme of
    /// [`connect`](crate::connect()): `kafka://`, `nats://`, `amqp://`, `mqtt://`, `redis://`,
    /// `postgres://`, ...). Credentials in the URL are left out of the document.
    pub fn server(mut self, name: impl Into<String>, url: &str) -> Result<Self> {
        let bad = |why: &str| Error::new(ErrorKind::Config, format!("AsyncAPI server URL: {why}"));
        let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("expected scheme://host"))?;
        let protocol = match scheme.to_ascii_lowercase().as_str() {
            "kafka" => "kafka",
            "amqp" => "amqp",
            "amqps" => "amqps",
            "mqtt" | "tcp" => "mqtt",
            "mqtts" | "ssl" => "secure-mqtt",
            "nats" => "nats",
            "redis" | "rediss" => "redis",
            "postgres" | "postgresql" => "postgres",
            "mysql" | "mariadb" => "mysql",
            "sqlite" => "sqlite",
            other => return Err(bad(&format!("no AsyncAPI protocol for `{other}://`"))),
        };
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let path = tail.split('?').next().unwrap_or("");
        let pathname = (!path.is_empty() && path != "/").then(|| path.to_owned());
        self.servers.push(Server { name: name.into(), protocol, host: host.to_owned(), pathname });
        Ok(self)
    }

    /// The document for `topology` (see [`App::topology`](crate::App::topology)).
    pub fn document(&self, topology: &Topology) -> Value {
        let protocols: Vec<&str> = self.servers.iter().map(|s| s.protocol).collect();
        let mut channels = BTreeMap::<String, Channel>::new();
        let channel = |channels: &mut BTreeMap<String, Channel>, topic: &str| {
            channels
                .entry(id(topic))
                .or_insert_with(|| Channel { address: topic.to_owned(), messages: Vec::new() });
            id(topic)
        };
        // The messages of each channel: the types read from it and written to it.
        for node in topology.handlers() {
            let read = channel(&mut channels, &node.topic);
            let message = message_id(node.payload, &node.topic).with_schema(node.payload_schema.as_ref());
            push_unique(&mut channels.get_mut(&read).expect("inserted").messages, message);
            if let Some(publishes) = &node.publishes {
                let written = channel(&mut channels, publishes);
                let message = message_id(node.output, publishes).with_schema(node.output_schema.as_ref());
                push_unique(&mut channels.get_mut(&written).expect("inserted").messages, message);
            }
        }
        let mut messages = Map::new();
        let mut channel_objects = Map::new();
        for (channel_id, channel) in &channels {
            let mut refs = Map::new();
            for message in &channel.messages {
                refs.insert(
                    message.id.clone(),
                    json!({ "$ref": format!("#/components/messages/{}", message.id) }),
                );
                messages.entry(message.id.clone()).or_insert_with(|| message.component());
            }
            let mut object = json!({ "address": channel.address, "messages": refs });
            if protocols.contains(&"kafka") {
                object["bindings"] =
                    json!({ "kafka": { "topic": channel.address, "bindingVersion": "0.5.0" } });
            }
            channel_objects.insert(channel_id.clone(), object);
        }
        let mut operations = Map::new();
        for node in topology.handlers() {
            let read = id(&node.topic);
            let message = message_id(node.payload, &node.topic).id;
            let mut receive = json!({
                "action": "receive",
                "channel": { "$ref": format!("#/channels/{read}") },
                "messages": [{ "$ref": format!("#/channels/{read}/messages/{message}") }],
                "summary": format!("{} reads {}", node.name, node.topic),
            });
            extensions(&mut receive, node);
            if let Some(bindings) = receive_bindings(&protocols, &node.group) {
                receive["bindings"] = bindings;
            }
            operations.insert(format!("{}.receive", id(&node.name)), receive);
            if let Some(publishes) = &node.publishes {
                let written = id(publishes);
                let message = message_id(node.output, publishes).id;
                let mut send = json!({
                    "action": "send",
                    "channel": { "$ref": format!("#/channels/{written}") },
                    "messages": [{ "$ref": format!("#/channels/{written}/messages/{message}") }],
                    "summary": format!("{} publishes to {publishes}", node.name),
                });
                extensions(&mut send, node);
                operations.insert(format!("{}.send", id(&node.name)), send);
            }
        }
        let mut info = json!({ "title": self.title, "version": self.version });
        if let Some(description) = &self.description {
            info["description"] = json!(description);
        }
        let mut document = json!({
            "asyncapi": "3.0.0",
            "info": info,
            "defaultContentType": "application/json",
            "channels": channel_objects,
            "operations": operations,
            "components": { "messages": messages },
        });
        if !self.servers.is_empty() {
            let servers: Map<String, Value> = self
                .servers
                .iter()
                .map(|server| {
                    let mut object = json!({ "host": server.host, "protocol": server.protocol });
                    if let Some(pathname) = &server.pathname {
                        object["pathname"] = json!(pathname);
                    }
                    (id(&server.name), object)
                })
                .collect();
            document["servers"] = Value::Object(servers);
        }
        document
    }
}

/// A channel being assembled.
struct Channel {
    address: String,
    messages: Vec<MessageRef>,
}

/// A message of a channel: a payload type, or any payload on a topic.
#[derive(Clone, PartialEq)]
struct MessageRef {
    id: String,
    type_name: Option<&'static str>,
    topic: String,
    schema: Option<Value>,
}

impl MessageRef {
    fn with_schema(mut self, schema: Option<&Value>) -> Self {
        self.schema = schema.cloned();
        self
    }

    fn component(&self) -> Value {
        match self.type_name {
            Some(name) => {
                let mut message = json!({
                    "name": name,
                    "title": name,
                    "contentType": "application/json",
                    "payload": self.schema.clone().unwrap_or_else(|| json!({ "type": "object", "title": name })),
                });
                // An example payload, made from the schema, when there is one to make it from.
                if let Some(example) = self.schema.as_ref().and_then(|schema| example(schema, 0)) {
                    message["examples"] = json!([{ "name": "example", "payload": example }]);
                }
                message
            }
            None => json!({
                "name": self.id,
                "summary": format!("any payload on {}", self.topic),
                "payload": {},
            }),
        }
    }
}

/// A value that fits `schema` (JSON Schema as schemars writes it): an object with every property,
/// the first of an enum or of the alternatives, a placeholder per type; `None` past a depth of 8
/// or for a schema that says nothing.
fn example(schema: &Value, depth: usize) -> Option<Value> {
    if depth > 8 {
        return None;
    }
    if let Some(value) = schema.get("const").or_else(|| schema.get("default")) {
        return Some(value.clone());
    }
    if let Some(first) = schema.get("enum").and_then(|e| e.as_array()?.first()) {
        return Some(first.clone());
    }
    for key in ["oneOf", "anyOf", "allOf"] {
        if let Some(alternatives) = schema.get(key).and_then(Value::as_array) {
            return alternatives.iter().find_map(|alternative| example(alternative, depth + 1));
        }
    }
    let kind = match schema.get("type") {
        Some(Value::String(kind)) => kind.as_str(),
        // `["string", "null"]`: the first that is not null.
        Some(Value::Array(kinds)) => {
            kinds.iter().filter_map(Value::as_str).find(|k| *k != "null").unwrap_or("null")
        }
        _ if schema.get("properties").is_some() => "object",
        _ => return None,
    };
    Some(match kind {
        "object" => {
            let properties = schema.get("properties").and_then(Value::as_object);
            let fields = properties
                .into_iter()
                .flatten()
                .filter_map(|(name, property)| Some((name.clone(), example(property, depth + 1)?)))
                .collect();
            Value::Object(fields)
        }
        "array" => Value::Array(
            schema.get("items").and_then(|items| example(items, depth + 1)).into_iter().collect(),
        ),
        "string" => json!("string"),
        "integer" => json!(0),
        "number" => json!(0.0),
        "boolean" => json!(false),
        _ => Value::Null,
    })
}

fn message_id(type_name: Option<&'static str>, topic: &str) -> MessageRef {
    match type_name {
        Some(name) => {
            MessageRef { id: id(name), type_name: Some(name), topic: topic.to_owned(), schema: None }
        }
        None => MessageRef {
            id: format!("{}.any", id(topic)),
            type_name: None,
            topic: topic.to_owned(),
            schema: None,
        },
    }
}

fn push_unique(messages: &mut Vec<MessageRef>, message: MessageRef) {
    match messages.iter_mut().find(|m| m.id == message.id) {
        // A schema known from one handler describes the type for all.
        Some(known) if known.schema.is_none() => known.schema = message.schema,
        Some(_) => {}
        None => messages.push(message),
    }
}

fn extensions(operation: &mut Value, node: &Node) {
    operation["x-millstream-handler"] = json!(node.name);
    operation["x-millstream-group"] = json!(node.group);
    if let Some(role) = node.role {
        let role = match role {
            Role::Handler => "handler",
            Role::CommandHandler => "command_handler",
            Role::EventHandler => "event_handler",
            Role::SagaHandler { .. } => "saga_handler",
        };
        operation["x-millstream-role"] = json!(role);
    }
    if let Some(location) = node.location {
        operation["x-millstream-location"] = json!(location.to_string());
    }
}

/// The bindings of a receive operation, for the protocols of the document's servers.
fn receive_bindings(protocols: &[&str], group: &str) -> Option<Value> {
    let mut bindings = Map::new();
    for protocol in protocols {
        match *protocol {
            "kafka" => {
                let group_id = json!({ "type": "string", "enum": [group] });
                bindings.insert("kafka".into(), json!({ "groupId": group_id, "bindingVersion": "0.5.0" }));
            }
            "nats" => {
                let queue: String = group.chars().take(255).collect();
                bindings.insert("nats".into(), json!({ "queue": queue, "bindingVersion": "0.1.0" }));
            }
            "mqtt" | "secure-mqtt" => {
                bindings.insert("mqtt".into(), json!({ "qos": 1, "bindingVersion": "0.2.0" }));
            }
            "amqp" | "amqps" => {
                bindings.insert("amqp".into(), json!({ "ack": true, "bindingVersion": "0.3.0" }));
            }
            _ => {}
        }
    }
    (!bindings.is_empty()).then_some(Value::Object(bindings))
}

/// The JSON Schema of `T` as AsyncAPI's default schema format takes it: draft-07, with every
/// subschema inline (a `$ref` would point into the AsyncAPI document, not the schema).
#[cfg(feature = "schema")]
pub(crate) fn schema_of<T: schemars::JsonSchema + ?Sized>() -> Value {
    let generator = schemars::generate::SchemaSettings::draft07()
        .with(|settings| settings.inline_subschemas = true)
        .into_generator();
    let mut schema = generator.into_root_schema_for::<T>().to_value();
    if let Some(object) = schema.as_object_mut() {
        object.remove("$schema");
    }
    schema
}

/// An AsyncAPI id (`^[\w\d\.\-_]+$`) from a name: other characters become `_`.
fn id(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') { c } else { '_' })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls_lose_their_credentials() {
        let api = AsyncApi::new("t", "1").server("prod", "amqp://user:secret@rabbit:5672/vhost").unwrap();
        let document = api.document(&Topology::default());
        assert_eq!(
            document["servers"]["prod"],
            json!({ "host": "rabbit:5672", "protocol": "amqp", "pathname": "/vhost" })
        );
        assert!(!document.to_string().contains("secret"));
        assert!(AsyncApi::new("t", "1").server("x", "ftp://host").is_err());
    }

    #[test]
    fn examples_fit_their_schema() {
        let schema = json!({
            "type": "object",
            "properties": {
                "id": { "type": "integer" },
                "label": { "type": ["string", "null"] },
                "lines": { "type": "array", "items": { "type": "object", "properties": { "qty": { "type": "integer" } } } },
                "state": { "enum": ["open", "closed"] },
                "paid": { "oneOf": [{ "type": "boolean" }, { "type": "null" }] },
            }
        });
        assert_eq!(
            example(&schema, 0),
            Some(
                json!({ "id": 0, "label": "string", "lines": [{ "qty": 0 }], "state": "open", "paid": false })
            )
        );
        assert_eq!(example(&json!({}), 0), None);
    }

    #[test]
    fn ids_are_sanitized() {
        assert_eq!(id("shop::bill"), "shop__bill");
        assert_eq!(id("orders.placed"), "orders.placed");
        assert_eq!(id("Vec<Order>"), "Vec_Order_");
    }
}
