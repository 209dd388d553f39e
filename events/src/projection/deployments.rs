//! The deployments read model: one view per deployment, with the status of each node and the
//! rolled-up status of the whole.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::compose::Service;
use crate::deployment::{DeploymentEvent, Desired, Rollout};
use crate::deployment_node::DeploymentNodeEvent;
use crate::envelope::Envelope;
use crate::projection::{Fact, ModelError, Store};
use crate::status::{Containers, Failure, Status};

fn yes() -> bool {
    true
}

fn is_true(value: &bool) -> bool {
    *value
}

fn is_false(value: &bool) -> bool {
    !*value
}

/// The reason a `pending_*` status carries until the node answers.
pub fn pending_reason(status: Status) -> Option<&'static str> {
    match status {
        Status::PendingDeploy => Some("waiting for the node to receive the deployment"),
        Status::PendingStart => Some("waiting for the node to start the deployment"),
        Status::PendingStop => Some("waiting for the node to stop the deployment"),
        Status::PendingRemove => Some("waiting for the node to remove the deployment"),
        Status::PendingApply => Some("waiting for the node to apply the staged deployment"),
        _ => None,
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeploymentView {
    pub id: String,
    pub tenant: String,
    pub application: String,
    pub version: String,
    pub image: String,
    /// The most severe status of its nodes.
    pub status: Status,
    /// What the operator last asked for.
    #[serde(default)]
    pub desired: Desired,
    /// Launched (or last updated) staged.
    #[serde(default)]
    pub staged: bool,
    /// Staged and not yet applied.
    #[serde(default)]
    pub awaiting_apply: bool,
    /// Targets the nodes whose labels include these, as they come and go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<crate::node::Labels>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// The environment its containers get.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// A compose version's services, as its containers get them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<Object>))]
    pub services: Vec<Service>,
    /// The names of the values its containers get that are never shown: each is `***`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, String>,
    /// The phased rollout of the last launch or update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<Rollout>,
    /// Why that rollout stopped releasing nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_halted: Option<String>,
    /// Why the last update went back to the version before it, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolled_back: Option<String>,
    pub nodes: BTreeMap<String, NodeView>,
    pub launched_by: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodeView {
    /// A target now; false for a node that left a selector deployment (kept for its history).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub active: bool,
    pub status: Status,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<Failure>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reason: Option<String>,
    /// Each container's status, by container name; the node's is the most severe of them.
    #[serde(skip_serializing_if = "Containers::is_empty", default)]
    pub containers: Containers,
    /// The staged version was applied on the node itself.
    #[serde(skip_serializing_if = "is_false", default)]
    pub applied_locally: bool,
    /// The last container the node found changed behind its back, and how.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub last_drift: Option<String>,
    /// The last launch or update was sent to it; a phased rollout holds nodes back.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub released: bool,
    /// Its credential was revoked: it is cut off from the bus, and the status above is the
    /// last it reported.
    #[serde(skip_serializing_if = "is_false", default)]
    pub revoked: bool,
    /// Its node is unreachable now: the status above is the last it reported. The API sets it
    /// from the nodes read model when it shows the view; the fold never does.
    #[serde(skip_serializing_if = "is_false", default)]
    pub unreachable: bool,
    /// The engine waited for the node in this status past its deadline; any change ends it.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub overdue: Option<Overdue>,
    pub updated_at: DateTime<Utc>,
}

/// A status held past its deadline (`deployment_node.overdue`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Overdue {
    pub status: Status,
    /// How long the engine had waited, in milliseconds, when it said so.
    pub waited_ms: u64,
    /// When it said so.
    pub at: DateTime<Utc>,
}

/// The prefixes of its keys that hold a tenant's deployments: a tenant's deletion clears them.
pub const TENANT_PREFIXES: &[&str] = &["d/", "p/"];

/// The key of a deployment's [`Header`].
pub fn key(tenant: &str, id: &str) -> String {
    format!("d/{tenant}/{id}")
}

/// The prefix of the keys of a deployment's nodes, each followed by the node.
pub fn nodes_prefix(tenant: &str, id: &str) -> String {
    format!("p/{tenant}/{id}/")
}

fn node_key(tenant: &str, id: &str, node: &str) -> String {
    format!("p/{tenant}/{id}/{node}")
}

/// What is kept of a deployment besides its nodes, each of which is kept apart: its view
/// without them, and how many of them are in each status, which its status rolls up. A
/// report rewrites one node and this, never the whole deployment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    pub view: DeploymentView,
    pub counts: BTreeMap<Status, u32>,
}

