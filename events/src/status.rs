//! Status of a deployment on a node, and what a failure says.

use serde::{Deserialize, Serialize};

/// Where a deployment stands on one node. The `pending_*` statuses are the server's word
/// between a request and the node's first answer to it; the others are the node's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Status {
    PendingDeploy,
    PendingStart,
    PendingStop,
    PendingRemove,
    PendingApply,
    Received,
    Processing,
    Downloading,
    Ready,
    /// Downloaded and waiting for an apply, with no version of it running (Kelvin): a
    /// staged launch. A staged update waits at `ready` while the old version runs.
    Staged,
    Deploying,
    Starting,
    Running,
    Stopping,
    Stopped,
    Removing,
    Removed,
    Failed,
}

impl Status {
    /// Every status, in declaration order.
    pub const ALL: [Status; 18] = [
        Status::PendingDeploy,
        Status::PendingStart,
        Status::PendingStop,
        Status::PendingRemove,
        Status::PendingApply,
        Status::Received,
        Status::Processing,
        Status::Downloading,
        Status::Ready,
        Status::Staged,
        Status::Deploying,
        Status::Starting,
        Status::Running,
        Status::Stopping,
        Status::Stopped,
        Status::Removing,
        Status::Removed,
        Status::Failed,
    ];

    /// Higher is more severe: a failure outranks everything, then what the server still waits
    /// for, then the least progressed step; a settled state is the least severe.
    pub fn severity(self) -> u8 {
        match self {
            Status::Removed => 0,
            Status::Running => 1,
            Status::Stopped | Status::Ready | Status::Staged => 2,
            Status::Starting | Status::Stopping | Status::Removing => 3,
            Status::Deploying => 4,
            Status::Downloading => 5,
            Status::Received | Status::Processing => 6,
            Status::PendingDeploy
            | Status::PendingStart
            | Status::PendingStop
            | Status::PendingRemove
            | Status::PendingApply => 7,
            Status::Failed => 8,
        }
    }

    /// The status of a whole made of parts: the most severe one.
    pub fn roll_up(parts: impl IntoIterator<Item = Status>) -> Option<Status> {
        parts.into_iter().max_by_key(|s| s.severity())
    }

    /// Said by the server, never by a node.
    pub fn is_pending(self) -> bool {
        matches!(
            self,
            Status::PendingDeploy
                | Status::PendingStart
                | Status::PendingStop
                | Status::PendingRemove
                | Status::PendingApply
        )
    }

    /// Nothing is in flight: the node has reached where it was sent (`ready` waits for an
    /// apply), or failed.
    pub fn is_settled(self) -> bool {
        matches!(
            self,
            Status::Running | Status::Stopped | Status::Removed | Status::Ready | Status::Staged | Status::Failed
        )
    }

    /// Under way: the server waits for the node, or the node is in a step.
    pub fn in_flight(self) -> bool {
        !self.is_settled()
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::PendingDeploy => "pending_deploy",
            Status::PendingStart => "pending_start",
            Status::PendingStop => "pending_stop",
            Status::PendingRemove => "pending_remove",
            Status::PendingApply => "pending_apply",
            Status::Received => "received",
            Status::Processing => "processing",
            Status::Downloading => "downloading",
            Status::Ready => "ready",
            Status::Staged => "staged",
            Status::Deploying => "deploying",
            Status::Starting => "starting",
            Status::Running => "running",
            Status::Stopping => "stopping",
            Status::Stopped => "stopped",
            Status::Removing => "removing",
            Status::Removed => "removed",
            Status::Failed => "failed",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// Where one container of a deployment stands on a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ContainerStatus {
    pub status: Status,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Failure>,
}

/// The containers of a deployment on a node, by container name.
pub type Containers = std::collections::BTreeMap<String, ContainerStatus>;

/// Why something failed: a stable code for programs, a message for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Failure {
    pub code: String,
    pub message: String,
}

/// How long the engine lets an in-flight status stand before it records that the node is
/// overdue (`deployment_node.overdue`): the node has deadlines of its own for each step, and
/// these are the engine's, for a node that went quiet, lost the work or hangs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    /// For the node to take work it was sent (`pending_*`).
    pub pending: std::time::Duration,
    /// For a download (`downloading`).
    pub download: std::time::Duration,
    /// For any other step (`received`, `deploying`, `starting`, `stopping`, `removing`...).
    pub step: std::time::Duration,
}

impl Default for Deadlines {
    fn default() -> Deadlines {
        Deadlines {
            pending: std::time::Duration::from_secs(600),
            download: std::time::Duration::from_secs(1800),
            step: std::time::Duration::from_secs(600),
        }
    }
}

impl Deadlines {
    /// The deadline of `status`; none for a settled one.
    pub fn of(&self, status: Status) -> Option<std::time::Duration> {
        match status {
            _ if status.is_settled() => None,
            _ if status.is_pending() => Some(self.pending),
            Status::Downloading => Some(self.download),
            _ => Some(self.step),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_most_severe_status_wins_the_roll_up() {
        assert_eq!(Status::roll_up([Status::Running, Status::Starting]), Some(Status::Starting));
        assert_eq!(Status::roll_up([Status::Running, Status::Failed, Status::Received]), Some(Status::Failed));
        assert_eq!(Status::roll_up([Status::Running, Status::PendingDeploy]), Some(Status::PendingDeploy));
        assert_eq!(Status::roll_up([Status::Stopped, Status::Running]), Some(Status::Stopped));
        assert_eq!(Status::roll_up([Status::Removed, Status::Removed]), Some(Status::Removed));
        assert_eq!(Status::roll_up([Status::Removed, Status::PendingRemove]), Some(Status::PendingRemove));
        assert_eq!(Status::roll_up([]), None);
    }

    #[test]
    fn the_wire_names_are_the_display_names() {
        for status in Status::ALL {
            let json = format!("{:?}", status.as_str());
            let text = String::from_utf8(rmp_serde::to_vec(&status).unwrap()[1..].to_vec()).unwrap();
            assert_eq!(format!("{text:?}"), json, "{status:?}");
        }
    }
}
