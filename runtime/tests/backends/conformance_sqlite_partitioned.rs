//! The conformance suite against the SQLite backend with four partitions per topic
//! (`SqlConfig::partitions`): a fresh database file per case.
#![cfg(all(feature = "conformance", feature = "sqlite"))]

async fn harness() -> crate::conformance_sqlite::SqliteHarness {
    crate::conformance_sqlite::harness_with(4)
}

millstream::conformance_tests!(harness);