/// The view of deployment `id`, with its nodes.
pub fn view(store: &mut impl Store, tenant: &str, id: &str) -> Result<Option<DeploymentView>, ModelError> {
    let Some(header) = store.get::<Header>(&key(tenant, id))? else { return Ok(None) };
    let mut open = Open { store, tenant: tenant.to_owned(), id: id.to_owned(), header };
    let nodes = open.nodes()?.into_iter().collect();
    Ok(Some(DeploymentView { nodes, ..open.header.view }))
}

/// Folds a deployment's event, or one of its nodes' reports.
pub fn fold(store: &mut impl Store, envelope: &Envelope, fact: &Fact) -> Result<(), ModelError> {
    match fact {
        Fact::Deployment(event) => deployment(store, envelope, event),
        Fact::DeploymentNode { deployment, node, event } => pair(store, envelope, deployment, node, event),
        _ => Ok(()),
    }
}

/// A node waiting for what was asked of it.
fn pending(status: Status, at: DateTime<Utc>) -> NodeView {
    NodeView {
        active: true,
        status,
        error: None,
        reason: pending_reason(status).map(str::to_owned),
        containers: Containers::new(),
        applied_locally: false,
        last_drift: None,
        released: true,
        revoked: false,
        unreachable: false,
        overdue: None,
        updated_at: at,
    }
}

/// A node a phased rollout has not reached yet.
fn held(at: DateTime<Utc>) -> NodeView {
    const TURN: &str = "waiting for its turn in the phased rollout";
    NodeView { released: false, reason: Some(TURN.to_owned()), ..pending(Status::PendingDeploy, at) }
}

/// A deployment open for a fold: its header, and its nodes read and written one by one.
struct Open<'s, S: Store> {
    store: &'s mut S,
    tenant: String,
    id: String,
    header: Header,
}

impl<S: Store> Open<'_, S> {
    fn node(&mut self, node: &str) -> Result<Option<NodeView>, ModelError> {
        self.store.get(&node_key(&self.tenant, &self.id, node))
    }

    /// Every node, in order.
    fn nodes(&mut self) -> Result<Vec<(String, NodeView)>, ModelError> {
        let prefix = nodes_prefix(&self.tenant, &self.id);
        let mut nodes = Vec::new();
        for key in self.store.keys(&prefix)? {
            if let (Some(node), Some(view)) = (key.strip_prefix(&prefix), self.store.get::<NodeView>(&key)?) {
                nodes.push((node.to_owned(), view));
            }
        }
        Ok(nodes)
    }

    /// Sets a node's view, counted in its status.
    fn set(&mut self, node: &str, view: NodeView) -> Result<(), ModelError> {
        let key = node_key(&self.tenant, &self.id, node);
        if let Some(old) = self.store.get::<NodeView>(&key)? {
            if let Some(count) = self.header.counts.get_mut(&old.status) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    self.header.counts.remove(&old.status);
                }
            }
        }
        let count = self.header.counts.entry(view.status).or_default();
        *count = count.saturating_add(1);
        self.store.put(key, view);
        Ok(())
    }

    /// A node's report, over what was known of it (`previous`).
    fn report(
        &mut self,
        node: &str,
        previous: Option<NodeView>,
        status: Status,
        error: &Option<Failure>,
        containers: &Containers,
        reported_at: DateTime<Utc>,
    ) -> Result<(), ModelError> {
        let previous = previous.as_ref();
        let reported = NodeView {
            applied_locally: previous.is_some_and(|n| n.applied_locally),
            released: previous.is_none_or(|n| n.released),
            revoked: false,
            last_drift: previous.and_then(|n| n.last_drift.clone()),
            active: previous.is_none_or(|n| n.active),
            status,
            error: error.clone(),
            reason: None,
            containers: containers.clone(),
            unreachable: false,
            overdue: None,
            updated_at: reported_at,
        };
        self.set(node, reported)
    }

    /// Puts the header back as it was.
    fn keep(self) -> Result<(), ModelError> {
        self.store.put(key(&self.tenant, &self.id), self.header);
        Ok(())
    }

    /// Writes the header back, its status rolled up from its nodes'. A status that changed is
    /// shown at once ([`Store::show_now`]).
    fn close(mut self, at: DateTime<Utc>) -> Result<(), ModelError> {
        let view = &mut self.header.view;
        let before = view.status;
        view.status = Status::roll_up(self.header.counts.keys().copied()).unwrap_or(Status::PendingDeploy);
        view.updated_at = at;
        if view.status != before {
            self.store.show_now();
        }
        self.store.put(key(&self.tenant, &self.id), self.header);
        Ok(())
    }
}

