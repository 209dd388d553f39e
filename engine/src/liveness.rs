//! Liveness: the engine listens to the nodes' heartbeats (`tm.<tenant>.<node>`), keeps the
//! latest of each node for the API, and turns silence into a node event: `unreachable` after
//! `events::telemetry::MISSED_BEATS` missed beats (never under 2 s), `online` again with the
//! next beat. The heartbeats themselves stay in the `TELEMETRY` stream, which forgets them
//! after `TELEMETRY_MAX_AGE` (an hour); only the changes reach the event log. A node's
//! unreachability never touches the last known state of its deployments.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use chrono::Utc;
use futures::StreamExt;

use bus::dead::Letter;
use events::node::{Node, NodeCommand, NodeState};
use events::telemetry::Heartbeat;

use crate::command::{CommandHandler, CommandMeta};

/// How long the `TELEMETRY` stream keeps a heartbeat.
pub const TELEMETRY_MAX_AGE: Duration = Duration::from_secs(3600);

/// How often silence is looked for.
const CHECK_EVERY: Duration = Duration::from_millis(250);

/// The latest heartbeat of each node, by (tenant, node).
#[derive(Debug, Clone, Default)]
pub struct Liveness {
    latest: Arc<RwLock<HashMap<(String, String), Seen>>>,
}

#[derive(Debug, Clone)]
struct Seen {
    heartbeat: Heartbeat,
    /// When this engine received it: silence is measured on this clock, not the node's.
    received: chrono::DateTime<Utc>,
    /// What this engine last made the node's state; `None` until it did.
    state: Option<NodeState>,
}

/// What the engine last heard from a node.
#[derive(Debug, Clone)]
pub struct Heard {
    pub heartbeat: Heartbeat,
    /// When the heartbeat arrived, by the engine's clock.
    pub received: chrono::DateTime<Utc>,
    /// How far the node's clock is ahead of the engine's (behind when negative), as this
    /// heartbeat showed: the time it carries less the time it arrived.
    pub clock_skew_ms: i64,
}

impl Liveness {
    pub fn latest(&self, tenant: &str, node: &str) -> Option<Heard> {
        let latest = self.latest.read().expect("the liveness map is never poisoned");
        latest.get(&(tenant.to_owned(), node.to_owned())).map(|s| Heard {
            heartbeat: s.heartbeat.clone(),
            received: s.received,
            clock_skew_ms: s.heartbeat.at.signed_duration_since(s.received).num_milliseconds(),
        })
    }
}

/// The `TELEMETRY` stream keeps this many bytes at most, the oldest going first...
pub const TELEMETRY_MAX_BYTES: i64 = 1024 * 1024 * 1024;
/// ...and this many heartbeats of any one node (ten minutes at one a second): a node beating
/// too fast, or a writer flooding one subject, cannot push the others out.
pub const TELEMETRY_MAX_PER_NODE: i64 = 600;

/// Creates the `TELEMETRY` stream if it is missing, and gives one made before its limits.
pub async fn open_stream(js: &jetstream::Context, replicas: usize) -> anyhow::Result<()> {
    let config = stream::Config {
        name: events::telemetry::STREAM.to_owned(),
        subjects: vec![events::telemetry::ALL.to_owned()],
        storage: stream::StorageType::File,
        num_replicas: replicas,
        max_age: TELEMETRY_MAX_AGE,
        max_bytes: TELEMETRY_MAX_BYTES,
        max_messages_per_subject: TELEMETRY_MAX_PER_NODE,
        discard: stream::DiscardPolicy::Old,
        ..Default::default()
    };
    let made = js
        .get_or_create_stream(config.clone())
        .await
        .map_err(|e| anyhow::anyhow!("creating the telemetry stream: {e}"))?;
    let had = &made.cached_info().config;
    if had.max_bytes != config.max_bytes || had.max_messages_per_subject != config.max_messages_per_subject {
        let limited = stream::Config {
            max_bytes: config.max_bytes,
            max_messages_per_subject: config.max_messages_per_subject,
            ..had.clone()
        };
        js.update_stream(limited).await.map_err(|e| anyhow::anyhow!("limiting the telemetry stream: {e}"))?;
    }
    Ok(())
}

