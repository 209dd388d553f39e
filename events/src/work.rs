//! Work addressed to one node, on `ev.<tenant>.node.<node>.desired`. The engine translates
//! deployment events into these; the node's durable consumer receives them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::aggregate::event_payload;
use crate::compose::Service;
use crate::deployment::Mode;

/// The `aggregate_type` of work envelopes; the aggregate id is the node.
pub const AGGREGATE_TYPE: &str = "node_work";

/// How many pieces of a node's work its consumer lets wait for an ack at once, and how many
/// one pull of the node asks for: a node that was cut off takes what it missed in a few round
/// trips.
pub const IN_FLIGHT: usize = 512;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeWork {
    /// Pull the image and run it for this deployment.
    Deploy {
        deployment: String,
        application: String,
        version: String,
        image: String,
        #[serde(default)]
        mode: Mode,
        /// The container's environment; a compose version's parameter values.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        env: BTreeMap<String, String>,
        /// A compose version's services, resolved: one container each, on a network of
        /// their own. Empty for a single image.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        services: Vec<Service>,
        /// Environment values sealed for this node alone (`bus::seal`), by name: it opens them
        /// as it makes each container, and keeps them only sealed.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        secrets: BTreeMap<String, String>,
    },
    /// Stop the deployment's containers; keep them.
    Stop { deployment: String },
    /// Start the deployment's stopped containers.
    Start { deployment: String },
    /// Remove the deployment's containers, and its images if no other container uses them.
    Remove { deployment: String },
    /// Move the deployment to another version: pull it while the old one runs, then switch.
    Update {
        deployment: String,
        version: String,
        image: String,
        #[serde(default)]
        mode: Mode,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        env: BTreeMap<String, String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        services: Vec<Service>,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        secrets: BTreeMap<String, String>,
    },
    /// Go on with what was staged: switch to the downloaded version.
    Apply { deployment: String },
    /// Pull the same tags again; recreate the containers whose image changed.
    Refresh { deployment: String },
}

event_payload!(NodeWork, "work", {
    Deploy => "deploy",
    Stop => "stop",
    Start => "start",
    Remove => "remove",
    Update => "update",
    Apply => "apply",
    Refresh => "refresh",
});

/// The containers a version asks for: a compose version's services, or for a single image
/// one service without a name, with the whole environment.
pub fn containers(image: &str, env: &BTreeMap<String, String>, services: &[Service]) -> Vec<Service> {
    if !services.is_empty() {
        return services.to_vec();
    }
    vec![Service { image: image.to_owned(), environment: env.clone(), ..Service::default() }]
}

impl NodeWork {
    pub fn deployment(&self) -> &str {
        match self {
            NodeWork::Deploy { deployment, .. }
            | NodeWork::Stop { deployment }
            | NodeWork::Start { deployment }
            | NodeWork::Remove { deployment }
            | NodeWork::Update { deployment, .. }
            | NodeWork::Apply { deployment }
            | NodeWork::Refresh { deployment } => deployment,
        }
    }
}
