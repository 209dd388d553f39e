//! The agent's decisions, as a state machine without I/O: it takes [`Input`]s (work from the
//! engine, outcomes from the runtime) and hands out [`Action`]s (reports to send, runtime steps
//! to take). Only the driver touches NATS, Docker and sled.

use std::collections::{BTreeMap, VecDeque};

use events::report::NodeReport;
use events::work::NodeWork;
use events::{Failure, Status};

use crate::runtime::{ContainerSpec, ContainerState, ErrorCode, RuntimeError};
use crate::runtime::{APPLICATION_LABEL, DEPLOYMENT_LABEL, NODE_LABEL, TENANT_LABEL, VERSION_LABEL};

/// What the node runs for one deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    pub deployment: String,
    pub application: String,
    pub version: String,
    pub image: String,
    pub status: Status,
    pub container: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    Work(NodeWork),
    Pulled { deployment: String, result: Result<(), RuntimeError> },
    Created { deployment: String, result: Result<String, RuntimeError> },
    Started { deployment: String, result: Result<ContainerState, RuntimeError> },
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Report(NodeReport),
    Pull { deployment: String, image: String },
    Create { deployment: String, spec: ContainerSpec },
    Start { deployment: String, container: String },
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

    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    pub fn handle(&mut self, input: Input) {
        match input {
            Input::Work(NodeWork::Deploy { deployment, application, version, image }) => {
                if self.workloads.contains_key(&deployment) {
                    // Delivered again: it is in hand already.
                    return;
                }
                let workload = Workload {
                    deployment: deployment.clone(),
                    application,
                    version,
                    image: image.clone(),
                    status: Status::Received,
                    container: None,
                };
                self.workloads.insert(deployment.clone(), workload);
                self.report(&deployment, Status::Received, None);
                self.report(&deployment, Status::Downloading, None);
                self.actions.push_back(Action::Pull { deployment, image });
            }
            Input::Pulled { deployment, result } => match result {
                Ok(()) => {
                    if let Some(spec) = self.spec(&deployment) {
                        self.report(&deployment, Status::Deploying, None);
                        self.actions.push_back(Action::Create { deployment, spec });
                    }
                }
                Err(e) => self.fail(&deployment, e),
            },
            Input::Created { deployment, result } => match result {
                Ok(container) => {
                    if let Some(w) = self.workloads.get_mut(&deployment) {
                        w.container = Some(container.clone());
                        self.report(&deployment, Status::Starting, None);
                        self.actions.push_back(Action::Start { deployment, container });
                    }
                }
                Err(e) => self.fail(&deployment, e),
            },
            Input::Started { deployment, result } => match result {
                Ok(state) if state.running => self.report(&deployment, Status::Running, None),
                Ok(state) => {
                    let mut message = format!("the container exited with code {}", state.exit_code.unwrap_or(-1));
                    if let Some(error) = state.error {
                        message.push_str(&format!(": {error}"));
                    }
                    self.fail(&deployment, RuntimeError::new(ErrorCode::ContainerExited, message));
                }
                Err(e) => self.fail(&deployment, e),
            },
        }
    }

    fn spec(&self, deployment: &str) -> Option<ContainerSpec> {
        let w = self.workloads.get(deployment)?;
        let labels = [
            (DEPLOYMENT_LABEL, w.deployment.as_str()),
            (NODE_LABEL, self.node.as_str()),
            (TENANT_LABEL, self.tenant.as_str()),
            (APPLICATION_LABEL, w.application.as_str()),
            (VERSION_LABEL, w.version.as_str()),
        ];
        Some(ContainerSpec {
            name: format!("{}-{}", w.application, w.deployment),
            image: w.image.clone(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        })
    }

    fn fail(&mut self, deployment: &str, error: RuntimeError) {
        self.report(deployment, Status::Failed, Some(error.failure()));
    }

    fn report(&mut self, deployment: &str, status: Status, error: Option<Failure>) {
        if let Some(w) = self.workloads.get_mut(deployment) {
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

    fn deploy() -> Input {
        Input::Work(NodeWork::Deploy {
            deployment: "d1".into(),
            application: "sample".into(),
            version: "1.0.0".into(),
            image: "127.0.0.1:5000/sample/app:1.0.0".into(),
        })
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

        agent.handle(Input::Pulled { deployment: "d1".into(), result: Ok(()) });
        let actions = drain(&mut agent);
        assert_eq!(reported(&actions), [Status::Deploying]);
        let Some(Action::Create { spec, .. }) = actions.last() else { panic!("{actions:?}") };
        assert_eq!(spec.labels[DEPLOYMENT_LABEL], "d1");
        assert_eq!(spec.labels[NODE_LABEL], "edge-1");
        assert_eq!(spec.name, "sample-d1");

        agent.handle(Input::Created { deployment: "d1".into(), result: Ok("c1".into()) });
        let actions = drain(&mut agent);
        assert_eq!(reported(&actions), [Status::Starting]);
        assert_eq!(actions.last(), Some(&Action::Start { deployment: "d1".into(), container: "c1".into() }));

        let state = ContainerState { running: true, exit_code: None, error: None };
        agent.handle(Input::Started { deployment: "d1".into(), result: Ok(state) });
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
        agent.handle(Input::Pulled { deployment: "d1".into(), result: Err(error) });
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
        agent.handle(Input::Pulled { deployment: "d1".into(), result: Ok(()) });
        agent.handle(Input::Created { deployment: "d1".into(), result: Ok("c1".into()) });
        drain(&mut agent);
        let state = ContainerState { running: false, exit_code: Some(127), error: None };
        agent.handle(Input::Started { deployment: "d1".into(), result: Ok(state) });
        let actions = drain(&mut agent);
        let [Action::Report(NodeReport::DeploymentState { error: Some(failure), .. })] = actions.as_slice() else {
            panic!("{actions:?}")
        };
        assert_eq!(failure.code, "container_exited");
        assert_eq!(failure.message, "the container exited with code 127");
    }

    #[test]
    fn outcomes_for_an_unknown_deployment_are_ignored() {
        let mut agent = Agent::new("acme", "edge-1");
        agent.handle(Input::Pulled { deployment: "nope".into(), result: Ok(()) });
        agent.handle(Input::Created { deployment: "nope".into(), result: Ok("c".into()) });
        assert_eq!(drain(&mut agent), []);
    }
}
