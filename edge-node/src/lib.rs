//! The edge agent. It consumes the work addressed to its node, runs it on the container
//! runtime, and reports every step back through a durable outbox.
//!
//! The decisions live in [`agent`], a state machine with no I/O; the [`driver`] does the I/O;
//! [`docker`] is the only module that talks to Docker. It deliberately knows nothing of the
//! engine's read models or API: all it shares with the engine is the `events` vocabulary.
//!
//! It reads its work, its own database and Docker's answers, any of which may be corrupt: no
//! arithmetic that can overflow, no indexing that can panic, no slicing of a string off a
//! character boundary.

#![cfg_attr(not(test), deny(clippy::arithmetic_side_effects, clippy::indexing_slicing, clippy::string_slice))]

pub mod agent;
pub mod desired;
pub mod docker;
pub mod driver;
pub mod install;
pub mod local;
pub mod metrics;
pub mod outbox;
pub mod runtime;
pub mod sim;
pub mod telemetry;

use std::path::PathBuf;

use events::node::Labels;

#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// One server, or a cluster's members separated by commas.
    pub nats_url: String,
    /// The node's credentials (`engine node enroll`): its connection, and the key that signs
    /// its reports. The servers refuse a node without them.
    pub credentials: Option<bus::Credentials>,
    /// The certificate authority of the servers' certificates: the connection is TLS.
    pub ca: Option<PathBuf>,
    pub tenant: String,
    pub node: String,
    pub labels: Labels,
    /// The sled directory of the outbox and the local state.
    pub data_dir: PathBuf,
    pub stream: String,
    /// How often the node sends a heartbeat with its containers' telemetry.
    pub heartbeat: std::time::Duration,
    /// How often the node looks at its containers for drift and at its steps for deadlines.
    pub reconcile: std::time::Duration,
    pub deadlines: agent::Deadlines,
    /// What this host lets a workload use: host paths to bind-mount, registries to pull from.
    pub policy: events::policy::Policy,
    /// Each container's limits where its version sets none.
    pub default_limits: events::compose::Limits,
    /// Where the node serves its figures, and the token a scrape presents; none: nowhere.
    pub metrics: Option<metrics::MetricsListen>,
}

impl NodeConfig {
    /// How this node reaches NATS: its credentials (which also name the inbox it may receive
    /// on) and TLS.
    pub fn connection(&self) -> bus::Connection {
        bus::Connection {
            servers: self.nats_url.clone(),
            credentials: self.credentials.clone(),
            ca: self.ca.clone(),
            name: format!("edge-node {}/{}", self.tenant, self.node),
            inbox_prefix: None,
        }
    }
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            nats_url: "tls://127.0.0.1:4222".to_owned(),
            credentials: None,
            ca: None,
            tenant: "default".to_owned(),
            node: "edge-1".to_owned(),
            labels: Labels::new(),
            data_dir: PathBuf::from("edge-node-data"),
            stream: events::subject::STREAM.to_owned(),
            heartbeat: std::time::Duration::from_secs(5),
            reconcile: std::time::Duration::from_secs(5),
            deadlines: agent::Deadlines::default(),
            policy: events::policy::Policy::default(),
            default_limits: events::compose::Limits::default(),
            metrics: None,
        }
    }
}
