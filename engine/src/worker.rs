//! Durable JetStream consumers that turn events into more events: the `router` (deployment
//! events to work on each node's subject), the `ingest` (node reports to commands), the
//! `settle` (a node settling to its deployment's rollout), the `membership` (node events to
//! selector targets) and the `tenants` (a tenant's deletion to the uninstall of its
//! deployments).
//!
//! Each message is acked once handled. A handler error is tried again in place for a few
//! seconds first, the messages behind it held back, so that the order holds through a lost
//! server; then it is left unacked, so it comes again after `ack_wait`; the appends it makes
//! are deduplicated by message id. A message that fails
//! five times is named in the log and acked. Each consumer is pulled with a heartbeat every
//! second and pulled again on a missed one, which reaches the consumer's new leader; a
//! consumer the server no longer knows is made again. When two engines run, each message goes
//! to one of them.
//!
//! # Router
//!
//! It turns `deployment.launched` into `work.deploy` on each target node's subject (message id
//! `<event id>:<node>`), and every later request into work for the nodes the deployment
//! targets at that event, appending to 256 nodes at a time (a node's own work stays in order).
//! In a phased rollout a node gets work only once a wave reaches it. The router keeps each
//! deployment folded from the events it routes; the hash chain tells it whether an event
//! follows the one it folded last, and when it does not (a restart, a redelivery) it loads the
//! deployment as of that event.
//!
//! # Membership
//!
//! A launch names nodes or a label selector. The `membership` consumer (durable `targets`)
//! reads every aggregate event in order: a node that registers or whose labels change is added
//! to every live selector deployment it now matches and removed from those it no longer
//! matches; a selector deployment, once launched, gets every node that matches by then. Before
//! it reads a read model it waits for that model to have folded the event, so a node
//! registering during a selector launch is seen by one side or the other. Each change is a
//! `target_added` or `target_removed` event with its reason; the router sends that node
//! `deploy` or `remove`.
//!
//! # Tenants
//!
//! The `tenants` consumer carries out a tenant's deletion: it lists the tenant's deployment
//! subjects in the stream (not a read model, which the same deletion empties) and uninstalls
//! each.
//!
//! # Ingest
//!
//! Each report becomes a command, with the report's id as command id, so a report delivered
//! twice is applied once. A deployment's state report goes to the aggregate of its
//! (deployment, node) pair (`events::deployment_node`), checked against what the deployment
//! asks of the node as this engine last folded it (and as the log has it, when that refuses
//! it); drift and a local apply go to the deployment, a node's coming online to the node. A
//! report that does not fit its subject (not an envelope, its tenant, type or node not the
//! subject's, not a report) is set aside as a dead letter, as any message a worker reads that
//! does not fit (`events::fit`, `bus::dead`). One that fits is taken only when it verifies
//! under the key the node is enrolled with now (`NodeKeys`): it speaks for the node whose
//! subject it arrived on. Any other is refused and recorded as the node's
//! `node.report_refused`. A report that its aggregate refuses is logged and acked.
//!
//! The reports are spread over lanes by node ([`consume_in_lanes`]): a node's reports are
//! taken in order, and no node's wait on another's, since each pair is a subject of its own.
//!
//! # Settle
//!
//! The `settle` consumer reads the pairs' events and passes the settled reports on to their
//! deployment, when the deployment decides on them: a phased rollout releases the next wave or
//! halts, a guarded update goes back. What has come in at once goes in one command per
//! deployment (`deployment.nodes_settled`). The deployment is read as the log has it (one
//! direct get), so an update through another engine is never missed.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use async_nats::jetstream::consumer::{self, pull};
use bytes::Bytes;
use futures::StreamExt;
use uuid::Uuid;

use events::deployment::{Deployment, DeploymentCommand, DeploymentEvent, Desired, Mode};
use events::deployment_node::{DeploymentNode, DeploymentNodeCommand, DeploymentNodeEvent};
use events::envelope::{chain_hash, Metadata};
use events::node::{Node, NodeCommand, NodeEvent};
use events::report::NodeReport;
use events::work::{self, NodeWork};
use events::{Aggregate, Envelope};

use crate::command::{CommandError, CommandHandler, CommandMeta};
use crate::secrets::TenantKeys;
use bus::store::{AppendError, EventStore, Outgoing, StoredEvent};

/// Deliveries of one event before a consumer gives up on it.
const MAX_DELIVERIES: i64 = 5;
/// How long one pull waits, and how often the server says the consumer is alive.
const PULL_EXPIRES: Duration = Duration::from_secs(5);
const PULL_HEARTBEAT: Duration = Duration::from_secs(1);
/// How many messages one pull of a worker asks for (the client's default).
const PULL_BATCH: usize = 200;

/// The durable consumers of the engine's workers.
pub const CONSUMERS: [&str; 5] = ["router", "targets", "ingest", "settle", "tenants"];

async fn durable(
    store: &EventStore,
    name: &str,
    filter: &str,
) -> Result<consumer::Consumer<pull::Config>, bus::store::ConsumeError> {
    store
        .consumers()
        .get_or_create_consumer(
            name,
            pull::Config {
                durable_name: Some(name.to_owned()),
                filter_subject: filter.to_owned(),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(10),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| bus::store::ConsumeError { consumer: name.to_owned(), reason: e.to_string() })
}

/// Feeds every message of durable consumer `name` to `handle`, with the subject it arrived
/// on, acking the ones it handled. It rides out a lost server or link ([`bus::consume`]), and
/// an ack that is lost brings the message again, which the handlers recognise.
pub(crate) async fn consume<F, Fut>(store: &EventStore, name: &str, filter: &str, mut handle: F) -> anyhow::Result<()>
where
    F: FnMut(String, StoredEvent) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let pull = bus::consume::Pull { expires: PULL_EXPIRES, heartbeat: PULL_HEARTBEAT, batch: PULL_BATCH };
    let messages = bus::consume::durable(name, store.client().clone(), pull, move || durable(store, name, filter));
    let mut messages = std::pin::pin!(messages);
    while let Some(message) = messages.next().await {
        handle_one(store, name, message, &mut handle).await;
    }
    Ok(())
}