fn deployment(store: &mut impl Store, envelope: &Envelope, event: &DeploymentEvent) -> Result<(), ModelError> {
    let (tenant, id, time) = (envelope.tenant.clone(), envelope.aggregate_id.clone(), envelope.time);
    if let DeploymentEvent::Launched {
        application,
        version,
        image,
        nodes,
        mode,
        selector,
        profile,
        env,
        services,
        rollout,
        secrets,
        ..
    } = event
    {
        store.remove_prefix(&nodes_prefix(&tenant, &id))?;
        // A new deployment is shown at once, like a change of status.
        store.show_now();
        let view = DeploymentView {
            id: id.clone(),
            tenant: tenant.clone(),
            application: application.clone(),
            version: version.clone(),
            image: image.clone(),
            status: Status::PendingDeploy,
            desired: Desired::Running,
            staged: mode.staged,
            awaiting_apply: mode.waits_for_apply(),
            selector: selector.clone(),
            profile: profile.clone(),
            env: env.clone(),
            services: services.clone(),
            secrets: secrets.keys().map(|name| (name.clone(), crate::REDACTED.to_owned())).collect(),
            rollout: *rollout,
            rollout_halted: None,
            rolled_back: None,
            nodes: BTreeMap::new(),
            launched_by: envelope.actor.clone(),
            created_at: time,
            updated_at: time,
        };
        let mut open = Open { store, tenant, id, header: Header { view, counts: BTreeMap::new() } };
        let node = match rollout {
            Some(_) => held(time),
            None => pending(Status::PendingDeploy, time),
        };
        for name in nodes {
            open.set(name, node.clone())?;
        }
        return open.close(time);
    }
    // An event for a deployment this model never saw launched: nothing to show.
    let Some(header) = store.take::<Header>(&key(&tenant, &id))? else { return Ok(()) };
    let mut open = Open { store, tenant, id, header };
    let request = match event {
        DeploymentEvent::StopRequested { .. } => Some((Desired::Stopped, Status::PendingStop)),
        DeploymentEvent::StartRequested { .. } => Some((Desired::Running, Status::PendingStart)),
        DeploymentEvent::UninstallRequested { .. } => Some((Desired::Removed, Status::PendingRemove)),
        DeploymentEvent::UpdateRequested { version, image, mode, env, services, rollout, reconfigured, .. } => {
            let view = &mut open.header.view;
            if let Some(r) = reconfigured {
                view.profile = r.profile.clone();
            }
            (view.env, view.services) = (env.clone(), services.clone());
            (view.rollout, view.rollout_halted) = (*rollout, None);
            (view.version, view.image) = (version.clone(), image.clone());
            (view.staged, view.awaiting_apply) = (mode.staged, mode.waits_for_apply());
            view.rolled_back = None;
            if rollout.is_some() {
                for (node, _) in open.nodes()?.into_iter().filter(|(_, n)| n.active) {
                    open.set(&node, held(time))?;
                }
            }
            Some((Desired::Running, Status::PendingDeploy))
        }
        DeploymentEvent::RolledBack { version, image, env, services, reason, reconfigured, .. } => {
            if let Some(r) = reconfigured {
                open.header.view.profile = r.profile.clone();
            }
            let view = &mut open.header.view;
            (view.version, view.image) = (version.clone(), image.clone());
            (view.env, view.services) = (env.clone(), services.clone());
            (view.rollout, view.rollout_halted) = (None, None);
            view.rolled_back = Some(reason.clone());
            for (node, view) in open.nodes()?.into_iter().filter(|(_, n)| n.active) {
                open.set(&node, NodeView { released: true, ..view })?;
            }
            Some((Desired::Running, Status::PendingDeploy))
        }
        DeploymentEvent::ApplyRequested { .. } => {
            open.header.view.awaiting_apply = false;
            Some((Desired::Running, Status::PendingApply))
        }
        DeploymentEvent::ForceUpdateRequested { image, services, .. } => {
            let view = &mut open.header.view;
            if !image.is_empty() {
                view.image = image.clone();
            }
            if !services.is_empty() {
                view.services = services.clone();
            }
            Some((Desired::Running, Status::PendingDeploy))
        }
        DeploymentEvent::TargetAdded { node, reason } => {
            open.set(node, NodeView { reason: Some(reason.clone()), ..pending(Status::PendingDeploy, time) })?;
            None
        }
        DeploymentEvent::TargetRemoved { node, reason } => {
            let left = NodeView { active: false, reason: Some(reason.clone()), ..pending(Status::PendingRemove, time) };
            open.set(node, left)?;
            None
        }
        DeploymentEvent::AppliedLocally { node, at } => {
            if let Some(view) = open.node(node)? {
                open.set(node, NodeView { applied_locally: true, updated_at: *at, ..view })?;
            }
            open.header.view.awaiting_apply = open.nodes()?.iter().any(|(_, n)| n.active && !n.applied_locally);
            None
        }
        DeploymentEvent::DriftDetected { node, container, drift, at } => {
            if let Some(view) = open.node(node)? {
                open.set(node, NodeView { last_drift: Some(format!("{container} {drift}")), updated_at: *at, ..view })?;
            }
            None
        }
        DeploymentEvent::WaveReleased { nodes } => {
            for node in nodes {
                open.set(node, pending(Status::PendingDeploy, time))?;
            }
            None
        }
        DeploymentEvent::RolloutHalted { reason } => {
            for (node, view) in open.nodes()?.into_iter().filter(|(_, n)| n.active && !n.released) {
                open.set(
                    &node,
                    NodeView { reason: Some(format!("not reached: the rollout halted ({reason})")), ..view },
                )?;
            }
            open.header.view.rollout_halted = Some(reason.clone());
            None
        }
        DeploymentEvent::NodeRevoked { node } => {
            if let Some(view) = open.node(node)? {
                let reason = Some("the node's credential was revoked".to_owned());
                open.set(node, NodeView { revoked: true, reason, updated_at: time, ..view })?;
            }
            None
        }
        // A log written before each pair had an aggregate of its own.
        DeploymentEvent::NodeStateReported { node, status, error, containers, reported_at } => {
            let previous = open.node(node)?;
            open.report(node, previous, *status, error, containers, *reported_at)?;
            None
        }
        DeploymentEvent::Launched { .. } | DeploymentEvent::NodesSettled { .. } => None,
    };
    if let Some((desired, status)) = request {
        open.header.view.desired = desired;
        // A request concerns the nodes the deployment targets now, but for those a phased
        // rollout holds back.
        for (node, known) in open.nodes()?.into_iter().filter(|(_, n)| n.active && n.released) {
            // What the node last said runs stays beside the request until it reports again:
            // the view never blanks what it knows.
            open.set(&node, NodeView { containers: known.containers, ..pending(status, time) })?;
        }
    }
    open.close(time)
}

