//! Protobuf payloads (`protobuf` feature): a handler taking `Proto<T>` decodes and encodes with
//! `ProtobufCodec`, because the payload names it; what it publishes is the wire format.
#![cfg(feature = "protobuf")]

use std::sync::Mutex;

use millstream::codec::{Codec, Proto, ProtobufCodec};
use millstream::keys::message::TYPE;
use millstream::prelude::*;
use millstream::testing::TestApp;

pub(crate) mod shop {
    use super::*;

    #[derive(Clone, PartialEq, prost::Message)]
    #[millstream::event(topic = "proto-test.orders")]
    pub(crate) struct OrderPlaced {
        #[prost(uint64, tag = "1")]
        pub(crate) id: u64,
        #[prost(string, tag = "2")]
        pub(crate) sku: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    #[millstream::event(topic = "proto-test.invoices")]
    pub(crate) struct InvoiceIssued {
        #[prost(uint64, tag = "1")]
        pub(crate) order: u64,
        #[prost(uint64, tag = "2")]
        pub(crate) cents: u64,
    }

    pub(crate) static SKUS: Mutex<Vec<String>> = Mutex::new(Vec::new());

    #[millstream::event_handler]
    pub(crate) async fn bill(event: Proto<OrderPlaced>) -> Proto<InvoiceIssued> {
        SKUS.lock().unwrap().push(event.sku.clone());
        Proto(InvoiceIssued { order: event.id, cents: 250 })
    }
}

use shop::*;

#[tokio::test]
async fn a_proto_payload_is_read_and_published_as_protobuf() {
    let app = TestApp::start(App::from_registry().module_prefix(module_path!().to_owned() + "::shop"))
        .await
        .unwrap();
    let order = OrderPlaced { id: 9, sku: "tea".into() };
    let payload = ProtobufCodec.encode(&Proto(order.clone())).unwrap();
    assert_eq!(&payload[..], &prost::Message::encode_to_vec(&order)[..]);
    app.publish_message("proto-test.orders", Message::new(payload).with_header(TYPE, "OrderPlaced"))
        .await
        .unwrap();
    // JSON where protobuf is expected: a decode error, poisoned.
    app.publish_message("proto-test.orders", Message::new(r#"{"id":1}"#).with_header(TYPE, "OrderPlaced"))
        .await
        .unwrap();
    app.settled().await;

    assert_eq!(SKUS.lock().unwrap().clone(), ["tea"]);
    let invoice = &app.published_on("proto-test.invoices")[0];
    let decoded: InvoiceIssued = prost::Message::decode(invoice.payload().as_ref()).unwrap();
    assert_eq!(decoded, InvoiceIssued { order: 9, cents: 250 });
    assert_eq!(invoice.metadata().get(TYPE), Some("InvoiceIssued"));
    let poisoned = app.poisoned();
    assert_eq!(poisoned.len(), 1);
    assert!(
        poisoned[0].poison_reason().unwrap_or_default().contains("not a valid protobuf message"),
        "{poisoned:?}"
    );
    app.stop().await.unwrap();
}
