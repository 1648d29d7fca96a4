//! The conformance suite against MariaDB / MySQL (127.0.0.1:3306, database `test`; override with
//! `MILLSTREAM_MYSQL_URL`).
#![cfg(all(feature = "conformance", feature = "mysql"))]

use crate::support::sql as support;

async fn harness() -> support::SqlHarness {
    support::SqlHarness { name: "mysql", partitions: 1 }
}

millstream::conformance_tests!(harness);
