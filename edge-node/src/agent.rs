//! The agent's decisions, as a state machine without I/O: it takes [`Input`]s (work from the
//! engine, outcomes from the runtime) and hands out [`Action`]s (reports to send, runtime steps
//! to take). Only the driver touches NATS, Docker and sled.

use std::collections::{BTreeMap, VecDeque};

use events::deployment::Desired;
#[cfg(test)]
use events::deployment::Mode;
use events::report::NodeReport;
use events::work::NodeWork;
use events::{Failure, Status};

use crate::runtime::{ContainerSpec, ContainerState, ErrorCode, Observed, ObservedContainer, RuntimeError};
use crate::runtime::{APPLICATION_LABEL, DEPLOYMENT_LABEL, NODE_LABEL, TENANT_LABEL, VERSION_LABEL};

/// What the node runs for one deployment: what it should be doing, and what is true of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    pub deployment: String,
    /// The node it runs on: part of its container's name.
    pub node: String,
    pub application: String,
    pub version: String,
    pub image: String,
    /// The container's environment.
    pub env: std::collections::BTreeMap<String, String>,
    pub status: Status,
    pub desired: Desired,
    /// Staged and not applied: once downloaded it waits (`ready`).
    pub hold: bool,
    pub pulled: bool,
    pub container: Option<String>,
    /// The ID of the image the container runs, once known.
    pub image_id: Option<String>,
    pub running: bool,
    /// A forced update is under way: pull the same tag again, then compare image IDs.
    pub refreshing: bool,
    /// The previous version's container during an update: it runs until the new image is
    /// present, then goes.
    pub old: Option<String>,
    /// `container` is still the previous version's: a staged update waits for its apply, and
    /// until then stop and start act on what runs.
    pub stale: bool,
    /// A runtime step is under way; the next waits for its outcome.
    busy: bool,
    /// The last step failed; nothing more is tried until new work arrives.
    failed: bool,
}

impl Workload {
    /// The container's id once created, its name before.
    fn container_ref(&self) -> String {
        self.container.clone().unwrap_or_else(|| container_name(&self.application, &self.deployment, &self.node))
    }
}

/// What a restarted node must look for of a deployment, given the work it received: its
/// container's name and the image it should now run.
pub fn recovery_target(works: &[NodeWork], node: &str) -> Option<(String, String)> {
    let Some(NodeWork::Deploy { deployment, application, image, .. }) = works.first() else { return None };
    let image = works
        .iter()
        .rev()
        .find_map(|w| match w {
            NodeWork::Update { image, .. } => Some(image),
            _ => None,
        })
        .unwrap_or(image);
    Some((container_name(application, deployment, node), image.clone()))
}

/// The name of a deployment's container: the same on every start, so it can be found again,
/// and distinct per node, so that nodes sharing one engine never take each other's.
pub fn container_name(application: &str, deployment: &str, node: &str) -> String {
    format!("{application}-{deployment}-{node}")
}

#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    Work(NodeWork),
    /// A deployment taken up again after a restart: every piece of work it received, in
    /// order, and what the runtime has of it.
    Recovered {
        works: Vec<NodeWork>,
        observed: Observed,
    },
    /// Outcomes say what they were about, so that one arriving after an update is not
    /// credited to the new version.
    Pulled {
        deployment: String,
        image: String,
        result: Result<(), RuntimeError>,
    },
    Created {
        deployment: String,
        image: String,
        result: Result<String, RuntimeError>,
    },
    Started {
        deployment: String,
        container: String,
        result: Result<ContainerState, RuntimeError>,
    },
    Stopped {
        deployment: String,
        result: Result<(), RuntimeError>,
    },
    Removed {
        deployment: String,
        result: Result<(), RuntimeError>,
    },
    Retired {
        deployment: String,
        result: Result<(), RuntimeError>,
    },
    /// The tag was pulled again: the ID of the image it now names.
    Refreshed {
        deployment: String,
        result: Result<Option<String>, RuntimeError>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Report(NodeReport),
    Pull {
        deployment: String,
        image: String,
    },
    Create {
        deployment: String,
        spec: ContainerSpec,
    },
    Start {
        deployment: String,
        container: String,
    },
    Stop {
        deployment: String,
        container: String,
    },
    Remove {
        deployment: String,
        container: String,
        image: String,
    },
    /// Remove the previous version's container, keeping its image.
    Retire {
        deployment: String,
        container: String,
    },
    /// Pull the tag again and say which image it names now.
    Refresh {
        deployment: String,
        image: String,
    },
}

#[derive(Debug)]
pub struct Agent {
    node: String,
    tenant: String,
    workloads: BTreeMap<String, Workload>,
    actions: VecDeque<Action>,
}

impl Agent {
    pub fn new(tenant: &str, node: &str) -> Agent {
        Agent { node: node.to_owned(), tenant: tenant.to_owned(), workloads: BTreeMap::new(), actions: VecDeque::new() }
    }

