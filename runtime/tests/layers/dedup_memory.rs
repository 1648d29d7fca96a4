//! The in-memory dedup store keeps the `DedupStore` contract.
#![cfg(feature = "conformance")]

use std::sync::Arc;

use millstream::conformance::check_dedup_store;
use millstream::middleware::MemoryDedupStore;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_store_keeps_the_contract() {
    check_dedup_store(Arc::new(MemoryDedupStore::new()), "memory").await.unwrap();
}
