//! Work addressed to one node, on `ev.<tenant>.node.<node>.desired`. The engine translates
//! deployment events into these; the node's durable consumer receives them.

use serde::{Deserialize, Serialize};

use crate::aggregate::event_payload;

/// The `aggregate_type` of work envelopes; the aggregate id is the node.
pub const AGGREGATE_TYPE: &str = "node_work";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeWork {
    /// Pull the image and run it for this deployment.
    Deploy { deployment: String, application: String, version: String, image: String },
}

event_payload!(NodeWork, "work", {
    Deploy => "deploy",
});

impl NodeWork {
    pub fn deployment(&self) -> &str {
        match self {
            NodeWork::Deploy { deployment, .. } => deployment,
        }
    }
}
