//! The conformance suite against MariaDB / MySQL with four partitions per topic
//! (`SqlConfig::partitions`; 127.0.0.1:3306, database `test`; override with
//! `MILLSTREAM_MYSQL_URL`).
#![cfg(all(feature = "conformance", feature = "mysql"))]

use crate::support::sql as support;

async fn harness() -> support::SqlHarness {
    support::SqlHarness { name: "mysql", partitions: 4 }
}

millstream::conformance_tests!(harness);