    pub fn workloads(&self) -> impl Iterator<Item = &Workload> {
        self.workloads.values()
    }

    /// The containers of a deployment, by name and reference, for reading their logs.
    pub fn containers(&self, deployment: &str) -> Option<Vec<(String, String)>> {
        let w = self.workloads.get(deployment)?;
        Some(vec![(container_name(&w.application, &w.deployment, &w.node), w.container_ref())])
    }

    /// The containers that exist, for telemetry.
    pub fn watched(&self) -> Vec<crate::telemetry::Watched> {
        self.workloads
            .values()
            .filter_map(|w| {
                Some(crate::telemetry::Watched {
                    deployment: w.deployment.clone(),
                    name: container_name(&w.application, &w.deployment, &w.node),
                    reference: w.container.clone()?,
                })
            })
            .collect()
    }

    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    pub fn handle(&mut self, input: Input) {
        let deployment = match input {
            Input::Work(work) => {
                let announce = match &work {
                    NodeWork::Deploy { mode, .. } | NodeWork::Update { mode, .. } => Some(mode.staged),
                    _ => None,
                };
                let target = work.deployment().to_owned();
                // Work delivered again changes nothing, but the engine hears where it stands.
                let Some(deployment) = self.record(work) else {
                    return self.repeat_status(&target);
                };
                if let Some(staged) = announce {
                    self.report(&deployment, Status::Received, None);
                    if staged {
                        self.report(&deployment, Status::Processing, None);
                    }
                }
                deployment
            }
            Input::Recovered { works, observed } => {
                let Some(deployment) = works.first().map(|w| w.deployment().to_owned()) else { return };
                for work in works {
                    self.record(work);
                }
                let Some(w) = self.workloads.get_mut(&deployment) else { return };
                // The container of what is wanted now: its image, with every wanted variable.
                let wanted = |found: &ObservedContainer| {
                    found.image == w.image && w.env.iter().all(|(k, v)| found.env.contains(&format!("{k}={v}")))
                };
                match observed.container {
                    Some(found) if wanted(&found) => {
                        w.pulled = true;
                        w.running = found.running;
                        w.container = Some(found.id);
                        w.image_id = Some(found.image_id);
                    }
                    // The previous version's container, waiting for an apply: still the current one.
                    Some(found) if w.hold => {
                        w.running = found.running;
                        w.container = Some(found.id);
                        w.stale = true;
                    }
                    // The previous version's container: it runs on until the switch.
                    Some(found) => w.old = Some(found.id),
                    None => {}
                }
                w.pulled |= observed.image_present;
                deployment
            }
            Input::Pulled { deployment, image, result } => self.outcome(deployment, result, |w, ()| {
                // A pull of what it ran before an update proves nothing of the new image.
                w.pulled |= w.image == image;
            }),
            Input::Created { deployment, image, result } => self.outcome(deployment, result, |w, id| {
                w.running = false;
                if w.image == image {
                    w.container = Some(id);
                } else if w.old.is_none() {
                    // Created for the version before an update: it is the old one now.
                    w.old = Some(id);
                }
            }),
            Input::Started { deployment, container, result } => {
                let current =
                    self.workloads.get(&deployment).is_some_and(|w| w.container.as_deref() == Some(&container));
                let result = result.and_then(|state| match state.running {
                    true => Ok(state.image_id),
                    false => {
                        let mut message = format!("the container exited with code {}", state.exit_code.unwrap_or(-1));
                        if let Some(error) = state.error {
                            message.push_str(&format!(": {error}"));
                        }
                        Err(RuntimeError::new(ErrorCode::ContainerExited, message))
                    }
                });
                self.outcome(deployment, result, |w, image_id| {
                    // A start of the container an update retired since does not count.
                    if current {
                        w.running = true;
                        w.image_id = Some(image_id);
                    }
                })
            }
            Input::Stopped { deployment, result } => self.outcome(deployment, result, |w, ()| w.running = false),
            Input::Retired { deployment, result } => self.outcome(deployment, result, |w, ()| w.old = None),
            Input::Refreshed { deployment, result } => self.outcome(deployment, result, |w, image_id| {
                w.refreshing = false;
                // Only a container whose image changed is recreated.
                if image_id.is_some() && image_id != w.image_id && w.old.is_none() {
                    w.old = w.container.take();
                    w.running = false;
                }
            }),
            Input::Removed { deployment, result } => {
                let deployment = self.outcome(deployment, result, |w, ()| {
                    w.container = None;
                    w.running = false;
                });
                if self.workloads.get(&deployment).is_some_and(|w| !w.failed && w.desired == Desired::Removed) {
                    self.report(&deployment, Status::Removed, None);
                    self.workloads.remove(&deployment);
                }
                deployment
            }
        };
        self.converge(&deployment);
    }

