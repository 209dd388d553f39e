//! Status of a deployment on a node, and what a failure says.

use serde::{Deserialize, Serialize};

/// Where a deployment stands on one node. `PendingDeploy` is the server's word until the node
/// has said anything; the others are the node's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    PendingDeploy,
    Received,
    Downloading,
    Deploying,
    Starting,
    Running,
    Failed,
}

impl Status {
    /// Higher is more severe: a failure outranks everything, then the least progressed step.
    pub fn severity(self) -> u8 {
        match self {
            Status::Running => 0,
            Status::Starting => 1,
            Status::Deploying => 2,
            Status::Downloading => 3,
            Status::Received => 4,
            Status::PendingDeploy => 5,
            Status::Failed => 6,
        }
    }

    /// The status of a whole made of parts: the most severe one.
    pub fn roll_up(parts: impl IntoIterator<Item = Status>) -> Option<Status> {
        parts.into_iter().max_by_key(|s| s.severity())
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::PendingDeploy => "pending_deploy",
            Status::Received => "received",
            Status::Downloading => "downloading",
            Status::Deploying => "deploying",
            Status::Starting => "starting",
            Status::Running => "running",
            Status::Failed => "failed",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// Why something failed: a stable code for programs, a message for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    pub code: String,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_most_severe_status_wins_the_roll_up() {
        assert_eq!(Status::roll_up([Status::Running, Status::Starting]), Some(Status::Starting));
        assert_eq!(Status::roll_up([Status::Running, Status::Failed, Status::Received]), Some(Status::Failed));
        assert_eq!(Status::roll_up([Status::Running, Status::PendingDeploy]), Some(Status::PendingDeploy));
        assert_eq!(Status::roll_up([]), None);
    }
}
