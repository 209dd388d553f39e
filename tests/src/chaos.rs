//! What the chaos test and the chaos bench share: a seeded dice, a simulated node behind a link
//! of its own, and where the engine's view of a deployment and a simulated node's truth differ.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use edge_node::runtime::DEPLOYMENT_LABEL;
use edge_node::sim::SimRuntime;
use edge_node::NodeConfig;
use events::deployment::Desired;
use events::projection::deployments::DeploymentView;
use events::Status;

use crate::{Link, NatsServer};

/// A small deterministic generator, so that a failing run can be replayed from its seed.
#[derive(Debug, Clone)]
pub struct Dice(pub u64);

impl Dice {
    pub fn roll(&mut self, sides: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % sides.max(1) as u64) as usize
    }
}

/// Whether the engine's view of a deployment says what node `node` runs of it: `running` when
/// its container runs the view's image, `stopped` when nothing of it runs (a version updated
/// while stopped has no container yet). A status in flight says what was asked, not what runs:
/// then the containers the node last reported, kept beside it, must say rightly whether its
/// container runs.
pub fn says_the_truth(view: &DeploymentView, node: &str, runtime: &SimRuntime) -> bool {
    let Some(entry) = view.nodes.get(node) else { return false };
    let truth =
        runtime.containers().into_iter().find(|c| c.labels.get(DEPLOYMENT_LABEL).map(String::as_str) == Some(&view.id));
    match (&truth, entry.status) {
        (Some(c), Status::Running) => c.running && c.image == view.image,
        (Some(c), Status::Stopped) => !c.running,
        (None, Status::Stopped) => true,
        (_, status) if status.in_flight() => {
            let said_running = |name: &str| entry.containers.get(name).is_some_and(|c| c.status == Status::Running);
            match &truth {
                Some(c) => said_running(&c.name) == c.running,
                None => !entry.containers.values().any(|c| c.status == Status::Running),
            }
        }
        _ => false,
    }
}

/// Where the engine's view of a deployment and node `node`'s truth differ, if they do: the
/// deployment must be settled on the node, as wanted, and say what runs there.
pub fn disagreement(view: &DeploymentView, node: &str, runtime: &SimRuntime) -> Option<String> {
    let said = view.nodes.get(node).map(|n| n.status);
    let truth =
        runtime.containers().into_iter().find(|c| c.labels.get(DEPLOYMENT_LABEL).map(String::as_str) == Some(&view.id));
    let agrees = says_the_truth(view, node, runtime);
    let wanted = match view.desired {
        Desired::Running => Status::Running,
        Desired::Stopped => Status::Stopped,
        Desired::Removed => Status::Removed,
    };
    (!agrees || said != Some(wanted)).then(|| {
        format!(
            "{} on {node}: engine says {said:?} ({:?}), wants {wanted} of {}, node has {truth:?}",
            view.id,
            view.nodes.get(node),
            view.image
        )
    })
}

/// A simulated node behind a link of its own, which a chaos run cuts and heals, and kills and
/// starts again on its local state (its containers live on in the runtime, as Docker's do).
#[derive(Debug)]
pub struct ChaosNode {
    pub name: String,
    pub config: NodeConfig,
    pub link: Link,
    pub runtime: SimRuntime,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
    _data: tempfile::TempDir,
}

impl ChaosNode {
    /// Node `name` on `nats`, with its `credentials` and the engine's `ca`, beating every
    /// `heartbeat` and looking at its containers every `reconcile`; labelled `site=chaos`.
    pub async fn start(
        nats: &NatsServer,
        name: &str,
        credentials: bus::Credentials,
        ca: PathBuf,
        heartbeat: Duration,
        reconcile: Duration,
    ) -> ChaosNode {
        let link = Link::to(&format!("127.0.0.1:{}", nats.port())).await;
        let runtime = SimRuntime::new(Duration::from_millis(5));
        let data = tempfile::tempdir().expect("a temporary directory");
        let config = NodeConfig {
            credentials: Some(credentials),
            ca: Some(ca),
            nats_url: link.url(),
            node: name.to_owned(),
            labels: [("site".to_owned(), "chaos".to_owned())].into(),
            data_dir: data.path().join("node"),
            heartbeat,
            reconcile,
            ..NodeConfig::default()
        };
        let task = run(config.clone(), &runtime);
        ChaosNode { name: name.to_owned(), config, link, runtime, task, _data: data }
    }

    /// Killed (its containers live on in the runtime) and started again on its local state.
    pub async fn restart(&mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
        self.task = run(self.config.clone(), &self.runtime);
    }
}

/// Runs a node; a restart in this process may find the killed one's sled directory not let go
/// yet (a killed process lets go at once), so opening it is tried again.
fn run(config: NodeConfig, runtime: &SimRuntime) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    let runtime = Arc::new(runtime.clone());
    tokio::spawn(async move {
        loop {
            match edge_node::driver::run(config.clone(), runtime.clone()).await {
                Err(e) if format!("{e:#}").contains("opening") => tokio::time::sleep(Duration::from_millis(50)).await,
                ended => return ended,
            }
        }
    })
}
