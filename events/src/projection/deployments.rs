//! The deployments read model: one view per deployment, with the status of each node and the
//! rolled-up status of the whole.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::compose::Service;
use crate::deployment::{DeploymentEvent, Desired, Rollout};
use crate::deployment_node::DeploymentNodeEvent;
use crate::envelope::Envelope;
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
    pub updated_at: DateTime<Utc>,
}

/// Folds one deployment event into the view of its deployment.
pub fn apply(view: Option<DeploymentView>, envelope: &Envelope, event: &DeploymentEvent) -> Option<DeploymentView> {
    let pending = |status: Status| NodeView {
        active: true,
        status,
        error: None,
        reason: pending_reason(status).map(str::to_owned),
        containers: Containers::new(),
        applied_locally: false,
        last_drift: None,
        released: true,
        revoked: false,
        updated_at: envelope.time,
    };
    // A node a phased rollout has not reached yet.
    let held = |reason: String| NodeView { released: false, reason: Some(reason), ..pending(Status::PendingDeploy) };
    const TURN: &str = "waiting for its turn in the phased rollout";
    let mut view = match (view, event) {
        (
            _,
            DeploymentEvent::Launched {
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
            },
        ) => {
            let node = match rollout {
                Some(_) => held(TURN.to_owned()),
                None => pending(Status::PendingDeploy),
            };
            return Some(DeploymentView {
                id: envelope.aggregate_id.clone(),
                tenant: envelope.tenant.clone(),
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
                nodes: nodes.iter().map(|n| (n.clone(), node.clone())).collect(),
                launched_by: envelope.actor.clone(),
                created_at: envelope.time,
                updated_at: envelope.time,
            });
        }
        (Some(view), _) => view,
        // An event for a deployment this model never saw launched: nothing to show.
        (None, _) => return None,
    };
    let request = match event {
        DeploymentEvent::StopRequested { .. } => Some((Desired::Stopped, Status::PendingStop)),
        DeploymentEvent::StartRequested { .. } => Some((Desired::Running, Status::PendingStart)),
        DeploymentEvent::UninstallRequested { .. } => Some((Desired::Removed, Status::PendingRemove)),
        DeploymentEvent::UpdateRequested { version, image, mode, env, services, rollout, .. } => {
            view.env = env.clone();
            view.services = services.clone();
            view.rollout = *rollout;
            view.rollout_halted = None;
            if rollout.is_some() {
                for node in view.nodes.values_mut().filter(|n| n.active) {
                    *node = held(TURN.to_owned());
                }
            }
            view.version = version.clone();
            view.image = image.clone();
            view.staged = mode.staged;
            view.awaiting_apply = mode.waits_for_apply();
            view.rolled_back = None;
            Some((Desired::Running, Status::PendingDeploy))
        }
        DeploymentEvent::RolledBack { version, image, env, services, reason, .. } => {
            (view.version, view.image) = (version.clone(), image.clone());
            (view.env, view.services) = (env.clone(), services.clone());
            (view.rollout, view.rollout_halted) = (None, None);
            view.rolled_back = Some(reason.clone());
            for node in view.nodes.values_mut().filter(|n| n.active) {
                node.released = true;
            }
            Some((Desired::Running, Status::PendingDeploy))
        }
        DeploymentEvent::ApplyRequested { .. } => {
            view.awaiting_apply = false;
            Some((Desired::Running, Status::PendingApply))
        }
        DeploymentEvent::ForceUpdateRequested { image, services, .. } => {
            if !image.is_empty() {
                view.image = image.clone();
            }
            if !services.is_empty() {
                view.services = services.clone();
            }
            Some((Desired::Running, Status::PendingDeploy))
        }
        DeploymentEvent::TargetAdded { node, reason } => {
            let joined = NodeView { reason: Some(reason.clone()), ..pending(Status::PendingDeploy) };
            view.nodes.insert(node.clone(), joined);
            None
        }
        DeploymentEvent::TargetRemoved { node, reason } => {
            let left = NodeView { active: false, reason: Some(reason.clone()), ..pending(Status::PendingRemove) };
            view.nodes.insert(node.clone(), left);
            None
        }
        DeploymentEvent::AppliedLocally { node, at } => {
            if let Some(n) = view.nodes.get_mut(node) {
                n.applied_locally = true;
                n.updated_at = *at;
            }
            view.awaiting_apply = view.nodes.values().any(|n| n.active && !n.applied_locally);
            None
        }
        DeploymentEvent::DriftDetected { node, container, drift, at } => {
            if let Some(n) = view.nodes.get_mut(node) {
                n.last_drift = Some(format!("{container} {drift}"));
                n.updated_at = *at;
            }
            None
        }
        DeploymentEvent::WaveReleased { nodes } => {
            for node in nodes {
                view.nodes.insert(node.clone(), pending(Status::PendingDeploy));
            }
            None
        }
        DeploymentEvent::RolloutHalted { reason } => {
            for node in view.nodes.values_mut().filter(|n| n.active && !n.released) {
                node.reason = Some(format!("not reached: the rollout halted ({reason})"));
            }
            view.rollout_halted = Some(reason.clone());
            None
        }
        DeploymentEvent::NodeRevoked { node } => {
            if let Some(n) = view.nodes.get_mut(node) {
                n.revoked = true;
                n.reason = Some("the node's credential was revoked".to_owned());
                n.updated_at = envelope.time;
            }
            None
        }
        DeploymentEvent::Launched { .. }
        | DeploymentEvent::NodeStateReported { .. }
        | DeploymentEvent::NodesSettled { .. } => None,
    };
    if let Some((desired, status)) = request {
        view.desired = desired;
        // A request concerns the nodes the deployment targets now, but for those a phased
        // rollout holds back.
        for node in view.nodes.values_mut().filter(|n| n.active && n.released) {
            *node = pending(status);
        }
    }
    if let DeploymentEvent::NodeStateReported { node, status, error, containers, reported_at } = event {
        report(&mut view, node, *status, error, containers, *reported_at);
    }
    view.status = Status::roll_up(view.nodes.values().map(|n| n.status)).unwrap_or(Status::PendingDeploy);
    view.updated_at = envelope.time;
    Some(view)
}

