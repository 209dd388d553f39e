//! What a node says, on `ev.<tenant>.node.<node>.state`, published from its outbox. The
//! engine turns each report into a command on the node or deployment it concerns.

use serde::{Deserialize, Serialize};

use crate::aggregate::event_payload;
use crate::node::Labels;
use crate::status::{Containers, Failure, Status};

/// The `aggregate_type` of report envelopes; the aggregate id is the node.
pub const AGGREGATE_TYPE: &str = "node_report";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeReport {
    /// The node (re)started and is connected; registers it with these labels.
    Online { labels: Labels, agent_version: String },
    /// A deployment reached a new status on this node: the most severe of its containers'.
    DeploymentState {
        deployment: String,
        /// The version the node holds the deployment at; a report of an older one, arriving
        /// after the engine sent a newer one, answers nothing any more. Empty when unknown.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        version: String,
        status: Status,
        error: Option<Failure>,
        #[serde(default, skip_serializing_if = "Containers::is_empty")]
        containers: Containers,
    },
    /// A container was changed behind the node's back (`removed`, `stopped`, `started`,
    /// `replaced`); the node is putting it back.
    Drift { deployment: String, container: String, drift: String },
    /// A staged deployment was applied on the node itself, with or without a link.
    AppliedLocally { deployment: String },
    /// The message at stream sequence `sequence` of the node's work subject is not work for
    /// it (`crate::fit`): the node set it aside and went on.
    WorkSetAside { sequence: u64, reason: String },
}

event_payload!(NodeReport, "report", {
    Online => "online",
    DeploymentState => "deployment_state",
    Drift => "drift",
    AppliedLocally => "applied_locally",
    WorkSetAside => "work_set_aside",
});