/// Like [`consume`], with the messages spread over [`LANES`] lanes by subject: the lanes run
/// side by side, each in the order of the stream. A node's reports all come on its one subject,
/// so they stay in order, while one node's report no longer waits on another's.
pub(crate) async fn consume_in_lanes<F, Fut>(
    store: &EventStore,
    name: &str,
    filter: &str,
    handle: F,
) -> anyhow::Result<()>
where
    F: Fn(String, StoredEvent) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    use std::hash::{Hash, Hasher};
    let pull = bus::consume::Pull { expires: PULL_EXPIRES, heartbeat: PULL_HEARTBEAT, batch: PULL_BATCH };
    let messages = bus::consume::durable(name, store.client().clone(), pull, move || durable(store, name, filter));
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..LANES).map(|_| tokio::sync::mpsc::channel(LANE_DEPTH)).unzip();
    let handle = &handle;
    let lanes = futures::future::join_all(receivers.into_iter().map(|mut lane| async move {
        let mut handle = |subject, event| handle(subject, event);
        while let Some(message) = lane.recv().await {
            handle_one(store, name, message, &mut handle).await;
        }
    }));
    let feed = async move {
        let mut messages = std::pin::pin!(messages);
        while let Some(message) = messages.next().await {
            let mut hasher = std::hash::DefaultHasher::new();
            message.subject.hash(&mut hasher);
            let lane = usize::try_from(hasher.finish().checked_rem(LANES as u64).unwrap_or(0)).unwrap_or(0);
            let Some(sender) = senders.get(lane) else { break };
            if sender.send(message).await.is_err() {
                break;
            }
        }
    };
    futures::join!(feed, lanes);
    Ok(())
}

/// The lanes of [`consume_in_lanes`], and the messages each may hold waiting.
const LANES: usize = 32;
const LANE_DEPTH: usize = 16;

/// Hands one message to `handle` and acks it once handled, or once it has failed too often.
/// One that does not fit where it is ([`events::fit`]) is set aside and acked.
async fn handle_one<F, Fut>(store: &EventStore, name: &str, message: async_nats::jetstream::Message, handle: &mut F)
where
    F: FnMut(String, StoredEvent) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let Ok(info) = message.info() else {
        tracing::error!(consumer = name, subject = %message.subject, "skipping a message with no stream info");
        return;
    };
    let sequence = info.stream_sequence;
    let subject = message.subject.to_string();
    let outcome = match events::fit::read(&subject, &message.payload) {
        Ok(envelope) => {
            let event = StoredEvent { sequence, envelope, bytes: message.payload.clone() };
            in_order(name, std::slice::from_ref(&message), || handle(subject.clone(), event.clone())).await
        }
        Err(unfit) => {
            let letter = bus::dead::Letter::new(name, &subject, Some(sequence), &message.payload, unfit);
            store.dead_letters().set_aside(letter).await;
            Ok(())
        }
    };
    finish(name, &[message], outcome).await;
}

/// Acks `messages` once handled together, or once they have failed too often; otherwise
/// leaves them for redelivery.
async fn finish(name: &str, messages: &[async_nats::jetstream::Message], outcome: anyhow::Result<()>) {
    for message in messages {
        let (sequence, delivered) = message.info().map_or((0, 0), |info| (info.stream_sequence, info.delivered));
        let acked = match &outcome {
            Ok(()) => message.ack().await,
            Err(e) if delivered >= MAX_DELIVERIES => {
                // It fails the same way each time: a poison message. It is left in the log,
                // named here, and no longer holds the consumer up.
                tracing::error!(
                    consumer = name,
                    sequence,
                    delivered,
                    error = format!("{e:#}"),
                    "giving up on an event"
                );
                message.ack().await
            }
            Err(e) => {
                tracing::warn!(consumer = name, sequence, error = format!("{e:#}"), "will retry");
                Ok(())
            }
        };
        if let Err(e) = acked {
            tracing::warn!(consumer = name, sequence, error = %e, "the ack was lost; the event comes again");
        }
    }
}

/// Runs `attempt` for `messages`; a failure is tried again here a few times first (the server
/// told the messages are in progress), holding back the messages behind them, so that the
/// consumer's order holds through a lost server or link: a node's report applied after its
/// next one would be dropped as stale. What still fails is left for redelivery.
async fn in_order<F, Fut>(name: &str, messages: &[async_nats::jetstream::Message], mut attempt: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let mut pause = Duration::from_millis(100);
    let mut outcome = attempt().await;
    for _ in 0..RETRIES_IN_PLACE {
        let Err(e) = &outcome else { break };
        tracing::debug!(consumer = name, error = format!("{e:#}"), "trying again");
        for message in messages {
            if let Err(e) = message.ack_with(async_nats::jetstream::AckKind::Progress).await {
                tracing::debug!(consumer = name, error = %e, "could not say the event is in progress");
            }
        }
        tokio::time::sleep(pause).await;
        pause = pause.saturating_mul(2).min(Duration::from_secs(2));
        outcome = attempt().await;
    }
    outcome
}

/// Times a failed event is tried again before the next one is taken: over about 7 s in all,
/// time for a cluster to elect a stream's new leader.
const RETRIES_IN_PLACE: usize = 7;

/// Translates deployment events into work on the subject of each target node.
pub async fn route(store: EventStore, keys: TenantKeys) -> anyhow::Result<()> {
    let (folds, heads) = (Folds::default(), Heads::default());
    let router = Router { store: &store, folds: &folds, heads: &heads, keys: &keys };
    consume(&store, "router", events::subject::ALL_DEPLOYMENTS, |_, event| route_one(&router, event)).await
}

