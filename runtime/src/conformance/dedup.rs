//! The contract every [`DedupStore`] keeps, as one check each store's tests run against its real
//! server: [`check_dedup_store`].

use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, ErrorKind, Result};
use crate::middleware::DedupStore;

fn broken(what: String) -> Error {
    Error::new(ErrorKind::Backend, format!("dedup store contract: {what}"))
}

fn expect(condition: bool, what: impl FnOnce() -> String) -> Result<()> {
    if condition {
        Ok(())
    } else {
        Err(broken(what()))
    }
}

/// Checks `store` against the [`DedupStore`] contract; `prefix` keeps this run's keys apart from
/// other runs on the same server (use a unique one per test).
///
/// - the first insert of a key is new, a second within the window is not;
/// - keys are independent, and arbitrary text (spaces, quotes, non-ASCII) is a valid key;
/// - `remove` forgets a key, so the next insert is new again; removing an unknown key is fine;
/// - a key is new again once its window passed (waited for with a generous deadline);
/// - of many concurrent inserts of one key, exactly one is new.
pub async fn check_dedup_store(store: Arc<dyn DedupStore>, prefix: &str) -> Result<()> {
    let long = Duration::from_secs(60);
    let key = |name: &str| format!("{prefix}:{name}");

    let a = key("a");
    expect(store.insert_if_new(&a, long).await?, || format!("first insert of `{a}` was not new"))?;
    expect(!store.insert_if_new(&a, long).await?, || format!("second insert of `{a}` was new"))?;
    let b = key("b 'quoted' \"twice\" – ünïcode");
    expect(store.insert_if_new(&b, long).await?, || format!("`{b}` is not independent of `{a}`"))?;

    store.remove(&a).await?;
    expect(store.insert_if_new(&a, long).await?, || format!("`{a}` was not new after remove"))?;
    store.remove(&key("never-inserted")).await?;

    let short = key("short");
    let window = Duration::from_millis(300);
    expect(store.insert_if_new(&short, window).await?, || format!("first insert of `{short}`"))?;
    expect(!store.insert_if_new(&short, window).await?, || format!("`{short}` was new within its window"))?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if store.insert_if_new(&short, window).await? {
            break;
        }
        expect(tokio::time::Instant::now() < deadline, || format!("`{short}` never expired"))?;
    }

    let raced = key("raced");
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (store, raced) = (store.clone(), raced.clone());
            tokio::spawn(async move { store.insert_if_new(&raced, long).await })
        })
        .collect();
    let mut new = 0;
    for task in tasks {
        if task.await.map_err(|e| broken(format!("insert task failed: {e}")))?? {
            new += 1;
        }
    }
    expect(new == 1, || format!("{new} of 16 concurrent inserts of `{raced}` were new, not 1"))?;
    Ok(())
}
