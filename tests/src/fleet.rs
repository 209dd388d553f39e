//! Simulated nodes in this process, as many as a test or a benchmark needs: each enrolled with
//! a credential of its own, on a TLS connection of its own, with its own durable consumer,
//! outbox and work log (sled databases on tmpfs, of 100 nodes each), on the in-memory runtime.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use edge_node::driver::{self, Attachment};
use edge_node::sim::SimRuntime;
use edge_node::NodeConfig;
use events::node::Labels;

/// Nodes per shared sled database: sled grows out of proportion with thousands of trees in one.
const NODES_PER_DATABASE: usize = 100;

/// One node of a [`SimFleet`].
#[derive(Debug)]
pub struct SimMember {
    pub name: String,
    /// What the node really runs.
    pub runtime: SimRuntime,
    task: tokio::task::JoinHandle<()>,
}

/// Simulated nodes, each running until the fleet is dropped.
#[derive(Debug)]
pub struct SimFleet {
    pub nodes: Vec<SimMember>,
    /// Their state on tmpfs, removed with the fleet; `None` when the caller keeps it.
    _data: Option<tempfile::TempDir>,
}

impl SimFleet {
    /// Connects each of `enrolled` (a node's name and credentials) to `nats_url` (one server or
    /// a cluster's members), trusting `ca`, labelled `labels`. Their consumers must exist (the
    /// engine makes them as it enrolls); the nodes are not waited for.
    pub async fn start(
        nats_url: &str,
        ca: &Path,
        enrolled: Vec<(String, bus::Credentials)>,
        labels: &Labels,
    ) -> SimFleet {
        let data = tmpfs_dir();
        let mut fleet = SimFleet::start_in(data.path(), nats_url, ca, enrolled, labels).await;
        fleet._data = Some(data);
        fleet
    }

    /// The same, the nodes' state under `data`, which the caller removes: a process of
    /// simulated nodes is killed, and only its parent can clean up after it.
    pub async fn start_in(
        data: &Path,
        nats_url: &str,
        ca: &Path,
        enrolled: Vec<(String, bus::Credentials)>,
        labels: &Labels,
    ) -> SimFleet {
        let mut nodes = Vec::with_capacity(enrolled.len());
        let mut db = None;
        for (i, (name, credentials)) in enrolled.into_iter().enumerate() {
            if i % NODES_PER_DATABASE == 0 {
                let path = data.join(format!("db-{}", i / NODES_PER_DATABASE));
                db = Some(sled::Config::new().path(path).flush_every_ms(None).open().expect("a sled of the fleet"));
            }
            let config = NodeConfig {
                nats_url: nats_url.to_owned(),
                credentials: Some(credentials),
                ca: Some(ca.to_owned()),
                node: name.clone(),
                labels: labels.clone(),
                data_dir: data.join(&name),
                heartbeat: Duration::from_secs(3600),
                reconcile: Duration::from_secs(3600),
                ..NodeConfig::default()
            };
            let (client, links) = driver::connect(&config).await.expect("the node connects");
            let js = config.connection().jetstream(client);
            let attachment =
                Attachment { js, links, db: db.clone().expect("a database"), trees: format!("{name}/"), control: None };
            let runtime = SimRuntime::new(Duration::ZERO);
            let (node, run) = (name.clone(), Arc::new(runtime.clone()));
            let task = tokio::spawn(async move {
                if let Err(e) = driver::run_on(config, run, attachment).await {
                    tracing::error!(node, error = format!("{e:#}"), "a simulated node stopped");
                }
            });
            nodes.push(SimMember { name, runtime, task });
        }
        SimFleet { nodes, _data: None }
    }
}

/// A directory on tmpfs for a fleet's state, removed when dropped.
pub fn tmpfs_dir() -> tempfile::TempDir {
    tempfile::tempdir_in("/dev/shm").expect("a directory on tmpfs")
}

impl Drop for SimFleet {
    fn drop(&mut self) {
        for node in &self.nodes {
            node.task.abort();
        }
    }
}
