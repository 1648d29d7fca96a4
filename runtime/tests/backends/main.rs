//! Every backend against its real server: the conformance suite, then what each backend adds (SQL outbox, a killed consumer, payload limits, memory use, dedup stores).
//!
//! One test binary per area (CI links a few binaries, not one per file); each file is a module.

mod amqp_backend;
mod batch_handlers;
#[path = "../common/mod.rs"]
mod common;
mod conformance_amqp;
mod conformance_kafka;
mod conformance_memory;
mod conformance_mqtt;
mod conformance_mysql;
mod conformance_mysql_partitioned;
mod conformance_nats;
mod conformance_postgres;
mod conformance_postgres_partitioned;
mod conformance_redis;
mod conformance_sqlite;
mod conformance_sqlite_partitioned;
mod connect_url;
mod cqrs_flow;
mod delay_stores;
mod fanout;
mod forwarder;
mod inbox;
mod inbox_chaos;
mod kafka_backend;
mod memory;
mod mqtt_backend;
mod nats_backend;
mod payload_limits;
mod redis_backend;
mod request_reply;
mod retry_topics;
mod saga_sql;
mod sql_faults;
mod sql_memory;
mod sql_outbox;
mod sql_partitions;
mod sqlite_kill;
mod stores_redis;
mod stores_sql;
mod support;