    /// Records what a piece of work asks, without acting on it; `None` when it changes
    /// nothing (delivered again, or for a deployment this node does not hold).
    fn record(&mut self, work: NodeWork) -> Option<String> {
        match work {
            NodeWork::Deploy { deployment, application, version, image, mode, env } => {
                if let Some(w) = self.workloads.get_mut(&deployment) {
                    if w.desired != Desired::Removed {
                        return None;
                    }
                    // Sent away, then back (a selector that flapped): wanted again.
                    w.desired = Desired::Running;
                    w.hold = mode.waits_for_apply();
                    w.failed = false;
                    return Some(deployment);
                }
                let workload = Workload {
                    deployment: deployment.clone(),
                    node: self.node.clone(),
                    application,
                    version,
                    image,
                    env,
                    status: Status::PendingDeploy,
                    desired: Desired::Running,
                    hold: mode.waits_for_apply(),
                    pulled: false,
                    container: None,
                    image_id: None,
                    running: false,
                    refreshing: false,
                    old: None,
                    stale: false,
                    busy: false,
                    failed: false,
                };
                self.workloads.insert(deployment.clone(), workload);
                Some(deployment)
            }
            NodeWork::Update { deployment, version, image, mode, env } => {
                let w = self
                    .workloads
                    .get_mut(&deployment)
                    .filter(|w| w.image != image || w.env != env || w.version != version)?;
                w.env = env;
                w.version = version;
                w.image = image;
                w.hold = mode.waits_for_apply();
                w.pulled = false;
                if w.hold && w.old.is_none() {
                    // Staged: what runs stays the current container until the apply.
                    w.stale = w.container.is_some();
                } else {
                    // A container not yet retired from an earlier update goes first.
                    if w.old.is_none() {
                        w.old = w.container.take();
                    } else {
                        w.container = None;
                    }
                    w.running = false;
                    w.stale = false;
                }
                w.desired = Desired::Running;
                w.failed = false;
                w.status = Status::PendingDeploy;
                Some(deployment)
            }
            NodeWork::Apply { deployment } => {
                let w = self.workloads.get_mut(&deployment).filter(|w| w.hold)?;
                w.hold = false;
                if w.stale {
                    // Now the previous version's container makes way.
                    w.old = w.container.take();
                    w.running = false;
                    w.stale = false;
                }
                w.desired = Desired::Running;
                w.failed = false;
                Some(deployment)
            }
            NodeWork::Refresh { deployment } => {
                let w = self.workloads.get_mut(&deployment)?;
                w.refreshing = true;
                w.desired = Desired::Running;
                w.failed = false;
                w.status = Status::PendingDeploy;
                Some(deployment)
            }
            NodeWork::Stop { deployment } => self.want(deployment, Desired::Stopped),
            NodeWork::Start { deployment } => self.want(deployment, Desired::Running),
            NodeWork::Remove { deployment } => self.want(deployment, Desired::Removed),
        }
    }

    /// Records what the engine now wants of a deployment.
    fn want(&mut self, deployment: String, desired: Desired) -> Option<String> {
        let w = self.workloads.get_mut(&deployment)?;
        w.desired = desired;
        w.failed = false;
        Some(deployment)
    }

    /// Records the outcome of a runtime step: on success, what it made true.
    fn outcome<T>(
        &mut self,
        deployment: String,
        result: Result<T, RuntimeError>,
        success: impl FnOnce(&mut Workload, T),
    ) -> String {
        if let Some(w) = self.workloads.get_mut(&deployment) {
            w.busy = false;
            match result {
                Ok(value) => success(w, value),
                Err(e) => {
                    w.failed = true;
                    self.report(&deployment, Status::Failed, Some(e.failure()));
                }
            }
        }
        deployment
    }

    /// Takes the next step from what is true towards what is wanted, if none is under way.
    fn converge(&mut self, deployment: &str) {
        let Some(w) = self.workloads.get(deployment) else { return };
        if w.busy || w.failed {
            return;
        }
        let retire = |status| {
            let container = w.old.clone().unwrap_or_default();
            (status, Action::Retire { deployment: deployment.to_owned(), container })
        };
        let (status, action) = match w.desired {
            Desired::Running if !w.pulled => {
                (Status::Downloading, Action::Pull { deployment: deployment.to_owned(), image: w.image.clone() })
            }
            Desired::Running if w.refreshing => {
                (Status::Downloading, Action::Refresh { deployment: deployment.to_owned(), image: w.image.clone() })
            }
            // Waiting for an apply; a previous version that was stopped meanwhile runs again.
            Desired::Running if w.hold && w.stale && !w.running => {
                (Status::Starting, Action::Start { deployment: deployment.to_owned(), container: w.container_ref() })
            }
            Desired::Running if w.hold => return self.report(deployment, Status::Ready, None),
            // The new image is here: now the old container goes, and the new one comes.
            Desired::Running if w.old.is_some() => retire(Status::Deploying),
            Desired::Running if w.container.is_none() => {
                (Status::Deploying, Action::Create { deployment: deployment.to_owned(), spec: self.spec(w) })
            }
            Desired::Running if !w.running => {
                (Status::Starting, Action::Start { deployment: deployment.to_owned(), container: w.container_ref() })
            }
            Desired::Running => return self.report(deployment, Status::Running, None),
            Desired::Stopped | Desired::Removed if w.old.is_some() => {
                retire(if w.desired == Desired::Stopped { Status::Stopping } else { Status::Removing })
            }
            Desired::Stopped if w.running => {
                (Status::Stopping, Action::Stop { deployment: deployment.to_owned(), container: w.container_ref() })
            }
            Desired::Stopped => return self.report(deployment, Status::Stopped, None),
            Desired::Removed => (
                Status::Removing,
                Action::Remove {
                    deployment: deployment.to_owned(),
                    container: w.container_ref(),
                    image: w.image.clone(),
                },
            ),
        };
        self.report(deployment, status, None);
        if let Some(w) = self.workloads.get_mut(deployment) {
            w.busy = true;
        }
        self.actions.push_back(action);
    }

