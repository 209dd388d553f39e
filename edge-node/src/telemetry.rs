//! The heartbeat: at the node's own rate, the state and counters of every container it runs,
//! published to the `TELEMETRY` stream. It runs beside the agent's loop, from the list of
//! containers the loop shares, so a slow runtime never delays a decision. Nor does it delay
//! the beat: sampling runs apart, several containers at once, and each beat lists every container
//! with its latest sample, or says it has none yet.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use chrono::Utc;
use events::telemetry::{ContainerTelemetry, Heartbeat};
use tokio::sync::watch;

use crate::runtime::{ContainerRuntime, Sample};
use crate::NodeConfig;

/// A container to report: its deployment, its name, and how the runtime knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watched {
    pub deployment: String,
    pub name: String,
    pub reference: String,
}

/// The containers watched, by deployment: the driver changes the deployments an input touched
/// alone ([`crate::agent::Agent::update_watched`]).
pub type WatchedByDeployment = BTreeMap<String, Vec<Watched>>;

/// Every container in `watched`.
fn all_of(watched: &watch::Receiver<WatchedByDeployment>) -> Vec<Watched> {
    watched.borrow().values().flatten().cloned().collect()
}

/// Sends a heartbeat every `config.heartbeat` until the node stops. Every container watched is
/// in every heartbeat: with its latest sample, or marked as not sampled yet.
pub async fn beat<R: ContainerRuntime>(
    client: async_nats::Client,
    runtime: Arc<R>,
    config: NodeConfig,
    watched: watch::Receiver<WatchedByDeployment>,
) {
    let subject = events::telemetry::subject(&config.tenant, &config.node);
    let samples = Samples::default();
    let sampler = tokio::spawn(sample(runtime.clone(), config.heartbeat, watched.clone(), samples.clone()));
    let _sampler = crate::driver::AbortOnDrop(sampler);
    let mut ticks = tokio::time::interval(config.heartbeat);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let containers = all_of(&watched);
        let telemetry = {
            let samples = samples.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            containers
                .into_iter()
                .map(|container| {
                    let sampled = samples.get(&container_key(&container));
                    telemetry_of(container, sampled)
                })
                .collect()
        };
        let heartbeat = Heartbeat {
            tenant: config.tenant.clone(),
            node: config.node.clone(),
            at: Utc::now(),
            interval_ms: u64::try_from(config.heartbeat.as_millis()).unwrap_or(u64::MAX),
            containers: telemetry,
            pulls: runtime.pulls(),
        };
        let payload = serde_json::to_vec(&heartbeat).expect("a heartbeat always serializes");
        // Telemetry is best effort: a beat lost on a cut link is replaced by the next one.
        if let Err(e) = client.publish(subject.clone(), payload.into()).await {
            tracing::debug!(error = %e, "heartbeat not sent");
        }
    }
}

/// The latest sample of each container, by name, and the CPU use since the one before.
type Samples = Arc<std::sync::Mutex<HashMap<String, (Sample, f64)>>>;

/// How many containers are sampled at once.
const SAMPLED_AT_ONCE: usize = 8;

fn container_key(container: &Watched) -> String {
    container.name.clone()
}

/// What a heartbeat says of `container`: its latest sample, or that there is none yet.
fn telemetry_of(container: Watched, sampled: Option<&(Sample, f64)>) -> ContainerTelemetry {
    match sampled {
        Some((sample, cpu_percent)) => ContainerTelemetry {
            deployment: container.deployment,
            container: container.name,
            state: sample.state.clone(),
            restarts: sample.restarts,
            cpu_percent: *cpu_percent,
            memory_bytes: sample.memory_bytes,
            not_sampled_yet: false,
        },
        None => ContainerTelemetry {
            deployment: container.deployment,
            container: container.name,
            state: "unknown".to_owned(),
            restarts: 0,
            cpu_percent: 0.0,
            memory_bytes: 0,
            not_sampled_yet: true,
        },
    }
}

/// Samples every watched container, several at once, at the heartbeat's rate, apart from the
/// beat: a slow runtime never holds a heartbeat up, nor leaves a container out of one.
async fn sample<R: ContainerRuntime>(
    runtime: Arc<R>,
    every: std::time::Duration,
    watched: watch::Receiver<WatchedByDeployment>,
    samples: Samples,
) {
    use futures::StreamExt;
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let containers = all_of(&watched);
        let keys: HashSet<String> = containers.iter().map(container_key).collect();
        samples.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).retain(|name, _| keys.contains(name));
        futures::stream::iter(containers)
            .for_each_concurrent(SAMPLED_AT_ONCE, |container| {
                let (runtime, samples) = (runtime.clone(), samples.clone());
                async move {
                    // A container that cannot be sampled keeps its last sample, if any.
                    let Ok(sample) = runtime.sample(&container.reference).await else { return };
                    let mut samples = samples.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                    let key = container_key(&container);
                    let cpu_percent = samples.get(&key).map_or(0.0, |(previous, _)| sample.cpu_percent_since(previous));
                    samples.insert(key, (sample, cpu_percent));
                }
            })
            .await;
    }
}