/// What the router reads and keeps.
struct Router<'a> {
    store: &'a EventStore,
    folds: &'a Folds,
    heads: &'a Heads,
    keys: &'a TenantKeys,
}

async fn route_one(router: &Router<'_>, stored: StoredEvent) -> anyhow::Result<()> {
    let Router { store, folds, .. } = *router;
    let envelope = &stored.envelope;
    let deployment = envelope.aggregate_id.clone();
    let event = envelope.event::<DeploymentEvent>()?;
    folds.advance(&stored, &event);
    let launched_secrets = match &event {
        DeploymentEvent::Launched { secrets, .. } => Some(secrets.clone()),
        _ => None,
    };
    let (work, nodes): (NodeWork, Vec<String>) = match event {
        // A phased rollout sends the launch or the update wave by wave.
        DeploymentEvent::Launched { rollout: Some(_), .. }
        | DeploymentEvent::UpdateRequested { rollout: Some(_), .. } => {
            return Ok(());
        }
        DeploymentEvent::Launched { application, version, image, nodes, mode, env, services, .. } => {
            let secrets = BTreeMap::new();
            (NodeWork::Deploy { deployment, application, version, image, mode, env, services, secrets }, nodes)
        }
        DeploymentEvent::TargetAdded { node, .. } => return send_current(router, &stored, &[node]).await,
        DeploymentEvent::WaveReleased { nodes } => return send_current(router, &stored, &nodes).await,
        DeploymentEvent::TargetRemoved { node, .. } => (NodeWork::Remove { deployment }, vec![node]),
        DeploymentEvent::StopRequested { .. } => (NodeWork::Stop { deployment }, targets(store, folds, &stored).await?),
        DeploymentEvent::StartRequested { .. } => {
            (NodeWork::Start { deployment }, targets(store, folds, &stored).await?)
        }
        DeploymentEvent::UninstallRequested { .. } => {
            (NodeWork::Remove { deployment }, targets(store, folds, &stored).await?)
        }
        DeploymentEvent::UpdateRequested { version, image, mode, env, services, .. } => {
            let secrets = BTreeMap::new();
            let work = NodeWork::Update { deployment, version, image, mode, env, services, secrets };
            (work, targets(store, folds, &stored).await?)
        }
        // Back to the version before, at once, everywhere.
        DeploymentEvent::RolledBack { version, image, env, services, .. } => {
            let (mode, secrets) = (Mode::default(), BTreeMap::new());
            let work = NodeWork::Update { deployment, version, image, mode, env, services, secrets };
            (work, targets(store, folds, &stored).await?)
        }
        DeploymentEvent::ApplyRequested { .. } => {
            (NodeWork::Apply { deployment }, targets(store, folds, &stored).await?)
        }
        // Written before images were pinned: the same tags pulled again.
        DeploymentEvent::ForceUpdateRequested { image, services, .. } if image.is_empty() && services.is_empty() => {
            (NodeWork::Refresh { deployment }, targets(store, folds, &stored).await?)
        }
        // What the tags name now, by digest: the nodes recreate the containers whose changed.
        DeploymentEvent::ForceUpdateRequested { .. } => {
            let work = folds
                .as_of(store, &stored, |state| NodeWork::Update {
                    deployment: deployment.clone(),
                    version: state.version.clone(),
                    image: state.image.clone(),
                    // Staged and not applied yet: it still waits for its apply.
                    mode: Mode { staged: state.mode.staged, instantly_apply: !state.awaiting_apply },
                    env: state.env.clone(),
                    services: state.services.clone(),
                    secrets: BTreeMap::new(),
                })
                .await?;
            (work, targets(store, folds, &stored).await?)
        }
        DeploymentEvent::NodeStateReported { .. }
        | DeploymentEvent::DriftDetected { .. }
        | DeploymentEvent::AppliedLocally { .. }
        | DeploymentEvent::RolloutHalted { .. }
        | DeploymentEvent::NodeRevoked { .. }
        | DeploymentEvent::NodesSettled { .. } => return Ok(()),
    };
    let secrets = match (&work, launched_secrets) {
        (NodeWork::Deploy { .. }, Some(secrets)) => secrets,
        (NodeWork::Update { .. }, _) => folds.as_of(store, &stored, |state| state.secrets.clone()).await?,
        _ => BTreeMap::new(),
    };
    let each = for_each_node(router, envelope, &work, &secrets, nodes).await?;
    send(router, envelope, each).await
}

/// `work` for each of `nodes`, with the deployment's `secrets` (sealed under the tenant's key)
/// sealed again for that node alone.
async fn for_each_node(
    router: &Router<'_>,
    envelope: &Envelope,
    work: &NodeWork,
    secrets: &BTreeMap<String, String>,
    nodes: Vec<String>,
) -> anyhow::Result<Vec<(Vec<(String, NodeWork)>, String)>> {
    let mut each = Vec::with_capacity(nodes.len());
    for node in nodes {
        let mut work = work.clone();
        if let NodeWork::Deploy { secrets: sealed, .. } | NodeWork::Update { secrets: sealed, .. } = &mut work {
            let (tenant, deployment) = (&envelope.tenant, &envelope.aggregate_id);
            match router.keys.reseal_for(router.store, tenant, deployment, secrets, &node).await {
                Ok(resealed) => *sealed = resealed,
                // That node gets nothing it could not run; the others go on.
                Err(e) => {
                    tracing::warn!(%node, deployment, error = format!("{e:#}"), "no work: its secrets cannot be sealed for it");
                    continue;
                }
            }
        }
        each.push((vec![(format!("{}:{node}", envelope.id), work)], node));
    }
    Ok(each)
}

