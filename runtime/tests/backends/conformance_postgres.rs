//! The conformance suite against PostgreSQL (127.0.0.1:5432, database `test`; override with
//! `MILLSTREAM_POSTGRES_URL`).
#![cfg(all(feature = "conformance", feature = "postgres"))]

use crate::support::sql as support;

async fn harness() -> support::SqlHarness {
    support::SqlHarness { name: "postgres", partitions: 1 }
}

millstream::conformance_tests!(harness);
