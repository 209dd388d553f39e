//! A deployment's history: every status it went through, on every node, in order, as the log
//! tells it (the deployment's events and its nodes' reports on their pairs' subjects), not as
//! the read model last folded it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::deployment::DeploymentEvent;
use crate::deployment_node::DeploymentNodeEvent;
use crate::envelope::Envelope;
use crate::projection::Fact;
use crate::status::{Containers, Failure, Status};

/// One step of a deployment's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HistoryEntry {
    pub sequence: u64,
    pub time: DateTime<Utc>,
    pub actor: String,
    pub node: Option<String>,
    /// The status the event brought; none for an event that changes no status.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub status: Option<Status>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<Failure>,
    /// What happened, for an event that changes no status (drift, a local apply).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub note: Option<String>,
    /// Each container's status, when the node reported them.
    #[serde(skip_serializing_if = "Containers::is_empty", default)]
    pub containers: Containers,
    /// The version the step is about: launched, updated to, rolled back to, or reported.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub version: Option<String>,
}

/// The step the event at `sequence` is in its deployment's history; none for an event of
/// another kind, or one that repeats a step (`nodes_settled` passes on what the nodes' pairs
/// hold already).
pub fn entry(sequence: u64, envelope: &Envelope, fact: Fact) -> Option<HistoryEntry> {
    use Status as S;
    let mut entry = HistoryEntry {
        sequence,
        time: envelope.time,
        actor: envelope.actor.clone(),
        node: None,
        status: None,
        error: None,
        note: None,
        containers: Containers::new(),
        version: None,
    };
    let event = match fact {
        Fact::DeploymentNode { node, event, .. } => {
            match event {
                DeploymentNodeEvent::StateReported { status, error, containers, version, .. } => {
                    (entry.node, entry.status, entry.error, entry.containers) =
                        (Some(node), Some(status), error, containers);
                    entry.version = Some(version).filter(|v| !v.is_empty());
                }
                DeploymentNodeEvent::Overdue { status, waited_ms, .. } => {
                    let waited = waited_ms / 1000;
                    let note = format!("overdue: {} for {waited} s, past its deadline", status.as_str());
                    (entry.node, entry.note) = (Some(node), Some(note));
                }
            }
            return Some(entry);
        }
        Fact::Deployment(event) => event,
        _ => return None,
    };
    match event {
        DeploymentEvent::Launched { version, .. } => {
            (entry.status, entry.version) = (Some(S::PendingDeploy), Some(version))
        }
        DeploymentEvent::StopRequested { .. } => entry.status = Some(S::PendingStop),
        DeploymentEvent::StartRequested { .. } => entry.status = Some(S::PendingStart),
        DeploymentEvent::UninstallRequested { .. } => entry.status = Some(S::PendingRemove),
        DeploymentEvent::UpdateRequested { version, .. } => {
            (entry.status, entry.version) = (Some(S::PendingDeploy), Some(version))
        }
        DeploymentEvent::ApplyRequested { .. } => entry.status = Some(S::PendingApply),
        DeploymentEvent::ForceUpdateRequested { .. } => entry.status = Some(S::PendingDeploy),
        DeploymentEvent::TargetAdded { node, .. } => (entry.node, entry.status) = (Some(node), Some(S::PendingDeploy)),
        DeploymentEvent::TargetRemoved { node, .. } => {
            (entry.node, entry.status) = (Some(node), Some(S::PendingRemove))
        }
        // A log written before each pair had an aggregate of its own.
        DeploymentEvent::NodeStateReported { node, status, error, containers, .. } => {
            (entry.node, entry.status, entry.error, entry.containers) = (Some(node), Some(status), error, containers);
        }
        DeploymentEvent::NodesSettled { .. } => return None,
        DeploymentEvent::DriftDetected { node, container, drift, .. } => {
            (entry.node, entry.note) = (Some(node), Some(format!("drift: {container} {drift}")));
        }
        DeploymentEvent::AppliedLocally { node, .. } => {
            (entry.node, entry.note) = (Some(node), Some("applied on the node".to_owned()));
        }
        DeploymentEvent::WaveReleased { nodes } => entry.note = Some(format!("rollout reaches {}", nodes.join(", "))),
        DeploymentEvent::RolloutHalted { reason } => entry.note = Some(format!("rollout halted: {reason}")),
        DeploymentEvent::NodeRevoked { node } => {
            (entry.node, entry.note) = (Some(node), Some("the node's credential was revoked".to_owned()))
        }
        DeploymentEvent::RolledBack { version, reason, .. } => {
            entry.status = Some(S::PendingDeploy);
            entry.note = Some(format!("rolled back to {version}: {reason}"));
            entry.version = Some(version);
        }
    }
    Some(entry)
}
