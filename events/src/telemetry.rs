//! Telemetry: what a node sends at its own rate on `tm.<tenant>.<node>` into the `TELEMETRY`
//! stream (limited by age). It is not the ledger: only the changes it reveals (a node gone
//! silent, a node back) become events.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub const STREAM: &str = "TELEMETRY";
pub const ALL: &str = "tm.>";

pub fn subject(tenant: &str, node: &str) -> String {
    format!("tm.{tenant}.{node}")
}

/// A node is unreachable once this many of its heartbeats are missing...
pub const MISSED_BEATS: u32 = 3;

/// ...and never sooner than this after its last one: a short interval on a loaded machine
/// must not make a node flap.
pub const MIN_SILENCE_MS: u64 = 2000;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub tenant: String,
    pub node: String,
    pub at: DateTime<Utc>,
    /// The node's rate: the next heartbeat is due this many milliseconds later.
    pub interval_ms: u64,
    pub containers: Vec<ContainerTelemetry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerTelemetry {
    pub deployment: String,
    pub container: String,
    /// Docker's word: `running`, `exited`, ...
    pub state: String,
    pub restarts: u64,
    pub cpu_percent: f64,
    pub memory_bytes: u64,
}

impl Heartbeat {
    /// When the node counts as unreachable if nothing newer arrived.
    pub fn silent_after(&self) -> DateTime<Utc> {
        let silence = (self.interval_ms * MISSED_BEATS as u64).max(MIN_SILENCE_MS);
        self.at + chrono::Duration::milliseconds(silence as i64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::now;

    fn beat(interval_ms: u64) -> Heartbeat {
        Heartbeat { tenant: "t".into(), node: "n".into(), at: now(), interval_ms, containers: vec![] }
    }

    #[test]
    fn silence_is_three_missed_beats_and_never_less_than_the_floor() {
        assert_eq!(beat(5000).silent_after(), now() + chrono::Duration::seconds(15));
        assert_eq!(beat(300).silent_after(), now() + chrono::Duration::milliseconds(2000));
    }
}