/// Follows the heartbeats and records each node's changes of reachability, forever. Nodes the
/// read model knows as online are expected from the start: one that never beats again after an
/// engine restart turns unreachable too.
///
/// A Margo device's polls are its heartbeats (`crate::wfm`), expected every `margo_interval`.
pub async fn run(
    handler: CommandHandler,
    liveness: Liveness,
    nodes: crate::read_model::Nodes,
    margo_interval: Duration,
) -> anyhow::Result<()> {
    expect_known_nodes(&liveness, &nodes, margo_interval)?;
    let client = handler.store().client().clone();
    let mut beats = client.subscribe(events::telemetry::ALL).await?;
    let mut checks = tokio::time::interval(CHECK_EVERY);
    loop {
        tokio::select! {
            beat = beats.next() => {
                let Some(beat) = beat else { anyhow::bail!("the heartbeat subscription ended") };
                // tm.<tenant>.<node>: a beat speaks for the node whose subject it came on.
                let (Some(tenant), Some(node)) = (beat.subject.split('.').nth(1), beat.subject.split('.').nth(2)) else {
                    continue;
                };
                let mut heartbeat = match serde_json::from_slice::<Heartbeat>(&beat.payload) {
                    Ok(heartbeat) => heartbeat,
                    Err(e) => {
                        let letter = Letter::new("liveness", &beat.subject, None, &beat.payload, e);
                        handler.store().dead_letters().set_aside(letter).await;
                        continue;
                    }
                };
                (heartbeat.tenant, heartbeat.node) = (tenant.to_owned(), node.to_owned());
                let key = (heartbeat.tenant.clone(), heartbeat.node.clone());
                let was = {
                    let mut latest = liveness.latest.write().expect("the liveness map is never poisoned");
                    let was = latest.get(&key).and_then(|s| s.state);
                    latest.insert(key.clone(), Seen { heartbeat, received: Utc::now(), state: was });
                    was
                };
                if was != Some(NodeState::Online) {
                    change(&handler, &liveness, &key, NodeCommand::Heartbeat, NodeState::Online).await;
                }
            }
            _ = checks.tick() => {
                let now = Utc::now();
                let silent: Vec<(String, String)> = liveness
                    .latest
                    .read()
                    .expect("the liveness map is never poisoned")
                    .iter()
                    .filter(|(_, s)| {
                        // On the engine's clock alone: the node's may be anywhere.
                        let silent = chrono::Duration::from_std(s.heartbeat.silence())
                            .ok()
                            .and_then(|silence| s.received.checked_add_signed(silence))
                            .is_none_or(|silent_since| silent_since < now);
                        s.state != Some(NodeState::Unreachable) && silent
                    })
                    .map(|(key, _)| key.clone())
                    .collect();
                for key in silent {
                    let command = NodeCommand::ReportState { state: NodeState::Unreachable };
                    change(&handler, &liveness, &key, command, NodeState::Unreachable).await;
                }
            }
        }
    }
}

/// Counts every node last known online as just heard from, at the default rate (a Margo
/// device at the rate it polls).
fn expect_known_nodes(
    liveness: &Liveness,
    nodes: &crate::read_model::Nodes,
    margo_interval: Duration,
) -> anyhow::Result<()> {
    let margo_interval_ms = u64::try_from(margo_interval.as_millis()).unwrap_or(u64::MAX);
    let now = Utc::now();
    let mut latest = liveness.latest.write().expect("the liveness map is never poisoned");
    for record in nodes.all()? {
        if record.state != Some(NodeState::Online) {
            continue;
        }
        let heartbeat = Heartbeat {
            tenant: record.tenant.clone(),
            node: record.id.clone(),
            at: now,
            interval_ms: if record.margo.is_some() { margo_interval_ms } else { ASSUMED_INTERVAL_MS },
            containers: vec![],
            pulls: vec![],
        };
        latest.entry((record.tenant, record.id)).or_insert(Seen {
            heartbeat,
            received: now,
            state: Some(NodeState::Online),
        });
    }
    Ok(())
}

/// The rate assumed for a node not heard from since the engine started.
const ASSUMED_INTERVAL_MS: u64 = 5000;

/// Records a change of reachability; on failure it is tried again at the next beat or check.
async fn change(
    handler: &CommandHandler,
    liveness: &Liveness,
    key: &(String, String),
    command: NodeCommand,
    to: NodeState,
) {
    let (tenant, node) = key;
    let meta = CommandMeta::new(tenant, "engine:liveness");
    let recorded = match handler.execute::<Node>(node, &command, &meta).await {
        Ok(_) => {
            tracing::info!(tenant, node, state = ?to, "node reachability changed");
            true
        }
        // A node the engine does not know: nothing to record, and no use asking again.
        Err(crate::command::CommandError::Rejected(rejection)) => {
            tracing::debug!(tenant, node, %rejection, "reachability not recorded");
            true
        }
        Err(e) => {
            tracing::warn!(tenant, node, error = %e, "recording reachability");
            false
        }
    };
    if recorded {
        if let Some(seen) = liveness.latest.write().expect("the liveness map is never poisoned").get_mut(key) {
            seen.state = Some(to);
        }
    }
}
