//! The heartbeat: at the node's own rate, the state and counters of every container it runs,
//! published to the `TELEMETRY` stream. It runs beside the agent's loop, from the list of
//! containers the loop shares, so a slow runtime never delays a decision. Nor does it delay
//! the beat: past half the interval, the last sample stands.

use std::collections::HashMap;
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

/// Sends a heartbeat every `config.heartbeat` until the node stops.
pub async fn beat<R: ContainerRuntime>(
    client: async_nats::Client,
    runtime: Arc<R>,
    config: NodeConfig,
    watched: watch::Receiver<Vec<Watched>>,
) {
    let subject = events::telemetry::subject(&config.tenant, &config.node);
    let mut previous: HashMap<String, Sample> = HashMap::new();
    let mut ticks = tokio::time::interval(config.heartbeat);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let containers = watched.borrow().clone();
        let mut telemetry = Vec::with_capacity(containers.len());
        // Sampling may not hold the beat up: past half the interval, the last sample stands.
        let deadline = tokio::time::Instant::now() + config.heartbeat / 2;
        for container in containers {
            let sampled = tokio::time::timeout_at(deadline, runtime.sample(&container.reference)).await;
            let sample = match sampled {
                Ok(Ok(sample)) => sample,
                Ok(Err(_)) => continue,
                Err(_) => match previous.get(&container.name) {
                    Some(last) => last.clone(),
                    None => continue,
                },
            };
            let cpu_percent = previous.get(&container.name).map_or(0.0, |p| sample.cpu_percent_since(p));
            telemetry.push(ContainerTelemetry {
                deployment: container.deployment,
                container: container.name.clone(),
                state: sample.state.clone(),
                restarts: sample.restarts,
                cpu_percent,
                memory_bytes: sample.memory_bytes,
            });
            previous.insert(container.name, sample);
        }
        let heartbeat = Heartbeat {
            tenant: config.tenant.clone(),
            node: config.node.clone(),
            at: Utc::now(),
            interval_ms: config.heartbeat.as_millis() as u64,
            containers: telemetry,
        };
        let payload = serde_json::to_vec(&heartbeat).expect("a heartbeat always serializes");
        // Telemetry is best effort: a beat lost on a cut link is replaced by the next one.
        if let Err(e) = client.publish(subject.clone(), payload.into()).await {
            tracing::debug!(error = %e, "heartbeat not sent");
        }
    }
}