/// Appends work caused by `envelope` to each node's subject: a node's pieces of work, each
/// with its message id, in order; many nodes at a time.
async fn send(
    router: &Router<'_>,
    envelope: &Envelope,
    each: Vec<(Vec<(String, NodeWork)>, String)>,
) -> anyhow::Result<()> {
    let meta = &caused_by(envelope);
    let appends = each.into_iter().map(|(works, node)| async move {
        let subject = events::subject::node_desired(&envelope.tenant, &node);
        for (msg_id, work) in works {
            append_chained(router, &subject, &node, meta, &work, msg_id).await?;
        }
        anyhow::Ok(())
    });
    let mut appends = futures::stream::iter(appends).buffer_unordered(SENT_AT_ONCE);
    while let Some(sent) = appends.next().await {
        sent?;
    }
    Ok(())
}

/// Nodes a piece of work is appended to at once.
const SENT_AT_ONCE: usize = 256;

/// The router's fold of each deployment, kept current from the events it routes, so that a
/// deployment of many nodes is not loaded again for each event. The hash chain tells whether an
/// event follows the one folded last; when it does not (a restart, a redelivery), the
/// deployment is loaded from the log as of that event.
#[derive(Debug, Default)]
struct Folds(std::sync::Mutex<std::collections::HashMap<String, (Deployment, String)>>);

/// Deployments the router keeps folded; past that, it lets them all go and loads again.
const FOLDS_KEPT: usize = 10_000;

impl Folds {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, (Deployment, String)>> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Folds `event` in, if it follows the event folded last; otherwise forgets the deployment.
    fn advance(&self, stored: &StoredEvent, event: &DeploymentEvent) {
        let key = folded_key(&stored.envelope);
        let mut folds = self.lock();
        match folds.remove(&key) {
            Some((state, last)) if stored.envelope.prev_hash.as_ref() == Some(&last) => {
                folds.insert(key, (state.evolve(event), chain_hash(&stored.bytes)));
            }
            _ => {}
        }
    }

    /// `look` at the deployment of `stored`, folded up to and including that event.
    async fn as_of<T>(
        &self,
        store: &EventStore,
        stored: &StoredEvent,
        look: impl FnOnce(&Deployment) -> T,
    ) -> anyhow::Result<T> {
        let key = folded_key(&stored.envelope);
        let hash = chain_hash(&stored.bytes);
        if let Some((state, _)) = self.lock().get(&key).filter(|(_, last)| *last == hash) {
            return Ok(look(state));
        }
        let state = deployment_as_of(store, &stored.envelope).await?;
        let seen = look(&state);
        let mut folds = self.lock();
        if folds.len() >= FOLDS_KEPT {
            folds.clear();
        }
        folds.insert(key, (state, hash));
        Ok(seen)
    }
}

fn folded_key(envelope: &Envelope) -> String {
    format!("{}/{}", envelope.tenant, envelope.aggregate_id)
}

/// Work caused by `envelope`, in its name.
fn caused_by(envelope: &Envelope) -> Metadata {
    Metadata {
        tenant: envelope.tenant.clone(),
        actor: envelope.actor.clone(),
        correlation_id: envelope.correlation_id,
        causation_id: envelope.id,
    }
}

/// Sends `nodes` what the deployment is now, as of `stored`: a node joining a selector or
/// reached by a rollout wave. An applied deployment does not wait for an apply there; a
/// stopped one is stopped there too; during an update a node that has the deployment is
/// updated.
async fn send_current(router: &Router<'_>, stored: &StoredEvent, nodes: &[String]) -> anyhow::Result<()> {
    let envelope = &stored.envelope;
    let deployment = envelope.aggregate_id.clone();
    let (work, stopped, secrets) = router
        .folds
        .as_of(router.store, stored, |state| {
            let mode = Mode { staged: state.mode.staged, instantly_apply: !state.awaiting_apply };
            let (version, image) = (state.version.clone(), state.image.clone());
            let (env, services, secrets) = (state.env.clone(), state.services.clone(), BTreeMap::new());
            let work = match state.updating {
                true => {
                    NodeWork::Update { deployment: deployment.clone(), version, image, mode, env, services, secrets }
                }
                false => NodeWork::Deploy {
                    deployment: deployment.clone(),
                    application: state.application.clone(),
                    version,
                    image,
                    mode,
                    env,
                    services,
                    secrets,
                },
            };
            (work, state.desired == Desired::Stopped, state.secrets.clone())
        })
        .await?;
    let mut each = for_each_node(router, envelope, &work, &secrets, nodes.to_vec()).await?;
    if stopped {
        for (works, node) in &mut each {
            works.push((format!("{}:{node}:stop", envelope.id), NodeWork::Stop { deployment: deployment.clone() }));
        }
    }
    send(router, envelope, each).await
}

/// The nodes the deployment of `stored` targets, as of that event.
async fn targets(store: &EventStore, folds: &Folds, stored: &StoredEvent) -> anyhow::Result<Vec<String>> {
    folds.as_of(store, stored, |state| state.targets().cloned().collect()).await
}

/// The deployment `envelope` belongs to, folded up to and including that event.
async fn deployment_as_of(store: &EventStore, envelope: &Envelope) -> anyhow::Result<Deployment> {
    let subject = events::subject::aggregate(&envelope.tenant, Deployment::TYPE, &envelope.aggregate_id);
    let mut loaded = store.load(&subject).await?;
    if let Some(at) = loaded.events.iter().position(|e| e.envelope.id == envelope.id) {
        loaded.events.truncate(at.saturating_add(1));
    }
    Ok(crate::command::fold(&loaded)?)
}

