//! The AsyncAPI document of this test binary's handlers is valid AsyncAPI 3.0: checked against
//! the specification's own JSON schema (`@asyncapi/specs`, fetched by `.ci/test`'s set-up into
//! `/tmp/millstream-asyncapi-specs`, or `MILLSTREAM_ASYNCAPI_SCHEMA`).

use millstream::asyncapi::AsyncApi;
use millstream::App;
use serde_json::Value;

fn schema() -> Value {
    let path = std::env::var("MILLSTREAM_ASYNCAPI_SCHEMA").unwrap_or_else(|_| {
        "/tmp/millstream-asyncapi-specs/package/schemas/3.0.0-without-$id.json".to_owned()
    });
    let text = std::fs::read_to_string(&path).unwrap_or_else(|error| {
        panic!("the AsyncAPI 3.0 schema at {path}: {error}; `.ci/test --setup-only` fetches it")
    });
    serde_json::from_str(&text).expect("the schema is JSON")
}

fn assert_valid(document: &Value) {
    let schema = schema();
    let validator = jsonschema::validator_for(&schema).expect("the schema compiles");
    let errors: Vec<String> =
        validator.iter_errors(document).map(|e| format!("{} at {}", e, e.instance_path)).collect();
    assert!(errors.is_empty(), "invalid AsyncAPI 3.0:\n{}\n{document:#}", errors.join("\n"));
}

#[test]
fn every_handler_of_this_binary_makes_a_valid_document_on_every_protocol() {
    let topology = App::from_registry().topology();
    assert!(topology.handlers().len() > 10, "the handling binary's handlers");
    let api = AsyncApi::new("millstream handling tests", "1.0.0")
        .description("Every handler of runtime/tests/handling.")
        .server("kafka", "kafka://broker:9092")
        .unwrap()
        .server("nats", "nats://nats:4222")
        .unwrap()
        .server("mqtt", "mqtt://mosquitto:1883")
        .unwrap()
        .server("rabbit", "amqp://guest:guest@rabbit:5672/%2f")
        .unwrap()
        .server("db", "postgres://postgres@db:5432/app")
        .unwrap();
    let document = api.document(&topology);
    assert_valid(&document);
    // Without servers (no bindings) too.
    assert_valid(&AsyncApi::new("bare", "0.1.0").document(&topology));
}

#[test]
fn the_cqrs_flow_has_its_channels_operations_and_messages() {
    let topology = App::from_registry().module_prefix("handling::cqrs::orders").topology();
    let document =
        AsyncApi::new("orders", "2.0.0").server("kafka", "kafka://broker:9092").unwrap().document(&topology);
    assert_valid(&document);
    let channels = document["channels"].as_object().unwrap();
    assert_eq!(channels.keys().collect::<Vec<_>>(), ["commands.PlaceOrder", "cqrs-test.orders"]);
    let orders = channels["cqrs-test.orders"]["messages"].as_object().unwrap();
    let mut messages: Vec<_> = orders.keys().collect();
    messages.sort();
    assert_eq!(messages, ["OrderPaid", "OrderPlaced"], "both event types on the shared topic");
    let place = &document["operations"]["handling__cqrs__orders__place.receive"];
    assert_eq!(place["action"], "receive");
    assert_eq!(place["channel"]["$ref"], "#/channels/commands.PlaceOrder");
    assert_eq!(place["x-millstream-role"], "command_handler");
    assert_eq!(place["bindings"]["kafka"]["groupId"]["enum"][0], "handling::cqrs::orders::place");
    let send = &document["operations"]["handling__cqrs__orders__place.send"];
    assert_eq!(send["action"], "send");
    assert_eq!(send["messages"][0]["$ref"], "#/channels/cqrs-test.orders/messages/OrderPlaced");
    assert_eq!(document["components"]["messages"]["OrderPlaced"]["payload"]["title"], "OrderPlaced");
}

#[test]
fn the_schema_rejects_what_is_not_asyncapi_3() {
    let topology = App::from_registry().module_prefix("handling::cqrs::orders").topology();
    let mut document = AsyncApi::new("orders", "2.0.0").document(&topology);
    let schema = schema();
    let validator = jsonschema::validator_for(&schema).expect("the schema compiles");
    assert!(validator.is_valid(&document));
    document["operations"]["handling__cqrs__orders__place.receive"]["action"] = "listen".into();
    assert!(!validator.is_valid(&document), "an unknown action is refused");
    let mut document = AsyncApi::new("orders", "2.0.0").document(&topology);
    document["asyncapi"] = "2.6.0".into();
    assert!(!validator.is_valid(&document), "another version is refused");
}

/// A type that describes itself with the `schema` feature.
mod described {
    use millstream::prelude::*;

    #[derive(Serialize, Deserialize)]
    #[cfg_attr(feature = "schema", derive(millstream::schemars::JsonSchema))]
    #[cfg_attr(feature = "schema", schemars(crate = "millstream::schemars"))]
    #[millstream::topic("asyncapi-test.parcels")]
    pub(crate) struct Parcel {
        pub(crate) id: u64,
        pub(crate) weight_grams: u32,
        pub(crate) label: Option<Label>,
    }

    #[derive(Serialize, Deserialize)]
    #[cfg_attr(feature = "schema", derive(millstream::schemars::JsonSchema))]
    #[cfg_attr(feature = "schema", schemars(crate = "millstream::schemars"))]
    pub(crate) struct Label {
        pub(crate) text: String,
    }

    #[millstream::handler]
    pub(crate) async fn weigh(parcel: Parcel) {
        let _ = (parcel.id, parcel.weight_grams, parcel.label.map(|l| l.text));
    }
}

#[test]
fn payload_types_deriving_json_schema_are_described_by_it() {
    let topology = App::from_registry().module_prefix("handling::asyncapi::described").topology();
    let document = AsyncApi::new("parcels", "1.0.0").document(&topology);
    assert_valid(&document);
    let payload = &document["components"]["messages"]["Parcel"]["payload"];
    if cfg!(feature = "schema") {
        assert_eq!(payload["type"], "object", "{payload:#}");
        let properties = payload["properties"].as_object().expect("properties");
        assert!(properties.contains_key("weight_grams"), "{payload:#}");
        // The nested type is inline, not a $ref into the AsyncAPI document.
        assert!(!payload.to_string().contains("$ref"), "{payload:#}");
        assert!(payload.to_string().contains("\"text\""), "{payload:#}");
        let example = &document["components"]["messages"]["Parcel"]["examples"][0]["payload"];
        assert_eq!(example["weight_grams"], 0, "an example made from the schema: {example:#}");
    } else {
        assert_eq!(payload, &serde_json::json!({ "type": "object", "title": "Parcel" }));
    }
}
