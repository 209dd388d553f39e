//! Measurements of the project's paths beside raw JetStream, in one run on one machine. Run
//! with `cargo bench -p benches`; each bench prints its figures.
//!
//! Timings live here and only here: tests assert behaviour, never speed.

use std::time::Duration;

use events::deployment::DeploymentEvent;

/// A representative event: a launch of one version on one node.
pub fn launched() -> DeploymentEvent {
    DeploymentEvent::Launched {
        application: "sample".into(),
        version: "1.0.0".into(),
        image: "127.0.0.1:5000/sample/app:1.0.0".into(),
        nodes: vec!["edge-1".into()],
        mode: Default::default(),
        selector: None,
        profile: None,
        overrides: Default::default(),
        env: Default::default(),
        services: Default::default(),
        rollout: None,
    }
}

/// Latency percentiles and rate of a set of timed operations.
#[derive(Debug, Clone, Copy)]
pub struct Figures {
    pub count: usize,
    pub per_second: f64,
    pub p50: Duration,
    pub p99: Duration,
}

impl Figures {
    /// From each operation's latency and the wall time of the whole run.
    pub fn from(mut latencies: Vec<Duration>, wall: Duration) -> Figures {
        latencies.sort();
        let at = |q: f64| latencies.get(((latencies.len() as f64 - 1.0) * q) as usize).copied().unwrap_or_default();
        Figures {
            count: latencies.len(),
            per_second: latencies.len() as f64 / wall.as_secs_f64(),
            p50: at(0.50),
            p99: at(0.99),
        }
    }

    /// Only a rate is known (pipelined work).
    pub fn rate(count: usize, wall: Duration) -> Figures {
        Figures { count, per_second: count as f64 / wall.as_secs_f64(), p50: Duration::ZERO, p99: Duration::ZERO }
    }
}

impl std::fmt::Display for Figures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:>9.0}/s over {:>6}", self.per_second, self.count)?;
        if self.p50 > Duration::ZERO {
            write!(f, "   p50 {:>7.3} ms   p99 {:>7.3} ms", ms(self.p50), ms(self.p99))?;
        }
        Ok(())
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
