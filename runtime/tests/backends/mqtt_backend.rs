//! MQTT beyond the conformance suite.
#![cfg(feature = "mqtt")]