/// Keeps selector deployments' targets in step with the nodes: a node that registers or whose
/// labels change is added to every live selector deployment it now matches, and removed from
/// those it no longer matches; a selector deployment, once launched, gets every node that
/// matches by then. Each change carries its reason.
///
/// It reads every aggregate event in stream order and, before it looks at a read model, waits
/// for that model to have folded the event: so a node that registers while a selector launch is
/// being written is seen by one side or the other. The aggregate ignores a target it has.
pub async fn membership(
    handler: CommandHandler,
    deployments: crate::read_model::Deployments,
    nodes: crate::read_model::Nodes,
) -> anyhow::Result<()> {
    let store = handler.store().clone();
    consume(&store, "targets", events::subject::ALL_AGGREGATES, |_, event| {
        membership_one(&handler, &deployments, &nodes, event)
    })
    .await
}

/// How long membership waits for a read model to reach an event before it retries later.
const READ_MODEL_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

async fn membership_one(
    handler: &CommandHandler,
    deployments: &crate::read_model::Deployments,
    nodes: &crate::read_model::Nodes,
    stored: StoredEvent,
) -> anyhow::Result<()> {
    let envelope = &stored.envelope;
    let sequence = stored.sequence;
    match envelope.aggregate_type.as_str() {
        "node" => {
            let (NodeEvent::Registered { labels } | NodeEvent::LabelsChanged { labels }) =
                envelope.event::<NodeEvent>()?
            else {
                return Ok(());
            };
            let caught_up = crate::projector::wait_for(deployments.tree(), sequence, READ_MODEL_WAIT).await?;
            anyhow::ensure!(caught_up, "the deployments read model lags");
            for view in deployments.all_of(&envelope.tenant)? {
                let Some(selector) = &view.selector else { continue };
                if view.desired != events::deployment::Desired::Removed {
                    change_target(handler, envelope, &view.id, &envelope.aggregate_id, &labels, selector).await?;
                }
            }
        }
        "deployment" => {
            let DeploymentEvent::Launched { selector: Some(selector), .. } = envelope.event::<DeploymentEvent>()?
            else {
                return Ok(());
            };
            let caught_up = crate::projector::wait_for(nodes.tree(), sequence, READ_MODEL_WAIT).await?;
            anyhow::ensure!(caught_up, "the nodes read model lags");
            for record in nodes.all_of(&envelope.tenant)?.into_iter().filter(|n| n.matches(&selector)) {
                change_target(handler, envelope, &envelope.aggregate_id, &record.id, &record.labels, &selector).await?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Adds `node` to selector deployment `deployment`, or removes it, as its labels say.
async fn change_target(
    handler: &CommandHandler,
    cause: &Envelope,
    deployment: &str,
    node: &str,
    labels: &events::node::Labels,
    selector: &events::node::Labels,
) -> anyhow::Result<()> {
    let shown = selector.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",");
    let command = if events::projection::nodes::matches(labels, selector) {
        DeploymentCommand::AddTarget { node: node.to_owned(), reason: format!("node `{node}` matches {shown}") }
    } else {
        DeploymentCommand::RemoveTarget {
            node: node.to_owned(),
            reason: format!("node `{node}` no longer matches {shown}"),
        }
    };
    let meta = CommandMeta {
        tenant: cause.tenant.clone(),
        actor: "engine:membership".to_owned(),
        command_id: Uuid::new_v5(&cause.id, format!("{deployment}/{node}").as_bytes()),
        correlation_id: cause.correlation_id,
    };
    if let Some(rejection) = refusal(handler.execute::<Deployment>(deployment, &command, &meta).await)? {
        tracing::warn!(node, deployment, %rejection, "membership change refused");
    }
    Ok(())
}

/// Appends one work event to a node's subject, chained to the last one there: the head this
/// router last wrote there, or read from the log when it knows none or another writer came
/// between (the append's conflict says so).
async fn append_chained(
    router: &Router<'_>,
    subject: &str,
    node: &str,
    meta: &Metadata,
    work: &NodeWork,
    msg_id: String,
) -> anyhow::Result<()> {
    let store = router.store;
    for _ in 0..ROUTE_ATTEMPTS {
        let (last_sequence, prev_hash) = match router.heads.get(subject) {
            Some(known) => known,
            None => {
                let head = store.head(subject).await?;
                (head.last_sequence, head.last.as_ref().map(|e| chain_hash(&e.bytes)))
            }
        };
        let envelope = store.seal(Envelope::new(
            Uuid::now_v7(),
            chrono::Utc::now(),
            work::AGGREGATE_TYPE,
            node,
            meta,
            work,
            prev_hash,
        ));
        let trace = Some(envelope.correlation_id);
        let bytes = Bytes::from(envelope.encode());
        let hash = chain_hash(&bytes);
        let outgoing = Outgoing { msg_id: msg_id.clone(), bytes, trace };
        match store.append(subject, last_sequence, vec![outgoing]).await {
            Ok(sequences) => {
                match sequences[..] {
                    [sequence] => router.heads.set(subject, sequence, hash),
                    _ => router.heads.forget(subject),
                }
                return Ok(());
            }
            // Stored before, by this router or another: where the head is now is not known.
            Err(AppendError::Duplicate { .. }) => {
                router.heads.forget(subject);
                return Ok(());
            }
            Err(AppendError::Conflict { .. }) => router.heads.forget(subject),
            Err(e) => {
                router.heads.forget(subject);
                return Err(e.into());
            }
        }
    }
    anyhow::bail!("gave up after {ROUTE_ATTEMPTS} conflicting writes to {subject}")
}

/// The last sequence and chain hash of each node's work subject, as this router last wrote
/// them: a node's next work is appended without reading its subject first. Only ever a guess,
/// as the append expects that sequence; forgotten on any doubt. It trusts that the sequence
/// still names the router's own message: a server that lost the stream's end and gave that
/// sequence to another writer's message on the same subject would be chained to wrongly.
#[derive(Debug, Default)]
struct Heads(std::sync::Mutex<HashMap<String, (u64, String)>>);

impl Heads {
    fn get(&self, subject: &str) -> Option<(u64, Option<String>)> {
        let heads = self.0.lock().expect("the heads are not poisoned");
        heads.get(subject).map(|(sequence, hash)| (*sequence, Some(hash.clone())))
    }

    fn set(&self, subject: &str, sequence: u64, hash: String) {
        let mut heads = self.0.lock().expect("the heads are not poisoned");
        // Bounded: past this many nodes, heads are read again from the log.
        if heads.len() >= KNOWN_HEADS && !heads.contains_key(subject) {
            heads.clear();
        }
        heads.insert(subject.to_owned(), (sequence, hash));
    }

    fn forget(&self, subject: &str) {
        self.0.lock().expect("the heads are not poisoned").remove(subject);
    }
}

/// Node work subjects whose head the router keeps (about 200 bytes each: 40 MB at most).
const KNOWN_HEADS: usize = 200_000;

/// Conflicts on a node's work subject tolerated before the event is left for redelivery.
const ROUTE_ATTEMPTS: u32 = 8;

/// Turns node reports into commands on the node and deployment aggregates.
///
/// A report speaks for the node whose subject it arrived on. One that does not fit there is set
/// aside; one not signed by the node's key is refused and recorded as `node.report_refused`.
/// One that the aggregate refuses is logged and acked: it would be refused again. Only a
/// failure of the store leaves it for redelivery.
pub async fn ingest(handler: CommandHandler, keys: std::sync::Arc<NodeKeys>) -> anyhow::Result<()> {
    let store = handler.store().clone();
    consume_in_lanes(&store, "ingest", events::subject::ALL_NODE_REPORTS, |subject, event| {
        ingest_one(&handler, &keys, subject, event)
    })
    .await
}

/// The key each node was enrolled with, as last read from its aggregate. The credentials
/// worker forgets a node's key when it is rotated or revoked, so it is read again.
#[derive(Debug, Default)]
pub struct NodeKeys(std::sync::Mutex<HashMap<String, String>>);

impl NodeKeys {
    /// Forgets what is known of `node`'s key.
    pub fn forget(&self, tenant: &str, node: &str) {
        let subject = events::subject::aggregate(tenant, Node::TYPE, node);
        self.0.lock().expect("the key cache is not poisoned").remove(&subject);
    }

    /// Why the report in `envelope` may not speak for `node` of `tenant`, if it may not: it
    /// must be signed, and by the key the node holds now.
    async fn refusal(
        &self,
        handler: &CommandHandler,
        tenant: &str,
        node: &str,
        envelope: &Envelope,
    ) -> anyhow::Result<Option<String>> {
        let signer = match envelope.verify() {
            Ok(signer) => signer,
            Err(e) => return Ok(Some(format!("{e}"))),
        };
        let subject = events::subject::aggregate(tenant, Node::TYPE, node);
        if self.0.lock().expect("the key cache is not poisoned").get(&subject).is_some_and(|k| k == signer) {
            return Ok(None);
        }
        // Not known yet, or the node's key changed since: ask its aggregate.
        let state: Node = handler.state(tenant, node).await?;
        if state.revoked() {
            return Ok(Some("the node's credential was revoked".to_owned()));
        }
        let Some(key) = state.key else { return Ok(Some("the node is not enrolled".to_owned())) };
        let matches = key == signer;
        self.0.lock().expect("the key cache is not poisoned").insert(subject, key);
        Ok((!matches).then(|| format!("signed by {signer}, which is not the key the node was enrolled with")))
    }
}

async fn ingest_one(
    handler: &CommandHandler,
    keys: &NodeKeys,
    subject: String,
    stored: StoredEvent,
) -> anyhow::Result<()> {
    let envelope = &stored.envelope;
    let sequence = stored.sequence;
    // ev.<tenant>.node.<node>.state
    let [_, tenant, _, node, _] = subject.split('.').collect::<Vec<_>>()[..] else {
        tracing::error!(sequence, subject, "a report on an unexpected subject");
        return Ok(());
    };
    if let Some(why) = keys.refusal(handler, tenant, node, envelope).await? {
        tracing::error!(sequence, subject, why, "refused: a report not signed by its node");
        return record_refusal(handler, tenant, node, sequence, why).await;
    }
    let taken_at = chrono::Utc::now();
    // It fits its subject (`handle_one`): its payload is a report.
    let Ok(report) = envelope.event::<NodeReport>() else { return Ok(()) };
    // The report is the cause; its id makes the command idempotent.
    let meta = CommandMeta {
        tenant: tenant.to_owned(),
        actor: format!("node:{node}"),
        command_id: envelope.id,
        correlation_id: envelope.correlation_id,
    };
    let (deployment, command) = match report {
        NodeReport::Online { labels, .. } => {
            let register = handler.execute::<Node>(node, &NodeCommand::Register { labels }, &meta).await;
            let heartbeat = CommandMeta { command_id: Uuid::new_v5(&envelope.id, b"heartbeat"), ..meta };
            let refused = match register {
                Ok(_) => refusal(handler.execute::<Node>(node, &NodeCommand::Heartbeat, &heartbeat).await)?,
                Err(e) => refusal(Err(e))?,
            };
            if let Some(rejection) = refused {
                tracing::warn!(sequence, node, %rejection, "report refused");
            }
            return Ok(());
        }
        NodeReport::DeploymentState { deployment, version, status, error, containers } => {
            if let Err(e) = events::subject::check_token("deployment", &deployment) {
                tracing::warn!(sequence, node, error = %e, "report refused");
                return Ok(());
            }
            // Taken at the engine's time, ordered by the node's count: the node's clock may be
            // anywhere.
            let (reported_at, order) = (taken_at, envelope.order);
            let report = StateReport { version, status, error, containers, reported_at, order };
            if let Some(rejection) = report_state(handler, &meta, &deployment, node, report).await? {
                tracing::warn!(sequence, node, %rejection, "report refused");
            }
            return Ok(());
        }
        NodeReport::WorkSetAside { sequence: set_aside, reason } => {
            // The node's word is taken for its own work subject alone.
            let work = events::subject::node_desired(tenant, node);
            match handler.store().raw_at(set_aside).await? {
                Some(raw) if raw.subject == work => {
                    let letter = bus::dead::Letter::new(&meta.actor, &work, Some(set_aside), &raw.payload, reason);
                    handler.store().dead_letters().set_aside(letter).await;
                }
                _ => tracing::warn!(sequence, node, set_aside, "a node set aside a message not on its work subject"),
            }
            return Ok(());
        }
        NodeReport::Drift { deployment, container, drift } => {
            let (node, at) = (node.to_owned(), taken_at);
            (deployment, DeploymentCommand::RecordDrift { node, container, drift, at })
        }
        NodeReport::AppliedLocally { deployment } => {
            (deployment, DeploymentCommand::RecordLocalApply { node: node.to_owned(), at: taken_at })
        }
    };
    if let Err(e) = events::subject::check_token("deployment", &deployment) {
        tracing::warn!(sequence, node, error = %e, "report refused");
        return Ok(());
    }
    let refused = refusal(handler.execute::<Deployment>(&deployment, &command, &meta).await)?;
    if let Some(rejection) = refused {
        tracing::warn!(sequence, node, %rejection, "report refused");
    }
    Ok(())
}

/// What a node said of one deployment.
pub(crate) struct StateReport {
    pub(crate) version: String,
    pub(crate) status: events::Status,
    pub(crate) error: Option<events::Failure>,
    pub(crate) containers: events::Containers,
    pub(crate) reported_at: chrono::DateTime<chrono::Utc>,
    pub(crate) order: Option<events::envelope::Order>,
}

/// Records `report` on the aggregate of the (deployment, node) pair, checked against what the
/// deployment asks of the node. That is read from this engine's fold of the deployment, which
/// costs nothing but may be behind the log: what it refused, or found to change nothing, is
/// decided again on the deployment as the log has it.
pub(crate) async fn report_state(
    handler: &CommandHandler,
    meta: &CommandMeta,
    deployment: &str,
    node: &str,
    report: StateReport,
) -> anyhow::Result<Option<String>> {
    let tenant = &meta.tenant;
    let seen = |state: &Deployment| state.seen(node);
    let (mut seen_now, mut fresh) = match handler.peek::<Deployment, _>(tenant, deployment, seen).await {
        Some(cached) => (cached, false),
        None => (handler.read::<Deployment, _>(tenant, deployment, seen).await?, true),
    };
    let id = events::deployment_node::id(deployment, node);
    loop {
        let StateReport { version, status, error, containers, reported_at, order } = &report;
        let command = DeploymentNodeCommand::Report {
            node: node.to_owned(),
            seen: seen_now.clone(),
            version: version.clone(),
            status: *status,
            error: error.clone(),
            containers: containers.clone(),
            reported_at: *reported_at,
            order: *order,
        };
        let result = handler.execute::<DeploymentNode>(&id, &command, meta).await;
        let doubtful = match &result {
            Err(CommandError::Rejected(_)) => true,
            Ok(committed) => committed.events.is_empty() && !committed.duplicate,
            Err(_) => false,
        };
        if doubtful && !fresh {
            (seen_now, fresh) = (handler.read::<Deployment, _>(tenant, deployment, seen).await?, true);
            continue;
        }
        return refusal(result);
    }
}

/// Passes the settled reports of (deployment, node) pairs on to their deployments, when the
/// deployment decides on them: a phased rollout releases the next nodes or halts, a guarded
/// update goes back. The deployment is read as the log has it, so another engine's update is
/// never missed. What has come in at once is passed on in one command per deployment. Other
/// reports, and the deployments that do not watch their nodes, are left.
pub async fn settle(handler: CommandHandler) -> anyhow::Result<()> {
    let store = handler.store().clone();
    let (name, filter) = ("settle", events::subject::ALL_DEPLOYMENT_NODES);
    let pull = bus::consume::Pull { expires: PULL_EXPIRES, heartbeat: PULL_HEARTBEAT, batch: PULL_BATCH };
    let messages = bus::consume::durable(name, store.client().clone(), pull, || durable(&store, name, filter));
    let mut chunks = std::pin::pin!(messages.ready_chunks(SETTLED_AT_ONCE));
    while let Some(chunk) = chunks.next().await {
        let mut groups: Vec<Settling> = Vec::new();
        let mut others = Vec::new();
        for message in chunk {
            match settled(&message.subject, &message.payload) {
                Ok(Some((key, report, cause))) => match groups.iter_mut().find(|g| g.key == key) {
                    Some(group) => group.add(report, cause, message),
                    None => groups.push(Settling::new(key, report, cause, message)),
                },
                Ok(None) => others.push(message),
                Err(unfit) => {
                    let sequence = message.info().map(|info| info.stream_sequence).ok();
                    let letter = bus::dead::Letter::new(name, &message.subject, sequence, &message.payload, unfit);
                    store.dead_letters().set_aside(letter).await;
                    others.push(message);
                }
            }
        }
        for group in groups {
            let outcome = in_order(name, &group.messages, || settle_group(&handler, &group)).await;
            finish(name, &group.messages, outcome).await;
        }
        finish(name, &others, Ok(())).await;
    }
    Ok(())
}

/// Pair events taken at once by the `settle` consumer.
const SETTLED_AT_ONCE: usize = 512;

/// The settled reports of one deployment, with their messages.
struct Settling {
    /// The tenant and the deployment.
    key: (String, String),
    reports: Vec<events::deployment::Settle>,
    /// The first report's correlation, which the command keeps, and every event's id.
    correlation_id: Uuid,
    ids: Vec<Uuid>,
    messages: Vec<async_nats::jetstream::Message>,
}

impl Settling {
    fn new(
        key: (String, String),
        report: events::deployment::Settle,
        cause: Envelope,
        message: async_nats::jetstream::Message,
    ) -> Settling {
        let (correlation_id, ids) = (cause.correlation_id, vec![cause.id]);
        Settling { key, reports: vec![report], correlation_id, ids, messages: vec![message] }
    }

    fn add(&mut self, report: events::deployment::Settle, cause: Envelope, message: async_nats::jetstream::Message) {
        self.reports.push(report);
        self.ids.push(cause.id);
        self.messages.push(message);
    }
}

/// A settled report: (tenant, deployment), the report, and the pair's event that holds it.
type Settled = ((String, String), events::deployment::Settle, Envelope);

/// The settled report a pair's event holds, with its deployment and the event; none for any
/// other event; why not, for a message that does not fit on its subject.
fn settled(subject: &str, payload: &[u8]) -> Result<Option<Settled>, events::fit::Unfit> {
    let envelope = events::fit::read(subject, payload)?;
    let Some((deployment, node)) = events::deployment_node::split(&envelope.aggregate_id) else {
        return Ok(None);
    };
    let DeploymentNodeEvent::StateReported { version, status, error, reported_at, .. } =
        envelope.event().map_err(events::fit::Unfit::Payload)?
    else {
        return Ok(None);
    };
    if !status.is_settled() {
        return Ok(None);
    }
    let key = (envelope.tenant.clone(), deployment.to_owned());
    let report = events::deployment::Settle { node: node.to_owned(), version, status, error, reported_at };
    Ok(Some((key, report, envelope)))
}

async fn settle_group(handler: &CommandHandler, group: &Settling) -> anyhow::Result<()> {
    let (tenant, deployment) = &group.key;
    if !handler.read::<Deployment, _>(tenant, deployment, Deployment::watches_nodes).await? {
        return Ok(());
    }
    // The same events give the same command id, however they come again.
    let ids: Vec<u8> = group.ids.iter().flat_map(|id| id.into_bytes()).collect();
    let meta = CommandMeta {
        tenant: tenant.clone(),
        actor: "engine:settle".to_owned(),
        command_id: Uuid::new_v5(&Uuid::NAMESPACE_OID, &ids),
        correlation_id: group.correlation_id,
    };
    let command = DeploymentCommand::SettleNodes { reports: group.reports.clone() };
    if let Some(rejection) = refusal(handler.execute::<Deployment>(deployment, &command, &meta).await)? {
        tracing::warn!(deployment, %rejection, "settled nodes not taken");
    }
    Ok(())
}

/// The longest reason a refusal keeps, in characters.
const REASON_CHARS: usize = 256;

/// Records, as an event of `node`, that the report at `sequence` on its subject was refused:
/// only the node's credential (or the engine's) writes there, so the finding is the node's.
/// Once per report, whatever redelivers it.
async fn record_refusal(
    handler: &CommandHandler,
    tenant: &str,
    node: &str,
    sequence: u64,
    reason: String,
) -> anyhow::Result<()> {
    if events::subject::check_token("node", node).is_err() || events::subject::check_token("tenant", tenant).is_err() {
        return Ok(());
    }
    let id = Uuid::new_v5(&Uuid::NAMESPACE_OID, format!("refused report {sequence} {tenant} {node}").as_bytes());
    // The reason may quote what the report claims: it is kept short.
    let reason = match reason.char_indices().nth(REASON_CHARS) {
        Some(_) => format!("{}…", reason.chars().take(REASON_CHARS).collect::<String>()),
        None => reason,
    };
    let meta = CommandMeta {
        tenant: tenant.to_owned(),
        actor: "engine:ingest".to_owned(),
        command_id: id,
        correlation_id: id,
    };
    let refused = refusal(handler.execute::<Node>(node, &NodeCommand::RefuseReport { sequence, reason }, &meta).await)?;
    if let Some(rejection) = refused {
        tracing::warn!(sequence, node, %rejection, "recording a refused report");
    }
    Ok(())
}

/// A rejection as a value to log; any other failure as an error to retry.
fn refusal<R: std::error::Error>(
    result: Result<crate::command::Committed, CommandError<R>>,
) -> anyhow::Result<Option<String>> {
    match result {
        Ok(_) => Ok(None),
        Err(CommandError::Rejected(rejection)) => Ok(Some(rejection.to_string())),
        Err(e) => Err(anyhow::anyhow!("{e}")),
    }
}

/// Carries out a tenant's deletion: every deployment it has in the log is uninstalled, which
/// removes it from every node. The deployments are found from the stream's subjects, not from a
/// read model that the same deletion empties.
pub async fn tenants(handler: CommandHandler, keys: TenantKeys) -> anyhow::Result<()> {
    let store = handler.store().clone();
    consume(&store, "tenants", events::subject::ALL_TENANTS, |_, event| tenant_one(&handler, &keys, event)).await
}

async fn tenant_one(handler: &CommandHandler, keys: &TenantKeys, stored: StoredEvent) -> anyhow::Result<()> {
    let envelope = &stored.envelope;
    let events::tenant::TenantEvent::Deleted { .. } = envelope.event()? else { return Ok(()) };
    let pattern = events::subject::aggregate(&envelope.tenant, Deployment::TYPE, "*");
    for subject in handler.store().subjects(&pattern).await? {
        let Some(id) = subject.rsplit('.').next() else { continue };
        let meta = CommandMeta {
            tenant: envelope.tenant.clone(),
            actor: envelope.actor.clone(),
            command_id: Uuid::new_v5(&envelope.id, id.as_bytes()),
            correlation_id: envelope.correlation_id,
        };
        if let Some(rejection) = refusal(handler.execute::<Deployment>(id, &DeploymentCommand::Uninstall, &meta).await)?
        {
            tracing::debug!(deployment = id, %rejection, "nothing to uninstall");
        }
    }
    // Crypto-shredding: what the log holds sealed under the tenant's key is unreadable from now.
    keys.shred(&envelope.tenant).await
}