/// Folds the report of one (deployment, node) pair, checked again against the deployment as
/// of this point of the log: a report of a node that is not a target, or of a version before
/// the one the node was sent, changes nothing.
fn pair(
    store: &mut impl Store,
    envelope: &Envelope,
    deployment: &str,
    node: &str,
    event: &DeploymentNodeEvent,
) -> Result<(), ModelError> {
    let (tenant, id) = (envelope.tenant.clone(), deployment.to_owned());
    let Some(header) = store.take::<Header>(&key(&tenant, &id))? else { return Ok(()) };
    let mut open = Open { store, tenant, id, header };
    let (version, status, error, containers, reported_at) = match event {
        DeploymentNodeEvent::StateReported { version, status, error, containers, reported_at, .. } => {
            (version, status, error, containers, reported_at)
        }
        DeploymentNodeEvent::Overdue { status, since, waited_ms } => {
            // Beside the status it is about, never in its place; gone with the next change.
            let Some(view) = open.node(node)? else { return open.keep() };
            if view.status != *status || view.updated_at > *since {
                return open.keep();
            }
            let overdue = Overdue { status: *status, waited_ms: *waited_ms, at: envelope.time };
            open.set(node, NodeView { overdue: Some(overdue), ..view })?;
            return open.keep();
        }
    };
    let Some(previous) = open.node(node)? else { return open.keep() };
    if !version.is_empty() && *version != open.header.view.version && previous.released {
        return open.keep();
    }
    open.report(node, Some(previous), *status, error, containers, *reported_at)?;
    open.close(envelope.time)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Metadata;
    use crate::projection::MemoryStore;
    use crate::testing::now;
    use expect_test::expect;
    use uuid::Uuid;

    fn envelope(event: &DeploymentEvent) -> Envelope {
        let meta = Metadata {
            tenant: "acme".into(),
            actor: "ops".into(),
            correlation_id: Uuid::from_u128(7),
            causation_id: Uuid::from_u128(7),
        };
        Envelope::new(Uuid::from_u128(1), now(), "deployment", "d1", &meta, event, None)
    }

    /// Version 1.0.0 of `sample` launched on `nodes`.
    fn launched_on(nodes: &[&str]) -> DeploymentEvent {
        crate::testing::launched("1.0.0", nodes)
    }

    fn fold_into(store: &mut MemoryStore, events: &[DeploymentEvent]) {
        for event in events {
            crate::projection::fold(store, &envelope(event), &Fact::Deployment(event.clone())).unwrap();
        }
    }

    fn fold(events: &[DeploymentEvent]) -> Option<DeploymentView> {
        let mut store = MemoryStore::default();
        fold_into(&mut store, events);
        view(&mut store, "acme", "d1").unwrap()
    }

    #[test]
    fn a_launch_is_pending_with_a_reason_then_rolls_up_the_nodes() {
        let launched = launched_on(&["edge-1", "edge-2"]);
        let running = |node: &str| DeploymentEvent::NodeStateReported {
            node: node.into(),
            status: Status::Running,
            error: None,
            reported_at: now(),
            containers: Default::default(),
        };
        let view = fold(&[launched.clone(), running("edge-1")]).unwrap();
        assert_eq!(view.status, Status::PendingDeploy);
        expect![[r#"
            {
              "id": "d1",
              "tenant": "acme",
              "application": "sample",
              "version": "1.0.0",
              "image": "127.0.0.1:5000/sample/app:1.0.0",
              "status": "pending_deploy",
              "desired": "running",
              "staged": false,
              "awaiting_apply": false,
              "nodes": {
                "edge-1": {
                  "status": "running",
                  "updated_at": "2026-03-01T12:00:00Z"
                },
                "edge-2": {
                  "status": "pending_deploy",
                  "reason": "waiting for the node to receive the deployment",
                  "updated_at": "2026-03-01T12:00:00Z"
                }
              },
              "launched_by": "ops",
              "created_at": "2026-03-01T12:00:00Z",
              "updated_at": "2026-03-01T12:00:00Z"
            }"#]]
        .assert_eq(&serde_json::to_string_pretty(&view).unwrap());
        let view = fold(&[launched.clone(), running("edge-1"), running("edge-2")]).unwrap();
        assert_eq!(view.status, Status::Running);

        let stop = DeploymentEvent::StopRequested { at: now() };
        let view = fold(&[launched, running("edge-1"), running("edge-2"), stop]).unwrap();
        assert_eq!((view.status, view.desired), (Status::PendingStop, Desired::Stopped));
        assert_eq!(view.nodes["edge-1"].reason.as_deref(), pending_reason(Status::PendingStop));
    }

    #[test]
    fn a_request_keeps_beside_it_what_each_node_last_said_runs() {
        let containers: Containers =
            [("sample-d1-edge-1".to_owned(), crate::ContainerStatus { status: Status::Running, error: None })].into();
        let running = DeploymentEvent::NodeStateReported {
            node: "edge-1".into(),
            status: Status::Running,
            error: None,
            reported_at: now(),
            containers: containers.clone(),
        };
        let stop = DeploymentEvent::StopRequested { at: now() };
        let view = fold(&[launched_on(&["edge-1", "edge-2"]), running, stop]).unwrap();
        let edge_1 = &view.nodes["edge-1"];
        assert_eq!(edge_1.status, Status::PendingStop, "the request is what the status says");
        assert_eq!(edge_1.containers, containers, "what runs until the node says otherwise");
        assert!(view.nodes["edge-2"].containers.is_empty(), "nothing known, nothing said");
    }

    #[test]
    fn a_node_that_left_is_not_touched_by_later_requests() {
        let launched = DeploymentEvent::Launched {
            application: "sample".into(),
            version: "1.0.0".into(),
            image: "x:1".into(),
            nodes: vec!["edge-1".into(), "edge-2".into()],
            mode: Default::default(),
            selector: Some([("site".to_owned(), "lab".to_owned())].into()),
            profile: None,
            overrides: Default::default(),
            env: Default::default(),
            services: Default::default(),
            rollout: Default::default(),
            secrets: Default::default(),
        };
        let left = DeploymentEvent::TargetRemoved { node: "edge-2".into(), reason: "labels changed".into() };
        let removed = DeploymentEvent::NodeStateReported {
            node: "edge-2".into(),
            status: Status::Removed,
            error: None,
            reported_at: now(),
            containers: Default::default(),
        };
        let uninstall = DeploymentEvent::UninstallRequested { at: now() };
        let view = fold(&[launched, left, removed, uninstall]).unwrap();
        assert_eq!(view.nodes["edge-2"].status, Status::Removed, "it left before: it stays removed");
        assert!(!view.nodes["edge-2"].active);
        assert_eq!(view.nodes["edge-1"].status, Status::PendingRemove);
    }

    #[test]
    fn a_report_without_a_launch_shows_nothing() {
        let report = DeploymentEvent::NodeStateReported {
            node: "edge-1".into(),
            status: Status::Running,
            error: None,
            reported_at: now(),
            containers: Default::default(),
        };
        assert_eq!(fold(&[report]), None);
    }

    #[test]
    fn a_nodes_report_on_its_pair_rolls_up_like_one_on_the_deployment_and_an_old_version_counts_for_nothing() {
        let launched = launched_on(&["edge-1"]);
        let reported = |version: &str, status: Status| DeploymentNodeEvent::StateReported {
            version: version.into(),
            status,
            error: None,
            containers: Default::default(),
            reported_at: now(),
            requests: 1,
            order: None,
        };
        let pair = |launch: &[DeploymentEvent], event: &DeploymentNodeEvent| {
            let meta = crate::envelope::Metadata {
                tenant: "acme".into(),
                actor: "node:edge-1".into(),
                correlation_id: Uuid::from_u128(7),
                causation_id: Uuid::from_u128(7),
            };
            let envelope = Envelope::new(Uuid::from_u128(2), now(), "deployment_node", "d1.edge-1", &meta, event, None);
            let mut store = MemoryStore::default();
            fold_into(&mut store, launch);
            let fact = Fact::of(&envelope).unwrap();
            assert_eq!(
                fact,
                Fact::DeploymentNode { deployment: "d1".into(), node: "edge-1".into(), event: event.clone() }
            );
            crate::projection::fold(&mut store, &envelope, &fact).unwrap();
            view(&mut store, "acme", "d1").unwrap()
        };
        let launch = std::slice::from_ref(&launched);
        let view = pair(launch, &reported("1.0.0", Status::Running)).unwrap();
        assert_eq!((view.status, view.nodes["edge-1"].status), (Status::Running, Status::Running));
        // Said of a version the node was not sent: the view stays as the launch left it.
        let view = pair(launch, &reported("0.9.0", Status::Running)).unwrap();
        assert_eq!(view.status, Status::PendingDeploy);
        assert_eq!(view, fold(launch).unwrap());
        // Of a node that is not a target, or before the launch: nothing.
        assert_eq!(pair(&[], &reported("1.0.0", Status::Running)), None);
    }
}
