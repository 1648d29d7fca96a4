//! Who a consumer is: a stable name that survives a restart ([`host_name`] by default), and the
//! process's own incarnation, which does not.
//!
//! A backend that leases messages to consumers (the SQL backend's group leases, Redis pending
//! entries, NATS ack waits) can tell from the pair "a restart of this consumer" (same name,
//! another incarnation: take its leases back at once) from "a sibling in this process" (same
//! name, same incarnation: leave them alone).

use std::sync::OnceLock;

use crate::error::{Error, ErrorKind, Result};

/// The longest consumer name [`check_consumer_name`] accepts.
pub const MAX_CONSUMER_NAME: usize = 100;

/// This host's name: `HOSTNAME` from the environment, else `/etc/hostname`, else `localhost`;
/// trimmed, and with any character [`check_consumer_name`] refuses replaced by `-`. Stable
/// across restarts of a process (and of a container, whose host name is its pod or container
/// name), the default consumer name of the backends that need one.
pub fn host_name() -> String {
    let raw = std::env::var("HOSTNAME")
        .ok()
        .filter(|name| !name.trim().is_empty())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok().filter(|name| !name.trim().is_empty()))
        .unwrap_or_else(|| "localhost".to_owned());
    let name: String =
        raw.trim().chars().map(|c| if allowed(c) { c } else { '-' }).take(MAX_CONSUMER_NAME).collect();
    name
}

fn allowed(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')
}

/// Checks a consumer name: 1 to [`MAX_CONSUMER_NAME`] characters, letters, digits, `-`, `_`, `.`
/// and `:` (so that it fits in every broker's naming rules, and never contains the separators
/// backends put between a name and an incarnation).
pub fn check_consumer_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_CONSUMER_NAME || !name.chars().all(allowed) {
        return Err(Error::new(
            ErrorKind::Config,
            format!(
                "consumer name {name:?}: use 1 to {MAX_CONSUMER_NAME} letters, digits, `-`, `_`, `.` or `:`"
            ),
        ));
    }
    Ok(())
}

/// This process's incarnation: a unique id, the same for the whole life of the process and never
/// again after it.
pub fn incarnation() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| uuid::Uuid::now_v7().simple().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_are_valid_consumer_names() {
        check_consumer_name(&host_name()).unwrap();
        assert_eq!(incarnation(), incarnation());
    }

    #[test]
    fn separators_and_empty_names_are_refused() {
        for bad in ["", "a@b", "a/b", "a b", &"x".repeat(MAX_CONSUMER_NAME + 1)] {
            assert_eq!(check_consumer_name(bad).unwrap_err().kind(), ErrorKind::Config, "{bad:?}");
        }
        check_consumer_name("node-1.eu:7").unwrap();
    }
}
