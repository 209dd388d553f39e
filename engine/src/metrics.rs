//! The engine's metrics, in Prometheus text format at `GET /metrics` (a token of any role):
//!
//! - `engine_commands_total{aggregate, outcome}`: commands through the command path, by the
//!   aggregate's type and what became of each (`applied`, `unchanged`, `duplicate`,
//!   `rejected`, `failed`);
//! - `engine_append_seconds`: how long each conditional append to the log took;
//! - `engine_projector_lag`: how many messages of the log the read models have not folded yet;
//! - `engine_consumer_pending{consumer}`: messages each worker's durable consumer has not
//!   delivered yet;
//! - `engine_dead_letters_total`: messages set aside since the engine started;
//! - `engine_nodes{state}` and `engine_deployments{status}`: the caller's tenant's nodes by
//!   state and deployments by status, from the read models.
//!
//! Counters and the histogram move as the work is done; the gauges are read when scraped.
//! Each engine has a registry of its own: several engines in one process never mix figures.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// What became of a command.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CommandLabels {
    pub aggregate: String,
    pub outcome: String,
}

/// What the command path counts and times; cloning shares them.
#[derive(Clone, Debug)]
pub struct CommandMetrics {
    commands: Family<CommandLabels, Counter>,
    append: Histogram,
}

impl Default for CommandMetrics {
    fn default() -> Self {
        // From half a millisecond to about eight seconds.
        CommandMetrics { commands: Family::default(), append: Histogram::new(exponential_buckets(0.0005, 2.0, 15)) }
    }
}

impl CommandMetrics {
    /// One command on an aggregate of type `aggregate`, and what became of it.
    pub fn command(&self, aggregate: &str, outcome: &str) {
        let labels = CommandLabels { aggregate: aggregate.to_owned(), outcome: outcome.to_owned() };
        self.commands.get_or_create(&labels).inc();
    }

    /// One conditional append, and how long it took.
    pub fn append(&self, took: Duration) {
        self.append.observe(took.as_secs_f64());
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConsumerLabels {
    consumer: String,
}

/// The gauges read at each scrape.
#[derive(Debug, Default)]
struct Gauges {
    projector_lag: Gauge,
    consumer_pending: Family<ConsumerLabels, Gauge>,
    dead_letters: Counter,
    nodes: Family<StateLabels, Gauge>,
    deployments: Family<StatusLabels, Gauge>,
}

/// What a scrape reads: every figure but the command path's, which counts as it goes.
#[derive(Debug, Default)]
pub struct Scraped {
    pub projector_lag: u64,
    pub consumer_pending: Vec<(String, u64)>,
    pub dead_letters: u64,
    pub nodes: Vec<(String, u64)>,
    pub deployments: Vec<(String, u64)>,
}

/// One engine's registry. Scrapes take turns: the gauges are set, then encoded.
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Arc<Registry>,
    gauges: Arc<Mutex<Gauges>>,
}

impl Metrics {
    /// A registry holding `commands`' figures and the gauges read at each scrape.
    pub fn new(commands: &CommandMetrics) -> Metrics {
        let mut registry = Registry::with_prefix("engine");
        registry.register("commands", "Commands by aggregate and outcome", commands.commands.clone());
        registry.register("append_seconds", "Conditional appends to the log", commands.append.clone());
        let gauges = Gauges::default();
        registry.register("projector_lag", "Messages the read models have yet to fold", gauges.projector_lag.clone());
        registry.register("consumer_pending", "Messages a worker has yet to get", gauges.consumer_pending.clone());
        registry.register("dead_letters", "Messages set aside since the engine started", gauges.dead_letters.clone());
        registry.register("nodes", "The tenant's nodes by state", gauges.nodes.clone());
        registry.register("deployments", "The tenant's deployments by status", gauges.deployments.clone());
        Metrics { registry: Arc::new(registry), gauges: Arc::new(Mutex::new(gauges)) }
    }

    /// Every figure in Prometheus text format, the gauges set from `scraped`.
    pub fn encode(&self, scraped: &Scraped) -> Result<String, std::fmt::Error> {
        let gauges = self.gauges.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        gauges.projector_lag.set(gauge(scraped.projector_lag));
        set_all(&gauges.consumer_pending, &scraped.consumer_pending, |consumer| ConsumerLabels { consumer });
        // A counter only goes up: it is brought to the count the dead letters keep.
        let seen = gauges.dead_letters.get();
        gauges.dead_letters.inc_by(scraped.dead_letters.saturating_sub(seen));
        set_all(&gauges.nodes, &scraped.nodes, |state| StateLabels { state });
        set_all(&gauges.deployments, &scraped.deployments, |status| StatusLabels { status });
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// `family` holding exactly `counts`, each under the labels `label` makes of its key.
fn set_all<L>(family: &Family<L, Gauge>, counts: &[(String, u64)], label: impl Fn(String) -> L)
where
    L: Clone + std::hash::Hash + Eq + EncodeLabelSet + std::fmt::Debug + Send + Sync + 'static,
{
    family.clear();
    for (key, count) in counts {
        family.get_or_create(&label(key.clone())).set(gauge(*count));
    }
}

fn gauge(count: u64) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_figures_are_encoded_with_their_labels_and_the_gauges_set_at_each_scrape() {
        let commands = CommandMetrics::default();
        let metrics = Metrics::new(&commands);
        commands.command("deployment", "applied");
        commands.command("deployment", "applied");
        commands.command("node", "rejected");
        commands.append(Duration::from_millis(3));
        let scraped = Scraped {
            projector_lag: 7,
            consumer_pending: vec![("ingest".into(), 2)],
            dead_letters: 3,
            nodes: vec![("online".into(), 4)],
            deployments: vec![("running".into(), 1)],
        };
        let text = metrics.encode(&scraped).unwrap();
        for line in [
            r#"engine_commands_total{aggregate="deployment",outcome="applied"} 2"#,
            r#"engine_commands_total{aggregate="node",outcome="rejected"} 1"#,
            "engine_append_seconds_count 1",
            "engine_projector_lag 7",
            r#"engine_consumer_pending{consumer="ingest"} 2"#,
            "engine_dead_letters_total 3",
            r#"engine_nodes{state="online"} 4"#,
            r#"engine_deployments{status="running"} 1"#,
        ] {
            assert!(text.lines().any(|l| l == line), "no `{line}` in:\n{text}");
        }
        // A state no longer held is gone from the next scrape, and the counter never goes back.
        let text = metrics.encode(&Scraped { dead_letters: 1, ..Default::default() }).unwrap();
        assert!(!text.contains(r#"state="online""#), "{text}");
        assert!(text.lines().any(|l| l == "engine_dead_letters_total 3"), "{text}");
    }
}
