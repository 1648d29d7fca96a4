//! A [`Message`] as MQTT v5 PUBLISH properties and back.
//!
//! - The id travels as the user property `millstream-id`.
//! - Each metadata entry is a user property of its own, in order, when its key and value are
//!   strings MQTT brokers accept. Mosquitto refuses (and disconnects for) control characters and
//!   Unicode non-characters in any string; entries holding one travel together in the user
//!   property `millstream-escaped`, a JSON array of pairs with everything outside printable ASCII
//!   escaped. They come back as metadata after the plain ones.
//! - User properties of foreign messages become metadata as they are; a foreign message without
//!   an id gets one made from its topic, payload and properties, so its redeliveries keep it.

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{Publish, PublishProperties};

use crate::message::{Message, MessageId, Metadata};

pub(super) const ID_PROPERTY: &str = "millstream-id";
pub(super) const ESCAPED_PROPERTY: &str = "millstream-escaped";

/// Whether Mosquitto accepts `text` as an MQTT UTF-8 string (no control characters, no
/// non-characters).
fn mqtt_safe(text: &str) -> bool {
    text.chars().all(|c| {
        let code = u32::from(c);
        !(code <= 0x1f
            || (0x7f..=0x9f).contains(&code)
            || (0xfdd0..=0xfdef).contains(&code)
            || (code & 0xfffe) == 0xfffe)
    })
}

/// JSON with everything outside printable ASCII escaped (`\uXXXX`).
fn escaped_json(pairs: &[(&str, &str)]) -> String {
    let json = serde_json::to_string(pairs).expect("string pairs serialize");
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if c.is_ascii() && !c.is_ascii_control() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

/// The PUBLISH properties of `message` and its payload.
pub(super) fn encode(message: Message) -> (PublishProperties, Bytes) {
    let (id, metadata, payload) = message.into_parts();
    let mut user = Vec::with_capacity(metadata.len() + 1);
    user.push((ID_PROPERTY.to_owned(), id.to_string()));
    let mut escaped = Vec::new();
    for (key, value) in metadata.iter() {
        if mqtt_safe(key) && mqtt_safe(value) && key != ID_PROPERTY && key != ESCAPED_PROPERTY {
            user.push((key.to_owned(), value.to_owned()));
        } else {
            escaped.push((key, value));
        }
    }
    if !escaped.is_empty() {
        user.push((ESCAPED_PROPERTY.to_owned(), escaped_json(&escaped)));
    }
    let properties = PublishProperties { user_properties: user, ..PublishProperties::default() };
    (properties, payload)
}

/// An upper bound of the PUBLISH packet that carries `message` to `topic` (fixed header, topic,
/// packet id, properties, payload), without encoding it: each metadata entry counted as if it
/// had to travel escaped (six bytes per byte, and the JSON around it).
pub(super) fn packet_bound(topic: &str, message: &Message) -> usize {
    const FIXED: usize = 5 + 2 + 2 + 4;
    const ID: usize = 1 + 2 + ID_PROPERTY.len() + 2 + 36;
    const ESCAPED: usize = 1 + 2 + ESCAPED_PROPERTY.len() + 2 + 2;
    let metadata: usize =
        message.metadata().iter().map(|(key, value)| 5 + 8 + 6 * (key.len() + value.len())).sum();
    FIXED + 2 + topic.len() + ID + ESCAPED + metadata + message.payload().len()
}

/// FNV-1a over `bytes`, from `seed`.
fn fnv(seed: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(seed, |hash, byte| (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3))
}

/// Rebuilds the message of an incoming PUBLISH.
pub(super) fn decode(publish: &Publish) -> Message {
    let mut id = None;
    let mut metadata = Metadata::new();
    let mut escaped = None;
    if let Some(properties) = &publish.properties {
        for (key, value) in &properties.user_properties {
            match key.as_str() {
                ID_PROPERTY if id.is_none() => id = MessageId::parse(value).ok(),
                ESCAPED_PROPERTY => escaped = Some(value.as_str()),
                _ => {
                    metadata.insert(key.as_str(), value.as_str());
                }
            }
        }
        if let Some(escaped) = escaped {
            match serde_json::from_str::<Vec<(String, String)>>(escaped) {
                Ok(pairs) => metadata.extend(pairs),
                Err(_) => {
                    metadata.insert(ESCAPED_PROPERTY, escaped);
                }
            }
        }
    }
    let id = id.unwrap_or_else(|| foreign_id(publish));
    Message::from_parts(id, metadata, publish.payload.clone())
}

/// A stable id for a message that came without one.
fn foreign_id(publish: &Publish) -> MessageId {
    let mut high = fnv(0xcbf2_9ce4_8422_2325, &publish.topic);
    high = fnv(high, &publish.payload);
    let mut low = fnv(0x8422_2325_cbf2_9ce4, &publish.payload);
    if let Some(properties) = &publish.properties {
        for (key, value) in &properties.user_properties {
            high = fnv(high, key.as_bytes());
            low = fnv(low, value.as_bytes());
        }
    }
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&high.to_be_bytes());
    bytes[8..].copy_from_slice(&low.to_be_bytes());
    MessageId::from_uuid(uuid::Builder::from_custom_bytes(bytes).into_uuid())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::v5::mqttbytes::QoS;

    fn round_trip(message: Message) -> Message {
        let (properties, payload) = encode(message);
        for (key, value) in &properties.user_properties {
            assert!(mqtt_safe(key) && mqtt_safe(value), "{key:?}={value:?} sent as is");
        }
        decode(&Publish::new("t", QoS::AtLeastOnce, payload, Some(properties)))
    }

    #[test]
    fn id_metadata_and_key_survive() {
        let sent = Message::new("x")
            .with_key("order-7")
            .with_header("plain", "value")
            .with_header("ctl", "line\nbreak\ttab")
            .with_header("del\u{7f}", "c1 \u{85}")
            .with_header("emoji", "🦀")
            .with_header("empty", "");
        let got = round_trip(sent.clone());
        assert_eq!(got.id(), sent.id());
        assert_eq!(got.key(), Some("order-7"));
        let mut a: Vec<_> = got.metadata().iter().collect();
        let mut b: Vec<_> = sent.metadata().iter().collect();
        a.sort();
        b.sort();
        assert_eq!(a, b);
    }

    #[test]
    fn the_packet_bound_is_never_below_the_packet() {
        let messages = [
            Message::new(""),
            Message::new("x".repeat(1000)),
            Message::new("x").with_key("k").with_header("plain", "value"),
            Message::new("x").with_header("ctl", "\u{1}\u{2}\u{3}\n").with_header("\u{ffff}", "🦀🦀"),
        ];
        for message in messages {
            let bound = packet_bound("some/topic", &message);
            let (properties, payload) = encode(message);
            let packet = Publish::new("some/topic", QoS::AtLeastOnce, payload, Some(properties));
            assert!(packet.size() + 2 <= bound, "{} + 2 > {bound}", packet.size());
        }
    }

    #[test]
    fn foreign_messages_get_stable_ids() {
        let publish = Publish::new("sensors/1", QoS::AtLeastOnce, "21.5", None);
        assert_eq!(decode(&publish).id(), decode(&publish).id());
        let other = Publish::new("sensors/2", QoS::AtLeastOnce, "21.5", None);
        assert_ne!(decode(&publish).id(), decode(&other).id());
    }
}
