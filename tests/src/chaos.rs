//! What the chaos test and the chaos bench share: a seeded dice, and where the engine's view of
//! a deployment and a simulated node's truth differ.

use edge_node::runtime::DEPLOYMENT_LABEL;
use edge_node::sim::SimRuntime;
use events::deployment::Desired;
use events::projection::deployments::DeploymentView;
use events::Status;

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