    fn spec(&self, w: &Workload) -> ContainerSpec {
        let labels = [
            (DEPLOYMENT_LABEL, w.deployment.as_str()),
            (NODE_LABEL, self.node.as_str()),
            (TENANT_LABEL, self.tenant.as_str()),
            (APPLICATION_LABEL, w.application.as_str()),
            (VERSION_LABEL, w.version.as_str()),
        ];
        ContainerSpec {
            name: container_name(&w.application, &w.deployment, &w.node),
            image: w.image.clone(),
            env: w.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    /// Says the current status again, for work that changed nothing but may be waiting for an
    /// answer.
    fn repeat_status(&mut self, deployment: &str) {
        if let Some(w) = self.workloads.get(deployment).filter(|w| !w.busy) {
            self.actions.push_back(Action::Report(NodeReport::DeploymentState {
                deployment: deployment.to_owned(),
                status: w.status,
                error: None,
            }));
        }
    }

    /// Reports a new status; saying the same thing twice says nothing.
    fn report(&mut self, deployment: &str, status: Status, error: Option<Failure>) {
        if let Some(w) = self.workloads.get_mut(deployment) {
            if w.status == status && error.is_none() {
                return;
            }
            w.status = status;
            self.actions.push_back(Action::Report(NodeReport::DeploymentState {
                deployment: deployment.to_owned(),
                status,
                error,
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IMAGE: &str = "127.0.0.1:5000/sample/app:1.0.0";

    fn deploy_work(mode: Mode) -> NodeWork {
        NodeWork::Deploy {
            deployment: "d1".into(),
            application: "sample".into(),
            version: "1.0.0".into(),
            image: "127.0.0.1:5000/sample/app:1.0.0".into(),
            mode,
            env: Default::default(),
        }
    }

    fn deploy() -> Input {
        Input::Work(deploy_work(Mode::default()))
    }

    fn drain(agent: &mut Agent) -> Vec<Action> {
        std::iter::from_fn(|| agent.poll_action()).collect()
    }

    fn reported(actions: &[Action]) -> Vec<Status> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Report(NodeReport::DeploymentState { status, .. }) => Some(*status),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_deploy_goes_through_every_step_to_running() {
        let mut agent = Agent::new("acme", "edge-1");
        agent.handle(deploy());
        let actions = drain(&mut agent);
        assert_eq!(reported(&actions), [Status::Received, Status::Downloading]);
        assert!(matches!(actions.last(), Some(Action::Pull { image, .. }) if image.ends_with("app:1.0.0")));

        agent.handle(Input::Pulled { deployment: "d1".into(), image: IMAGE.into(), result: Ok(()) });
        let actions = drain(&mut agent);
        assert_eq!(reported(&actions), [Status::Deploying]);
        let Some(Action::Create { spec, .. }) = actions.last() else { panic!("{actions:?}") };
        assert_eq!(spec.labels[DEPLOYMENT_LABEL], "d1");
        assert_eq!(spec.labels[NODE_LABEL], "edge-1");
        assert_eq!(spec.name, "sample-d1-edge-1");

        agent.handle(Input::Created { deployment: "d1".into(), image: IMAGE.into(), result: Ok("c1".into()) });
        let actions = drain(&mut agent);
        assert_eq!(reported(&actions), [Status::Starting]);
        assert_eq!(actions.last(), Some(&Action::Start { deployment: "d1".into(), container: "c1".into() }));

        let state = ContainerState { image_id: "sha256:one".into(), running: true, exit_code: None, error: None };
        agent.handle(Input::Started { deployment: "d1".into(), container: "c1".into(), result: Ok(state) });
        assert_eq!(reported(&drain(&mut agent)), [Status::Running]);
        assert_eq!(agent.workloads().next().map(|w| w.status), Some(Status::Running));
    }

    #[test]
    fn work_delivered_twice_is_handled_once() {
        let mut agent = Agent::new("acme", "edge-1");
        agent.handle(deploy());
        drain(&mut agent);
        agent.handle(deploy());
        assert_eq!(drain(&mut agent), []);
    }

    #[test]
    fn a_failed_pull_reports_failed_with_its_code() {
        let mut agent = Agent::new("acme", "edge-1");
        agent.handle(deploy());
        drain(&mut agent);
        let error = RuntimeError::new(ErrorCode::ImageNotFound, "manifest unknown");
        agent.handle(Input::Pulled { deployment: "d1".into(), image: IMAGE.into(), result: Err(error) });
        let actions = drain(&mut agent);
        let [Action::Report(NodeReport::DeploymentState { status, error: Some(failure), .. })] = actions.as_slice()
        else {
            panic!("{actions:?}")
        };
        assert_eq!(*status, Status::Failed);
        assert_eq!(failure.code, "image_not_found");
        assert_eq!(failure.message, "manifest unknown");
    }

    #[test]
    fn a_container_that_exits_at_once_is_a_failure() {
        let mut agent = Agent::new("acme", "edge-1");
        agent.handle(deploy());
        agent.handle(Input::Pulled { deployment: "d1".into(), image: IMAGE.into(), result: Ok(()) });
        agent.handle(Input::Created { deployment: "d1".into(), image: IMAGE.into(), result: Ok("c1".into()) });
        drain(&mut agent);
        let state = ContainerState { image_id: "sha256:one".into(), running: false, exit_code: Some(127), error: None };
        agent.handle(Input::Started { deployment: "d1".into(), container: "c1".into(), result: Ok(state) });
        let actions = drain(&mut agent);
        let [Action::Report(NodeReport::DeploymentState { error: Some(failure), .. })] = actions.as_slice() else {
            panic!("{actions:?}")
        };
        assert_eq!(failure.code, "container_exited");
        assert_eq!(failure.message, "the container exited with code 127");
    }

    fn work_for(kind: fn(String) -> NodeWork) -> Input {
        Input::Work(kind("d1".into()))
    }

    /// An agent with d1 running in container c1.
    fn running() -> Agent {
        let mut agent = Agent::new("acme", "edge-1");
        agent.handle(deploy());
        agent.handle(Input::Pulled { deployment: "d1".into(), image: IMAGE.into(), result: Ok(()) });
        agent.handle(Input::Created { deployment: "d1".into(), image: IMAGE.into(), result: Ok("c1".into()) });
        let state = ContainerState { image_id: "sha256:one".into(), running: true, exit_code: None, error: None };
        agent.handle(Input::Started { deployment: "d1".into(), container: "c1".into(), result: Ok(state) });
        drain(&mut agent);
        agent
    }

    #[test]
    fn stop_then_start_keeps_the_container() {
        let mut agent = running();
        agent.handle(work_for(|deployment| NodeWork::Stop { deployment }));
        let actions = drain(&mut agent);
        assert_eq!(reported(&actions), [Status::Stopping]);
        assert_eq!(actions.last(), Some(&Action::Stop { deployment: "d1".into(), container: "c1".into() }));
        agent.handle(Input::Stopped { deployment: "d1".into(), result: Ok(()) });
        assert_eq!(reported(&drain(&mut agent)), [Status::Stopped]);

        agent.handle(work_for(|deployment| NodeWork::Start { deployment }));
        let actions = drain(&mut agent);
        assert_eq!(reported(&actions), [Status::Starting]);
        assert_eq!(actions.last(), Some(&Action::Start { deployment: "d1".into(), container: "c1".into() }));
    }

    #[test]
    fn remove_takes_the_container_and_image_and_forgets_the_workload() {
        let mut agent = running();
        agent.handle(work_for(|deployment| NodeWork::Remove { deployment }));
        let actions = drain(&mut agent);
        assert_eq!(reported(&actions), [Status::Removing]);
        let expected = Action::Remove {
            deployment: "d1".into(),
            container: "c1".into(),
            image: "127.0.0.1:5000/sample/app:1.0.0".into(),
        };
        assert_eq!(actions.last(), Some(&expected));
        agent.handle(Input::Removed { deployment: "d1".into(), result: Ok(()) });
        assert_eq!(reported(&drain(&mut agent)), [Status::Removed]);
        assert_eq!(agent.workloads().count(), 0);
    }

    #[test]
    fn a_stop_during_the_pull_leaves_it_stopped_without_a_container() {
        let mut agent = Agent::new("acme", "edge-1");
        agent.handle(deploy());
        drain(&mut agent);
        agent.handle(work_for(|deployment| NodeWork::Stop { deployment }));
        assert_eq!(drain(&mut agent), [], "the pull is still under way");
        agent.handle(Input::Pulled { deployment: "d1".into(), image: IMAGE.into(), result: Ok(()) });
        assert_eq!(reported(&drain(&mut agent)), [Status::Stopped]);
        agent.handle(work_for(|deployment| NodeWork::Start { deployment }));
        let actions = drain(&mut agent);
        assert_eq!(reported(&actions), [Status::Deploying]);
        assert!(matches!(actions.last(), Some(Action::Create { .. })));
    }

    #[test]
    fn a_failed_workload_waits_for_new_work_and_can_still_be_removed() {
        let mut agent = Agent::new("acme", "edge-1");
        agent.handle(deploy());
        drain(&mut agent);
        let error = RuntimeError::new(ErrorCode::ImageNotFound, "manifest unknown");
        agent.handle(Input::Pulled { deployment: "d1".into(), image: IMAGE.into(), result: Err(error) });
        drain(&mut agent);
        agent.handle(work_for(|deployment| NodeWork::Remove { deployment }));
        let actions = drain(&mut agent);
        assert_eq!(reported(&actions), [Status::Removing]);
        assert!(matches!(actions.last(), Some(Action::Remove { container, .. }) if container == "sample-d1-edge-1"));
    }

    #[test]
    fn a_recovered_running_deployment_is_reported_running_without_a_pull() {
        let mut agent = Agent::new("acme", "edge-1");
        let observed = Observed { container: Some(found("c1", true, "1.0.0")), image_present: true };
        agent.handle(Input::Recovered { works: vec![deploy_work(Mode::default())], observed });
        assert_eq!(reported(&drain(&mut agent)), [Status::Running]);
        agent.handle(work_for(|deployment| NodeWork::Stop { deployment }));
        let actions = drain(&mut agent);
        assert_eq!(actions.last(), Some(&Action::Stop { deployment: "d1".into(), container: "c1".into() }));
    }

    #[test]
    fn a_recovered_deployment_whose_container_is_gone_is_created_again_without_a_pull() {
        let mut agent = Agent::new("acme", "edge-1");
        let observed = Observed { container: None, image_present: true };
        agent.handle(Input::Recovered { works: vec![deploy_work(Mode::default())], observed });
        let actions = drain(&mut agent);
        assert_eq!(reported(&actions), [Status::Deploying]);
        assert!(matches!(actions.last(), Some(Action::Create { .. })));
    }

    fn update_work(version: &str, mode: Mode) -> NodeWork {
        NodeWork::Update {
            deployment: "d1".into(),
            version: version.into(),
            image: format!("127.0.0.1:5000/sample/app:{version}"),
            mode,
            env: Default::default(),
        }
    }

    fn update_to(version: &str) -> Input {
        Input::Work(update_work(version, Mode::default()))
    }

    fn found(id: &str, running: bool, version: &str) -> ObservedContainer {
        ObservedContainer {
            id: id.into(),
            running,
            image: format!("127.0.0.1:5000/sample/app:{version}"),
            image_id: format!("sha256:{version}"),
            env: vec!["PATH=/bin".into()],
        }
    }

    const STAGED: Mode = Mode { staged: true, instantly_apply: false };

    #[test]
    fn a_staged_deploy_downloads_then_waits_for_an_apply() {
        let mut agent = Agent::new("acme", "edge-1");
        agent.handle(Input::Work(deploy_work(STAGED)));
        let actions = drain(&mut agent);
        assert_eq!(reported(&actions), [Status::Received, Status::Processing, Status::Downloading]);
        agent.handle(Input::Pulled { deployment: "d1".into(), image: IMAGE.into(), result: Ok(()) });
        let actions = drain(&mut agent);
        assert_eq!(reported(&actions), [Status::Ready]);
        assert_eq!(actions.len(), 1, "nothing is created before the apply: {actions:?}");
        agent.handle(work_for(|deployment| NodeWork::Apply { deployment }));
        let actions = drain(&mut agent);
        assert_eq!(reported(&actions), [Status::Deploying]);
        assert!(matches!(actions.last(), Some(Action::Create { .. })));
    }

    #[test]
    fn a_staged_update_keeps_the_old_container_running_until_the_apply() {
        let mut agent = running();
        agent.handle(Input::Work(update_work("1.1.0", STAGED)));
        agent.handle(Input::Pulled {
            deployment: "d1".into(),
            image: "127.0.0.1:5000/sample/app:1.1.0".into(),
            result: Ok(()),
        });
        let actions = drain(&mut agent);
        assert_eq!(reported(&actions).last(), Some(&Status::Ready));
        assert!(!actions.iter().any(|a| matches!(a, Action::Retire { .. })), "the old one runs on: {actions:?}");
        agent.handle(work_for(|deployment| NodeWork::Apply { deployment }));
        let actions = drain(&mut agent);
        assert_eq!(actions.last(), Some(&Action::Retire { deployment: "d1".into(), container: "c1".into() }));
    }

    #[test]
    fn a_stop_during_a_staged_update_stops_what_runs_and_a_start_brings_it_back() {
        let mut agent = running();
        agent.handle(Input::Work(update_work("1.1.0", STAGED)));
        let new_image = "127.0.0.1:5000/sample/app:1.1.0";
        agent.handle(Input::Pulled { deployment: "d1".into(), image: new_image.into(), result: Ok(()) });
        assert_eq!(reported(&drain(&mut agent)).last(), Some(&Status::Ready));

        agent.handle(work_for(|deployment| NodeWork::Stop { deployment }));
        let actions = drain(&mut agent);
        assert_eq!(actions.last(), Some(&Action::Stop { deployment: "d1".into(), container: "c1".into() }));
        agent.handle(Input::Stopped { deployment: "d1".into(), result: Ok(()) });
        assert_eq!(reported(&drain(&mut agent)), [Status::Stopped]);

        agent.handle(work_for(|deployment| NodeWork::Start { deployment }));
        let actions = drain(&mut agent);
        assert_eq!(actions.last(), Some(&Action::Start { deployment: "d1".into(), container: "c1".into() }));
        let state = ContainerState { image_id: "sha256:one".into(), running: true, exit_code: None, error: None };
        agent.handle(Input::Started { deployment: "d1".into(), container: "c1".into(), result: Ok(state) });
        assert_eq!(reported(&drain(&mut agent)), [Status::Ready], "still waiting for the apply");

        agent.handle(work_for(|deployment| NodeWork::Apply { deployment }));
        let actions = drain(&mut agent);
        assert_eq!(actions.last(), Some(&Action::Retire { deployment: "d1".into(), container: "c1".into() }));
    }

    #[test]
    fn an_apply_with_nothing_staged_only_says_where_it_stands() {
        let mut agent = running();
        agent.handle(work_for(|deployment| NodeWork::Apply { deployment }));
        assert_eq!(
            drain(&mut agent),
            [Action::Report(NodeReport::DeploymentState {
                deployment: "d1".into(),
                status: Status::Running,
                error: None,
            })]
        );
    }

    #[test]
    fn an_apply_after_a_stop_starts_it() {
        let mut agent = Agent::new("acme", "edge-1");
        agent.handle(Input::Work(deploy_work(STAGED)));
        agent.handle(Input::Pulled { deployment: "d1".into(), image: IMAGE.into(), result: Ok(()) });
        agent.handle(work_for(|deployment| NodeWork::Stop { deployment }));
        drain(&mut agent);
        agent.handle(work_for(|deployment| NodeWork::Apply { deployment }));
        assert!(matches!(drain(&mut agent).last(), Some(Action::Create { .. })));
    }

    #[test]
    fn a_pull_from_before_an_update_does_not_count_for_the_new_image() {
        let mut agent = Agent::new("acme", "edge-1");
        agent.handle(deploy());
        agent.handle(update_to("1.1.0"));
        drain(&mut agent);
        // The 1.0.0 pull that was under way ends now.
        agent.handle(Input::Pulled { deployment: "d1".into(), image: IMAGE.into(), result: Ok(()) });
        let actions = drain(&mut agent);
        assert!(matches!(actions.last(), Some(Action::Pull { image, .. }) if image.ends_with(":1.1.0")), "{actions:?}");
    }

    #[test]
    fn a_deploy_that_arrives_during_a_removal_keeps_the_workload() {
        let mut agent = running();
        agent.handle(work_for(|deployment| NodeWork::Remove { deployment }));
        agent.handle(Input::Work(deploy_work(Mode::default())));
        drain(&mut agent);
        agent.handle(Input::Removed { deployment: "d1".into(), result: Ok(()) });
        let actions = drain(&mut agent);
        assert!(!reported(&actions).contains(&Status::Removed), "{actions:?}");
        assert!(matches!(actions.last(), Some(Action::Create { .. })), "created again: {actions:?}");
        assert_eq!(agent.workloads().count(), 1);
    }

    #[test]
    fn recovery_folds_every_work_received_before_acting_once() {
        let mut agent = Agent::new("acme", "edge-1");
        let works = vec![
            deploy_work(Mode::default()),
            NodeWork::Stop { deployment: "d1".into() },
            NodeWork::Start { deployment: "d1".into() },
        ];
        let observed = Observed { container: Some(found("c1", true, "1.0.0")), image_present: true };
        agent.handle(Input::Recovered { works, observed });
        let actions = drain(&mut agent);
        assert_eq!(actions.len(), 1, "a running container is not stopped and started again: {actions:?}");
        assert_eq!(reported(&actions), [Status::Running]);
    }

    #[test]
    fn recovery_replaces_a_container_whose_environment_is_not_the_wanted_one() {
        let mut agent = Agent::new("acme", "edge-1");
        let NodeWork::Deploy { deployment, application, version, image, mode, .. } = deploy_work(Mode::default())
        else {
            unreachable!()
        };
        let env = [("MODE".to_owned(), "test".to_owned())].into();
        let works = vec![NodeWork::Deploy { deployment, application, version, image, mode, env }];
        // The container found was made before the environment changed.
        let observed = Observed { container: Some(found("c1", true, "1.0.0")), image_present: true };
        agent.handle(Input::Recovered { works, observed });
        let actions = drain(&mut agent);
        assert_eq!(actions.last(), Some(&Action::Retire { deployment: "d1".into(), container: "c1".into() }));
    }

    #[test]
    fn recovery_mid_update_sees_the_old_container_for_what_it_is() {
        let mut agent = Agent::new("acme", "edge-1");
        let works = vec![deploy_work(Mode::default()), update_work("1.1.0", Mode::default())];
        assert_eq!(recovery_target(&works, "edge-1").unwrap().1, "127.0.0.1:5000/sample/app:1.1.0");
        let observed = Observed { container: Some(found("c1", true, "1.0.0")), image_present: true };
        agent.handle(Input::Recovered { works, observed });
        let actions = drain(&mut agent);
        assert_eq!(actions.last(), Some(&Action::Retire { deployment: "d1".into(), container: "c1".into() }));
    }

    #[test]
    fn an_update_pulls_while_the_old_container_runs_then_switches() {
        let mut agent = running();
        agent.handle(update_to("1.1.0"));
        let actions = drain(&mut agent);
        assert_eq!(reported(&actions), [Status::Received, Status::Downloading]);
        assert!(matches!(actions.last(), Some(Action::Pull { image, .. }) if image.ends_with(":1.1.0")));
        assert!(
            !actions.iter().any(|a| matches!(a, Action::Retire { .. } | Action::Stop { .. })),
            "the old one runs on"
        );

        agent.handle(Input::Pulled {
            deployment: "d1".into(),
            image: "127.0.0.1:5000/sample/app:1.1.0".into(),
            result: Ok(()),
        });
        let actions = drain(&mut agent);
        assert_eq!(reported(&actions), [Status::Deploying]);
        assert_eq!(actions.last(), Some(&Action::Retire { deployment: "d1".into(), container: "c1".into() }));

        agent.handle(Input::Retired { deployment: "d1".into(), result: Ok(()) });
        let actions = drain(&mut agent);
        let Some(Action::Create { spec, .. }) = actions.last() else { panic!("{actions:?}") };
        assert_eq!(spec.image, "127.0.0.1:5000/sample/app:1.1.0");
        assert_eq!(spec.labels[VERSION_LABEL], "1.1.0");
    }

    #[test]
    fn an_update_whose_pull_fails_leaves_the_old_container_running() {
        let mut agent = running();
        agent.handle(update_to("9.9.9"));
        drain(&mut agent);
        let error = RuntimeError::new(ErrorCode::ImageNotFound, "manifest unknown");
        agent.handle(Input::Pulled {
            deployment: "d1".into(),
            image: "127.0.0.1:5000/sample/app:9.9.9".into(),
            result: Err(error),
        });
        let actions = drain(&mut agent);
        assert_eq!(reported(&actions), [Status::Failed]);
        assert!(!actions.iter().any(|a| matches!(a, Action::Retire { .. })));
        assert_eq!(agent.workloads().next().unwrap().old.as_deref(), Some("c1"));
    }

    #[test]
    fn an_update_delivered_twice_is_handled_once() {
        let mut agent = running();
        agent.handle(update_to("1.1.0"));
        drain(&mut agent);
        agent.handle(update_to("1.1.0"));
        assert_eq!(drain(&mut agent), []);
    }

    #[test]
    fn a_forced_update_recreates_the_container_only_when_the_image_changed() {
        let mut agent = running();
        let refresh = || work_for(|deployment| NodeWork::Refresh { deployment });
        agent.handle(refresh());
        let actions = drain(&mut agent);
        assert_eq!(reported(&actions), [Status::Downloading]);
        assert!(matches!(actions.last(), Some(Action::Refresh { image, .. }) if image.ends_with(":1.0.0")));
        // The same image: the container stays.
        agent.handle(Input::Refreshed { deployment: "d1".into(), result: Ok(Some("sha256:one".into())) });
        assert_eq!(reported(&drain(&mut agent)), [Status::Running]);

        agent.handle(refresh());
        drain(&mut agent);
        // Another image under the same tag: the container is replaced.
        agent.handle(Input::Refreshed { deployment: "d1".into(), result: Ok(Some("sha256:two".into())) });
        let actions = drain(&mut agent);
        assert_eq!(actions.last(), Some(&Action::Retire { deployment: "d1".into(), container: "c1".into() }));
    }

    #[test]
    fn outcomes_for_an_unknown_deployment_are_ignored() {
        let mut agent = Agent::new("acme", "edge-1");
        agent.handle(Input::Pulled { deployment: "nope".into(), image: IMAGE.into(), result: Ok(()) });
        agent.handle(Input::Created { deployment: "nope".into(), image: IMAGE.into(), result: Ok("c".into()) });
        assert_eq!(drain(&mut agent), []);
    }
}
