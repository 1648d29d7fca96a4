//! The contract every [`AttemptStore`] keeps, as one check each store's tests run against its real
//! server: [`check_attempt_store`].

use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, ErrorKind, Result};
use crate::middleware::AttemptStore;

fn expect(condition: bool, what: impl FnOnce() -> String) -> Result<()> {
    if condition {
        Ok(())
    } else {
        Err(Error::new(ErrorKind::Backend, format!("attempt store contract: {}", what())))
    }
}

/// Checks `store` against the [`AttemptStore`] contract; `prefix` keeps this run's keys apart from
/// other runs on the same server (use a unique one per test).
///
/// - a key's records count 1, 2, 3; keys are independent, and arbitrary text is a valid key;
/// - `forget` resets a key, so the next record counts 1; forgetting an unknown key is fine;
/// - a key not recorded within its ttl counts from 1 again (waited for with a generous deadline);
/// - 16 concurrent records of one key each count once: they return 1 to 16.
pub async fn check_attempt_store(store: Arc<dyn AttemptStore>, prefix: &str) -> Result<()> {
    let long = Duration::from_secs(60);
    let key = |name: &str| format!("{prefix}:{name}");

    let a = key("a");
    for expected in 1..=3 {
        let count = store.record(&a, long).await?;
        expect(count == expected, || format!("record {expected} of `{a}` counted {count}"))?;
    }
    let b = key("b 'quoted' \"twice\" – ünïcode");
    let count = store.record(&b, long).await?;
    expect(count == 1, || format!("`{b}` is not independent of `{a}`: first record counted {count}"))?;

    store.forget(&a).await?;
    let count = store.record(&a, long).await?;
    expect(count == 1, || format!("`{a}` counted {count} after forget, not 1"))?;
    store.forget(&key("never-recorded")).await?;

    // The count expires `window` after its last record: wait longer each round, without recording
    // in between (a record would extend it).
    let short = key("short");
    let window = Duration::from_millis(300);
    expect(store.record(&short, window).await? == 1, || format!("first record of `{short}`"))?;
    let count = store.record(&short, window).await?;
    expect(count == 2, || format!("`{short}` counted {count} within its window, not 2"))?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut wait = window * 2;
    loop {
        tokio::time::sleep(wait).await;
        if store.record(&short, window).await? == 1 {
            break;
        }
        expect(tokio::time::Instant::now() < deadline, || format!("`{short}` never expired"))?;
        wait *= 2;
    }

    let raced = key("raced");
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (store, raced) = (store.clone(), raced.clone());
            tokio::spawn(async move { store.record(&raced, long).await })
        })
        .collect();
    let mut counts = Vec::new();
    for task in tasks {
        let joined =
            task.await.map_err(|e| Error::new(ErrorKind::Backend, format!("record task failed: {e}")))?;
        counts.push(joined?);
    }
    counts.sort_unstable();
    expect(counts == (1..=16).collect::<Vec<u32>>(), || {
        format!("16 concurrent records of `{raced}` counted {counts:?}, not 1 to 16")
    })?;
    Ok(())
}