/// Folds the report of one (deployment, node) pair into the view of its deployment, checked
/// again against the deployment as of this point of the log: a report of a node that is not a
/// target, or of a version before the one the node was sent, changes nothing.
pub fn apply_node(
    view: Option<DeploymentView>,
    envelope: &Envelope,
    node: &str,
    event: &DeploymentNodeEvent,
) -> Option<DeploymentView> {
    let mut view = view?;
    let DeploymentNodeEvent::StateReported { version, status, error, containers, reported_at, .. } = event;
    let Some(previous) = view.nodes.get(node) else { return Some(view) };
    if !version.is_empty() && *version != view.version && previous.released {
        return Some(view);
    }
    report(&mut view, node, *status, error, containers, *reported_at);
    view.status = Status::roll_up(view.nodes.values().map(|n| n.status)).unwrap_or(Status::PendingDeploy);
    view.updated_at = envelope.time;
    Some(view)
}

/// A node's report in its deployment's view.
fn report(
    view: &mut DeploymentView,
    node: &str,
    status: Status,
    error: &Option<Failure>,
    containers: &Containers,
    reported_at: DateTime<Utc>,
) {
    let previous = view.nodes.get(node);
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
        updated_at: reported_at,
    };
    view.nodes.insert(node.to_owned(), reported);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Metadata;
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

    fn fold(events: &[DeploymentEvent]) -> Option<DeploymentView> {
        events.iter().fold(None, |view, e| apply(view, &envelope(e), e))
    }

    #[test]
    fn a_launch_is_pending_with_a_reason_then_rolls_up_the_nodes() {
        let launched = DeploymentEvent::Launched {
            application: "sample".into(),
            version: "1.0.0".into(),
            image: "127.0.0.1:5000/sample/app:1.0.0".into(),
            nodes: vec!["edge-1".into(), "edge-2".into()],
            mode: Default::default(),
            selector: None,
            profile: None,
            overrides: Default::default(),
            env: Default::default(),
            services: Default::default(),
            rollout: Default::default(),
            secrets: Default::default(),
        };
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
        let launched = DeploymentEvent::Launched {
            application: "sample".into(),
            version: "1.0.0".into(),
            image: "x:1".into(),
            nodes: vec!["edge-1".into()],
            mode: Default::default(),
            selector: None,
            profile: None,
            overrides: Default::default(),
            env: Default::default(),
            services: Default::default(),
            rollout: Default::default(),
            secrets: Default::default(),
        };
        let reported = |version: &str, status: Status| DeploymentNodeEvent::StateReported {
            version: version.into(),
            status,
            error: None,
            containers: Default::default(),
            reported_at: now(),
            requests: 1,
        };
        let pair = |view: Option<DeploymentView>, event: &DeploymentNodeEvent| {
            let meta = crate::envelope::Metadata {
                tenant: "acme".into(),
                actor: "node:edge-1".into(),
                correlation_id: Uuid::from_u128(7),
                causation_id: Uuid::from_u128(7),
            };
            let envelope = Envelope::new(Uuid::from_u128(2), now(), "deployment_node", "d1.edge-1", &meta, event, None);
            apply_node(view, &envelope, "edge-1", event)
        };
        let view = pair(fold(std::slice::from_ref(&launched)), &reported("1.0.0", Status::Running)).unwrap();
        assert_eq!((view.status, view.nodes["edge-1"].status), (Status::Running, Status::Running));
        // Said of a version the node was not sent: the view stays as the launch left it.
        let view = pair(fold(std::slice::from_ref(&launched)), &reported("0.9.0", Status::Running)).unwrap();
        assert_eq!(view.status, Status::PendingDeploy);
        assert_eq!(view, fold(&[launched]).unwrap());
        // Of a node that is not a target, or before the launch: nothing.
        assert_eq!(pair(None, &reported("1.0.0", Status::Running)), None);
    }
}
