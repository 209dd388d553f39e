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
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Heartbeat {
    pub tenant: String,
    pub node: String,
    pub at: DateTime<Utc>,
    /// The node's rate: the next heartbeat is due this many milliseconds later.
    pub interval_ms: u64,
    pub containers: Vec<ContainerTelemetry>,
    /// The images it is downloading now, and how far each has come.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pulls: Vec<Pull>,
}

/// An image being downloaded: the bytes of its layers come so far, of those it knows the
/// size of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Pull {
    pub image: String,
    pub bytes: u64,
    pub total: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ContainerTelemetry {
    pub deployment: String,
    pub container: String,
    /// Docker's word: `running`, `exited`, ...
    pub state: String,
    pub restarts: u64,
    pub cpu_percent: f64,
    pub memory_bytes: u64,
    /// The node has no sample of it yet: its state is `unknown` and its counters zero until
    /// one comes. It is listed all the same.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub not_sampled_yet: bool,
}

/// A node saying it beats less often than this is taken to beat this often: its silence is
/// noticed within three hours, whatever it claims.
pub const MAX_INTERVAL_MS: u64 = 3_600_000;

impl Heartbeat {
    /// How long after this heartbeat's arrival the node counts as unreachable if nothing newer
    /// arrived: [`MISSED_BEATS`] beats at the node's rate (at most [`MAX_INTERVAL_MS`]), never
    /// less than [`MIN_SILENCE_MS`].
    pub fn silence(&self) -> std::time::Duration {
        let interval = self.interval_ms.min(MAX_INTERVAL_MS);
        let silence = interval.saturating_mul(u64::from(MISSED_BEATS)).max(MIN_SILENCE_MS);
        std::time::Duration::from_millis(silence)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::now;

    fn beat(interval_ms: u64) -> Heartbeat {
        Heartbeat { tenant: "t".into(), node: "n".into(), at: now(), interval_ms, containers: vec![], pulls: vec![] }
    }

    #[test]
    fn silence_is_three_missed_beats_within_a_floor_and_a_ceiling() {
        use std::time::Duration;
        assert_eq!(beat(5000).silence(), Duration::from_secs(15));
        assert_eq!(beat(300).silence(), Duration::from_millis(2000));
        assert_eq!(beat(u64::MAX).silence(), Duration::from_secs(3 * 3600), "an absurd interval is capped");
    }
}
