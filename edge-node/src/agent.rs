//! The agent's decisions, as a state machine without I/O: it takes [`Input`]s (work from the
//! engine, outcomes from the runtime) and hands out [`Action`]s (reports to send, runtime steps
//! to take). Only the driver touches NATS, Docker and sled.
//!
//! A deployment is a [`Workload`] of one or more [`Unit`]s, one per container: a single-image
//! version has one, a compose version one per service. Each unit converges on its own, so one
//! failing container leaves the others be; the switch to a new version waits until every new
//! image is present. The deployment's status is the most severe of its containers'.
//!
//! # Convergence
//!
//! The workload holds what is wanted (running, stopped, removed); each unit holds what is true
//! (image pulled, container, running). Each input records a fact, and `converge` takes the
//! next step of every unit (pull, create, start, stop, remove) and reports the deployment's
//! status with each container's.
//!
//! - Every image is made present (one already there is not downloaded again) before any
//!   container of a new version is created. With nothing to replace, a service whose image
//!   failed does not hold the others back. A service starts after those it depends on.
//! - An update pulls the new images while the old containers run, then retires the old
//!   containers of the services that changed or left (their images are kept) and creates the
//!   new ones. An unchanged service keeps its container; a failed pull leaves the old ones
//!   running.
//! - A forced update (`refresh`) pulls the same tags again and recreates only the containers
//!   whose tag now names another image ID.
//! - A staged deployment waiting for an apply stops at `staged` once its images are in, or at
//!   `ready` when an older version keeps running.
//!
//! Names are `<application>-<deployment>-<node>` ([`container_prefix`]), plus `-<service>` for
//! a compose service, on the network `<application>-<deployment>-<node>`: nodes sharing one
//! Docker engine never collide.
//!
//! # Restart, deadlines, drift
//!
//! A restarted node folds each deployment's work log (`crate::desired`, in the order the
//! engine wrote it) into one wanted state, observes what Docker really has (the container, the
//! image it runs, whether the wanted image is present) and converges once ([`Agent::recover`]): nothing is
//! pulled, created or restarted twice. On each [`Input::Tick`] a runtime step past its
//! deadline ([`Deadlines`]: downloads 10 min, other steps 2 min) is reported `failed` with
//! `deadline_exceeded`, and a late outcome still counts. A settled container found stopped,
//! removed or replaced behind the node's back is put back and reported as `drift`. When the
//! link comes back ([`Input::Reconnected`]) every status is said again.
//!
//! Not handled yet: a service that left with an update, whose container was being retired
//! when the node was killed, is not looked for after the restart; named volumes of compose
//! versions are never removed.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use events::compose::{self, Limits, Mount, Service};
use events::deployment::Desired;
#[cfg(test)]
use events::deployment::Mode;
use events::policy::Policy;
use events::report::NodeReport;
use events::work::NodeWork;
use events::{ContainerStatus, Containers, Failure, Status};

use crate::runtime::{ContainerSpec, ContainerState, ErrorCode, Observed, ObservedContainer, RuntimeError};
use crate::runtime::{APPLICATION_LABEL, DEPLOYMENT_LABEL, NODE_LABEL, TENANT_LABEL, VERSION_LABEL};

/// The label that names a container's service in a compose version.
pub const SERVICE_LABEL: &str = "io.edge-orchestrator.service";

/// What the node runs for one deployment: what it should be doing, and what is true of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    pub deployment: String,
    /// The node it runs on: part of its containers' names.
    pub node: String,
    pub application: String,
    pub version: String,
    /// Its containers, by service (the empty name for a single image).
    pub units: BTreeMap<String, Unit>,
    /// The network a compose version's services share.
    pub network: Option<String>,
    /// The status last reported, and each container's.
    pub status: Status,
    containers: Containers,
    pub desired: Desired,
    /// Staged and not applied: once downloaded it waits (`ready`).
    pub hold: bool,
    /// The network is being removed, the last step of an uninstall.
    busy: bool,
    /// Environment values sealed for this node, by name: opened only as a container is made.
    secrets: BTreeMap<String, String>,
}

/// One container of a workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unit {
    /// The container's name.
    pub name: String,
    /// What it runs: image, environment, ports, volumes, restart policy.
    pub service: Service,
    /// Part of the version wanted; a service that left with an update goes at the switch.
    pub wanted: bool,
    pub status: Status,
    pub error: Option<Failure>,
    pub pulled: bool,
    pub container: Option<String>,
    /// The ID of the image the container runs, once known.
    pub image_id: Option<String>,
    pub running: bool,
    /// A forced update is under way: pull the same tag again, then compare image IDs.
    pub refreshing: bool,
    /// The previous version's container during an update: it runs until every new image is
    /// present, then goes.
    pub old: Option<String>,
    /// `container` is still the previous version's: a staged update waits for its apply, and
    /// until then stop and start act on what runs.
    pub stale: bool,
    /// A runtime step is under way; the next waits for its outcome.
    busy: bool,
    /// The step under way and when it began (the agent's clock, in milliseconds).
    step: &'static str,
    since: u64,
    /// The step under way passed its deadline: it is reported failed, and its outcome, if it
    /// ever comes, still counts.
    overdue: bool,
    /// The last step failed; nothing more is tried until new work arrives.
    failed: bool,
}

impl Unit {
    fn new(name: String, service: Service) -> Unit {
        Unit {
            name,
            service,
            wanted: true,
            status: Status::Received,
            error: None,
            pulled: false,
            container: None,
            image_id: None,
            running: false,
            refreshing: false,
            old: None,
            stale: false,
            busy: false,
            step: "",
            since: 0,
            overdue: false,
            failed: false,
        }
    }

    /// The container's id once created, its name before.
    fn container_ref(&self) -> String {
        self.container.clone().unwrap_or_else(|| self.name.clone())
    }

    /// Whether `found` is the container of what this unit runs now: its image, with every
    /// variable it wants.
    fn made_by(&self, found: &ObservedContainer) -> bool {
        found.image == self.service.image
            && self.service.environment.iter().all(|(k, v)| found.env.contains(&format!("{k}={v}")))
    }
}

/// The prefix of everything a deployment has on a node: its containers, network and volumes.
/// The same on every start, so it can be found again, and distinct per node, so that nodes
/// sharing one engine never take each other's.
pub fn container_prefix(application: &str, deployment: &str, node: &str) -> String {
    format!("{application}-{deployment}-{node}")
}

/// The name of a service's container; a single image's is the prefix alone.
pub fn container_name(prefix: &str, service: &str) -> String {
    match service {
        "" => prefix.to_owned(),
        service => format!("{prefix}-{service}"),
    }
}

/// A container to look for after a restart: its service, name and the image it should run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lookup {
    pub service: String,
    pub name: String,
    pub image: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    Work(NodeWork),
    /// What the runtime has of a deployment taken up again after a restart, by service.
    Recovered {
        deployment: String,
        observed: BTreeMap<String, Observed>,
    },
    /// Outcomes say what they were about, so that one arriving after an update is not
    /// credited to the new version.
    Pulled {
        deployment: String,
        service: String,
        image: String,
        result: Result<(), RuntimeError>,
    },
    Created {
        deployment: String,
        service: String,
        image: String,
        result: Result<String, RuntimeError>,
    },
    Started {
        deployment: String,
        service: String,
        container: String,
        result: Result<ContainerState, RuntimeError>,
    },
    Stopped {
        deployment: String,
        service: String,
        result: Result<(), RuntimeError>,
    },
    Removed {
        deployment: String,
        service: String,
        result: Result<(), RuntimeError>,
    },
    Retired {
        deployment: String,
        service: String,
        result: Result<(), RuntimeError>,
    },
    /// The tag was pulled again: the ID of the image it now names.
    Refreshed {
        deployment: String,
        service: String,
        result: Result<Option<String>, RuntimeError>,
    },
    NetworkRemoved {
        deployment: String,
        result: Result<(), RuntimeError>,
    },
    /// The agent's clock, in milliseconds from any fixed point: steps past their deadline fail.
    Tick {
        now: u64,
    },
    /// What the runtime has of a settled container now, looked up as [`Agent::to_observe`]
    /// asked: a container removed, stopped, started or replaced behind the node's back is drift.
    Observed {
        check: Check,
        observed: Observed,
    },
    /// The link is back: say again where every deployment stands.
    Reconnected,
}

impl Input {
    /// The deployment it concerns: none for [`Input::Tick`] and [`Input::Reconnected`].
    fn deployment(&self) -> Option<&str> {
        match self {
            Input::Work(work) => Some(work.deployment()),
            Input::Recovered { deployment, .. }
            | Input::Pulled { deployment, .. }
            | Input::Created { deployment, .. }
            | Input::Started { deployment, .. }
            | Input::Stopped { deployment, .. }
            | Input::Removed { deployment, .. }
            | Input::Retired { deployment, .. }
            | Input::Refreshed { deployment, .. }
            | Input::NetworkRemoved { deployment, .. } => Some(deployment),
            Input::Observed { check, .. } => Some(&check.deployment),
            Input::Tick { .. } | Input::Reconnected => None,
        }
    }

    /// For the outcome of a runtime step: whether it failed.
    pub fn failed(&self) -> Option<bool> {
        Some(match self {
            Input::Pulled { result, .. }
            | Input::Stopped { result, .. }
            | Input::Removed { result, .. }
            | Input::Retired { result, .. }
            | Input::NetworkRemoved { result, .. } => result.is_err(),
            Input::Created { result, .. } => result.is_err(),
            Input::Started { result, .. } => result.is_err(),
            Input::Refreshed { result, .. } => result.is_err(),
            _ => return None,
        })
    }
}

/// How long each runtime step may take, in milliseconds, before it is reported failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    /// A download: pull or refresh.
    pub download: u64,
    /// Any other step: create, start, stop, remove.
    pub step: u64,
}

impl Default for Deadlines {
    fn default() -> Self {
        Deadlines { download: 10 * 60 * 1000, step: 2 * 60 * 1000 }
    }
}

/// A settled container to look up for drift, with what the agent believed of it when asking:
/// a lookup that a step overtook since is not drift.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub deployment: String,
    pub service: String,
    pub name: String,
    pub image: String,
    pub container: Option<String>,
    pub running: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Report(NodeReport),
    Pull {
        deployment: String,
        service: String,
        image: String,
    },
    Create {
        deployment: String,
        service: String,
        spec: Box<ContainerSpec>,
    },
    Start {
        deployment: String,
        service: String,
        container: String,
    },
    Stop {
        deployment: String,
        service: String,
        container: String,
    },
    Remove {
        deployment: String,
        service: String,
        container: String,
        image: String,
    },
    /// Remove the previous version's container, keeping its image.
    Retire {
        deployment: String,
        service: String,
        container: String,
    },
    /// Pull the tag again and say which image it names now.
    Refresh {
        deployment: String,
        service: String,
        image: String,
    },
    /// Remove the network of a compose version once its containers are gone.
    RemoveNetwork {
        deployment: String,
        network: String,
    },
}

impl Action {
    /// The name of the runtime step, for deadlines and messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Report(_) => "report",
            Action::Pull { .. } => "pull",
            Action::Create { .. } => "create",
            Action::Start { .. } => "start",
            Action::Stop { .. } => "stop",
            Action::Remove { .. } => "remove",
            Action::Retire { .. } => "retire",
            Action::Refresh { .. } => "refresh",
            Action::RemoveNetwork { .. } => "network removal",
        }
    }
}

/// What converging decides for one unit.
enum Step {
    /// Nothing to do now; its status stays.
    Wait,
    /// It is where it should be.
    Settle(Status),
    /// A runtime step to take, and the status while it is under way.
    Act(Status, Box<Action>),
    Fail(Failure),
    /// A service that left with an update and has no container any more.
    Drop,
}

/// The containers of `w` that exist.
fn watched_of(w: &Workload) -> impl Iterator<Item = crate::telemetry::Watched> + '_ {
    w.units.values().filter_map(|u| {
        Some(crate::telemetry::Watched {
            deployment: w.deployment.clone(),
            name: u.name.clone(),
            reference: u.container.clone()?,
        })
    })
}

#[derive(Debug)]
pub struct Agent {
    node: String,
    tenant: String,
    workloads: BTreeMap<String, Workload>,
    actions: VecDeque<Action>,
    deadlines: Deadlines,
    /// What this host lets a workload use, whatever the engine allowed.
    policy: Policy,
    /// Each container's limits where its version sets none.
    default_limits: Limits,
    /// The last time a tick brought.
    now: u64,
    /// The deployments whose containers may have changed since [`Agent::update_watched`] was
    /// last called; `None` for all of them. A node with many deployments does not list them
    /// all again after every input.
    watched_touched: Option<BTreeSet<String>>,
}

impl Agent {
    pub fn new(tenant: &str, node: &str) -> Agent {
        Agent::with_deadlines(tenant, node, Deadlines::default())
    }

    pub fn with_deadlines(tenant: &str, node: &str, deadlines: Deadlines) -> Agent {
        Agent {
            node: node.to_owned(),
            tenant: tenant.to_owned(),
            workloads: BTreeMap::new(),
            actions: VecDeque::new(),
            deadlines,
            policy: Policy::default(),
            default_limits: Limits::default(),
            now: 0,
            watched_touched: None,
        }
    }

    /// Checks every container against this host's `policy` before pulling or creating it, and
    /// gives it `default_limits` where its version sets none.
    pub fn on_host(mut self, policy: Policy, default_limits: Limits) -> Agent {
        self.policy = policy;
        self.default_limits = default_limits;
        self
    }

    /// What the node's own command line lists.
    pub fn local_workloads(&self) -> Vec<crate::local::LocalWorkload> {
        let workloads = self.workloads.values();
        workloads
            .map(|w| crate::local::LocalWorkload {
                deployment: w.deployment.clone(),
                application: w.application.clone(),
                version: w.version.clone(),
                status: w.status,
                staged: w.hold,
                containers: w.containers.clone(),
            })
            .collect()
    }

    /// The staged deployment `name` names: its id, or its application when only one staged
    /// deployment of that application is here.
    pub fn staged(&self, name: &str) -> Result<String, String> {
        if let Some(w) = self.workloads.get(name) {
            return match w.hold {
                true => Ok(w.deployment.clone()),
                false => Err(format!("deployment {name} has nothing staged to apply")),
            };
        }
        let waiting: Vec<&Workload> = self.workloads.values().filter(|w| w.application == name && w.hold).collect();
        match waiting.as_slice() {
            [w] => Ok(w.deployment.clone()),
            [] => Err(format!("no staged workload is named {name}")),
            _ => Err(format!("{} staged workloads of {name}: name one by its deployment id", waiting.len())),
        }
    }

    /// The settled containers whose truth the driver should look up, for drift.
    pub fn to_observe(&self) -> Vec<Check> {
        let units = self.workloads.values().flat_map(|w| w.units.iter().map(move |(s, u)| (w, s, u)));
        units
            .filter(|(w, _, u)| {
                matches!(w.desired, Desired::Running | Desired::Stopped)
                    && !u.busy
                    && u.wanted
                    && u.old.is_none()
                    && u.container.is_some()
                    && matches!(u.status, Status::Running | Status::Stopped | Status::Ready | Status::Failed)
            })
            .map(|(w, service, u)| Check {
                deployment: w.deployment.clone(),
                service: service.clone(),
                name: u.name.clone(),
                image: u.service.image.clone(),
                container: u.container.clone(),
                running: u.running,
            })
            .collect()
    }

    pub fn workloads(&self) -> impl Iterator<Item = &Workload> {
        self.workloads.values()
    }

    /// The containers of a deployment, by name and reference, for reading their logs.
    pub fn containers(&self, deployment: &str) -> Option<Vec<(String, String)>> {
        let w = self.workloads.get(deployment)?;
        Some(w.units.values().map(|u| (u.name.clone(), u.container_ref())).collect())
    }

    /// Whether a runtime step of the deployment is under way, or past its deadline and still
    /// to come back.
    pub fn busy(&self, deployment: &str) -> bool {
        self.workloads.get(deployment).is_some_and(|w| w.busy || w.units.values().any(|u| u.busy || u.overdue))
    }

    /// Lets go of a deployment, leaving its containers as they are, so that it is taken up
    /// again ([`Agent::recover`]) from all its work: work the link delayed behind later work
    /// is then folded in the order it was written.
    pub fn let_go(&mut self, deployment: &str) {
        self.workloads.remove(deployment);
        self.touch(deployment);
    }

    /// Whether a forced update of the deployment is still under way.
    pub fn refreshing(&self, deployment: &str) -> bool {
        self.workloads.get(deployment).is_some_and(|w| w.units.values().any(|u| u.refreshing))
    }

    /// Brings `watched` up to date with the containers that exist, looking only at the
    /// deployments touched since it was last called; says whether anything changed.
    pub fn update_watched(&mut self, watched: &mut crate::telemetry::WatchedByDeployment) -> bool {
        let touched = match self.watched_touched.replace(BTreeSet::new()) {
            Some(touched) => touched,
            None => watched.keys().chain(self.workloads.keys()).cloned().collect(),
        };
        let mut changed = false;
        for deployment in touched {
            let now = self.watched_in(&deployment);
            if now.is_empty() {
                changed |= watched.remove(&deployment).is_some();
            } else if watched.get(&deployment) != Some(&now) {
                watched.insert(deployment, now);
                changed = true;
            }
        }
        changed
    }

    /// Marks `deployment`'s containers to be looked at again by [`Agent::update_watched`].
    fn touch(&mut self, deployment: &str) {
        if let Some(touched) = &mut self.watched_touched {
            touched.insert(deployment.to_owned());
        }
    }

    /// The containers of `deployment` that exist.
    fn watched_in(&self, deployment: &str) -> Vec<crate::telemetry::Watched> {
        self.workloads.get(deployment).map(|w| watched_of(w).collect()).unwrap_or_default()
    }

    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Takes up a deployment after a restart, or after work came behind later work
    /// ([`Agent::let_go`]): records every piece of work it received, in order, without acting,
    /// and says which containers to look for. The driver answers with [`Input::Recovered`].
    pub fn recover(&mut self, works: Vec<NodeWork>) -> Option<(String, Vec<Lookup>)> {
        let deployment = works.first()?.deployment().to_owned();
        self.touch(&deployment);
        for work in works {
            self.record(work);
        }
        let w = self.workloads.get(&deployment)?;
        let lookups = w
            .units
            .iter()
            .filter(|(_, u)| u.wanted)
            .map(|(service, u)| Lookup {
                service: service.clone(),
                name: u.name.clone(),
                image: u.service.image.clone(),
            })
            .collect();
        Some((deployment, lookups))
    }

    pub fn handle(&mut self, input: Input) {
        // An input concerns one deployment, but for the clock's (which may fail a step of
        // any) and the link's (which changes no container).
        match input.deployment() {
            Some(deployment) => self.touch(deployment),
            None if matches!(input, Input::Tick { .. }) => self.watched_touched = None,
            None => {}
        }
        self.take(input);
    }

    fn take(&mut self, input: Input) {
        let deployment = match input {
            Input::Tick { now } => return self.tick(now),
            Input::Reconnected => {
                let deployments: Vec<String> = self.workloads.keys().cloned().collect();
                for deployment in deployments {
                    self.repeat_status(&deployment);
                }
                return;
            }
            Input::Observed { check, observed } => {
                let Check { deployment, service, container, running, .. } = check;
                let Some(w) = self.workloads.get_mut(&deployment) else { return };
                let current = |u: &&mut Unit| !u.busy && u.container == container && u.running == running;
                let Some(u) = w.units.get_mut(&service).filter(current) else { return };
                let drift = match observed.container {
                    // A failed container is expected not to run; only its removal or
                    // replacement is drift.
                    Some(found) if u.failed && Some(&found.id) == u.container.as_ref() => return,
                    None => {
                        u.container = None;
                        u.running = false;
                        "removed"
                    }
                    Some(found) if Some(&found.id) != u.container.as_ref() => {
                        if u.made_by(&found) {
                            u.running = found.running;
                            u.container = Some(found.id);
                        } else {
                            // Someone else's container under its name: it goes, and this one comes back.
                            u.old = Some(found.id);
                            u.container = None;
                            u.running = false;
                        }
                        "replaced"
                    }
                    Some(found) if found.running != u.running => {
                        u.running = found.running;
                        if found.running {
                            "started"
                        } else {
                            "stopped"
                        }
                    }
                    Some(_) => return,
                };
                // Putting it back is new work: what failed before is tried again.
                if std::mem::take(&mut u.failed) {
                    u.error = None;
                    u.status = Status::Received;
                }
                let container = u.name.clone();
                self.actions.push_back(Action::Report(NodeReport::Drift {
                    deployment: deployment.clone(),
                    container,
                    drift: drift.to_owned(),
                }));
                deployment
            }
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
            Input::Recovered { deployment, observed } => {
                let Some(w) = self.workloads.get_mut(&deployment) else { return };
                let hold = w.hold;
                for (service, observed) in observed {
                    let Some(u) = w.units.get_mut(&service) else { continue };
                    match observed.container {
                        Some(found) if u.made_by(&found) => {
                            u.pulled = true;
                            u.running = found.running;
                            u.container = Some(found.id);
                            u.image_id = Some(found.image_id);
                        }
                        // The previous version's container, waiting for an apply: still the current one.
                        Some(found) if hold => {
                            u.running = found.running;
                            u.container = Some(found.id);
                            u.stale = true;
                        }
                        // The previous version's container: it runs on until the switch.
                        Some(found) => u.old = Some(found.id),
                        None => {}
                    }
                    u.pulled |= observed.image_present;
                }
                deployment
            }
            Input::Pulled { deployment, service, image, result } => {
                self.outcome(deployment, &service, result, |u, ()| {
                    // A pull of what it ran before an update proves nothing of the new image.
                    u.pulled |= u.service.image == image;
                })
            }
            Input::Created { deployment, service, image, result } => {
                self.outcome(deployment, &service, result, |u, id| {
                    u.running = false;
                    if u.service.image == image {
                        u.container = Some(id);
                    } else if u.old.is_none() {
                        // Created for the version before an update: it is the old one now.
                        u.old = Some(id);
                    }
                })
            }
            Input::Started { deployment, service, container, result } => {
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
                self.outcome(deployment, &service, result, |u, image_id| {
                    // A start of the container an update retired since does not count.
                    if u.container.as_deref() == Some(&container) {
                        u.running = true;
                        u.image_id = Some(image_id);
                    }
                })
            }
            Input::Stopped { deployment, service, result } => {
                self.outcome(deployment, &service, result, |u, ()| u.running = false)
            }
            Input::Retired { deployment, service, result } => {
                self.outcome(deployment, &service, result, |u, ()| u.old = None)
            }
            Input::Refreshed { deployment, service, result } => {
                self.outcome(deployment, &service, result, |u, image_id| {
                    u.refreshing = false;
                    // Only a container whose image changed is recreated.
                    if image_id.is_some() && image_id != u.image_id && u.old.is_none() {
                        u.old = u.container.take();
                        u.running = false;
                    }
                })
            }
            Input::Removed { deployment, service, result } => {
                let deployment = self.outcome(deployment, &service, result, |u, ()| {
                    u.container = None;
                    u.running = false;
                });
                if let Some(w) = self.workloads.get_mut(&deployment) {
                    if w.desired == Desired::Removed && w.units.get(&service).is_some_and(|u| !u.failed) {
                        w.units.remove(&service);
                    }
                }
                deployment
            }
            Input::NetworkRemoved { deployment, result } => {
                let Some(w) = self.workloads.get_mut(&deployment) else { return };
                w.busy = false;
                match result {
                    Ok(()) => w.network = None,
                    Err(e) => return self.report_failure(&deployment, e.failure()),
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
            NodeWork::Deploy { deployment, application, version, image, mode, env, services, secrets } => {
                if let Some(w) = self.workloads.get_mut(&deployment) {
                    if w.desired != Desired::Removed {
                        return None;
                    }
                    // Sent away, then back (a selector that flapped): wanted again.
                    w.desired = Desired::Running;
                    w.hold = mode.waits_for_apply();
                    w.retry();
                    return Some(deployment);
                }
                let prefix = container_prefix(&application, &deployment, &self.node);
                let units = events::work::containers(&image, &env, &services)
                    .into_iter()
                    .map(|s| (s.name.clone(), Unit::new(container_name(&prefix, &s.name), s)))
                    .collect();
                let workload = Workload {
                    deployment: deployment.clone(),
                    node: self.node.clone(),
                    application,
                    version,
                    units,
                    network: (!services.is_empty()).then_some(prefix),
                    status: Status::PendingDeploy,
                    containers: Containers::new(),
                    desired: Desired::Running,
                    hold: mode.waits_for_apply(),
                    busy: false,
                    secrets,
                };
                self.workloads.insert(deployment.clone(), workload);
                Some(deployment)
            }
            NodeWork::Update { deployment, version, image, mode, env, services, secrets } => {
                let w = self.workloads.get_mut(&deployment)?;
                // Sealed afresh for each piece of work: the same values, other bytes.
                w.secrets = secrets;
                let wanted = events::work::containers(&image, &env, &services);
                let unchanged = |s: &Service| w.units.get(&s.name).is_some_and(|u| u.wanted && u.service == *s);
                if w.version == version && wanted.len() == w.units.len() && wanted.iter().all(unchanged) {
                    return None;
                }
                let prefix = container_prefix(&w.application, &deployment, &w.node);
                if !services.is_empty() {
                    w.network = Some(prefix.clone());
                }
                w.version = version;
                w.hold = mode.waits_for_apply();
                for u in w.units.values_mut() {
                    u.wanted = false;
                }
                for service in wanted {
                    let Some(u) = w.units.get_mut(&service.name) else {
                        let name = container_name(&prefix, &service.name);
                        w.units.insert(service.name.clone(), Unit::new(name, service));
                        continue;
                    };
                    u.wanted = true;
                    if u.service == service {
                        // The same container serves the new version.
                        continue;
                    }
                    u.service = service;
                    u.pulled = false;
                    if w.hold && u.old.is_none() {
                        // Staged: what runs stays the current container until the apply.
                        u.stale = u.container.is_some();
                    } else {
                        u.make_way();
                    }
                }
                if !w.hold {
                    // A service the new version does not have goes at the switch.
                    for u in w.units.values_mut().filter(|u| !u.wanted) {
                        u.make_way();
                    }
                }
                w.desired = Desired::Running;
                w.retry();
                w.status = Status::PendingDeploy;
                Some(deployment)
            }
            NodeWork::Apply { deployment } => {
                let w = self.workloads.get_mut(&deployment).filter(|w| w.hold)?;
                w.hold = false;
                for u in w.units.values_mut().filter(|u| u.stale || !u.wanted) {
                    // Now the previous version's containers make way.
                    u.make_way();
                }
                w.desired = Desired::Running;
                w.retry();
                Some(deployment)
            }
            NodeWork::Refresh { deployment } => {
                let w = self.workloads.get_mut(&deployment)?;
                for u in w.units.values_mut().filter(|u| u.wanted) {
                    u.refreshing = true;
                }
                w.desired = Desired::Running;
                w.retry();
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
        w.retry();
        Some(deployment)
    }

    /// Records the outcome of a unit's runtime step: on success, what it made true.
    fn outcome<T>(
        &mut self,
        deployment: String,
        service: &str,
        result: Result<T, RuntimeError>,
        success: impl FnOnce(&mut Unit, T),
    ) -> String {
        let Some(u) = self.workloads.get_mut(&deployment).and_then(|w| w.units.get_mut(service)) else {
            return deployment;
        };
        if !u.busy && !u.overdue {
            // An outcome of a step this unit no longer waits for.
            return deployment;
        }
        u.busy = false;
        match result {
            Ok(value) => {
                if std::mem::take(&mut u.overdue) {
                    // Late, but done: it counts, and the unit goes on.
                    u.failed = false;
                    u.error = None;
                }
                success(u, value)
            }
            Err(e) => {
                u.overdue = false;
                u.fail(e.failure())
            }
        }
        deployment
    }

    /// Moves the clock on: every step past its deadline is reported failed, never left in
    /// flight.
    fn tick(&mut self, now: u64) {
        self.now = now;
        let deadlines = self.deadlines;
        let mut touched = Vec::new();
        for w in self.workloads.values_mut() {
            for u in w.units.values_mut().filter(|u| u.busy) {
                let limit = if matches!(u.step, "pull" | "refresh") { deadlines.download } else { deadlines.step };
                if now.saturating_sub(u.since) > limit {
                    u.busy = false;
                    u.overdue = true;
                    let message = format!("the {} of {} did not finish within {} s", u.step, u.name, limit / 1000);
                    u.fail(Failure { code: "deadline_exceeded".into(), message });
                    touched.push(w.deployment.clone());
                }
            }
        }
        touched.dedup();
        for deployment in touched {
            self.converge(&deployment);
        }
    }

    /// Takes the next step of every unit from what is true towards what is wanted, where
    /// none is under way, then reports where the deployment stands.
    fn converge(&mut self, deployment: &str) {
        let Some(w) = self.workloads.get(deployment) else { return };
        // The switch to a new version waits until every new image is present; with nothing
        // to replace, a service whose image failed does not hold the others back.
        let switching = w.units.values().any(|u| u.old.is_some());
        let downloaded =
            w.units.values().filter(|u| u.wanted).all(|u| (u.pulled && !u.refreshing) || (u.failed && !switching));
        let steps: Vec<(String, Step)> = w
            .units
            .iter()
            .filter(|(_, u)| !u.busy && !u.failed)
            .map(|(service, u)| (service.clone(), self.step(w, service, u, downloaded)))
            .collect();
        let Some(w) = self.workloads.get_mut(deployment) else { return };
        let mut actions = Vec::new();
        for (service, step) in steps {
            let Some(u) = w.units.get_mut(&service) else { continue };
            match step {
                Step::Wait => {}
                Step::Settle(status) => u.status = status,
                Step::Act(status, action) => {
                    u.status = status;
                    u.busy = true;
                    u.step = action.kind();
                    u.since = self.now;
                    actions.push(*action);
                }
                Step::Fail(failure) => u.fail(failure),
                Step::Drop => {
                    w.units.remove(&service);
                }
            }
        }
        if w.units.is_empty() && w.desired == Desired::Removed && !w.busy {
            match w.network.clone() {
                Some(network) => {
                    w.busy = true;
                    actions.push(Action::RemoveNetwork { deployment: deployment.to_owned(), network });
                    self.report(deployment, Status::Removing, None);
                }
                None => {
                    self.report(deployment, Status::Removed, None);
                    self.workloads.remove(deployment);
                }
            }
        } else {
            let (status, error) = w.rolled_up();
            self.report(deployment, status, error);
        }
        self.actions.extend(actions);
    }

    /// The next step of one unit.
    fn step(&self, w: &Workload, service: &str, u: &Unit, downloaded: bool) -> Step {
        let deployment = w.deployment.clone();
        let service = service.to_owned();
        let retire = |status, container: &String| {
            Step::Act(
                status,
                Box::new(Action::Retire {
                    deployment: deployment.clone(),
                    service: service.clone(),
                    container: container.clone(),
                }),
            )
        };
        match w.desired {
            _ if !u.wanted && u.old.is_none() && u.container.is_none() => Step::Drop,
            // A service the new version does not have: it runs on until the switch.
            Desired::Running if !u.wanted && w.hold => Step::Wait,
            Desired::Running if !u.wanted => match &u.old {
                Some(old) if downloaded => retire(Status::Removing, old),
                _ => Step::Wait,
            },
            Desired::Running if !u.pulled || u.refreshing => {
                if let Err(message) = self.policy.check_image(&u.service.image) {
                    return Step::Fail(Failure { code: "policy_denied".into(), message });
                }
                let image = u.service.image.clone();
                let action = if u.pulled {
                    Action::Refresh { deployment, service, image }
                } else {
                    Action::Pull { deployment, service, image }
                };
                Step::Act(Status::Downloading, Box::new(action))
            }
            Desired::Running if !downloaded => Step::Wait,
            // Waiting for an apply; a previous version that was stopped meanwhile runs again.
            Desired::Running if w.hold && u.stale && !u.running => Step::Act(
                Status::Starting,
                Box::new(Action::Start { deployment, service, container: u.container_ref() }),
            ),
            Desired::Running if w.hold && (u.stale || u.container.is_none()) => Step::Settle(Status::Ready),
            // Every new image is here: now the old container goes, and the new one comes.
            Desired::Running if u.old.is_some() => retire(Status::Deploying, u.old.as_ref().unwrap_or(&u.name)),
            // A service starts once those it depends on run.
            Desired::Running
                if !u.running && !u.service.depends_on.iter().all(|d| w.units.get(d).is_some_and(|d| d.running)) =>
            {
                Step::Settle(Status::Deploying)
            }
            Desired::Running if u.container.is_none() => match self.spec(w, u) {
                Ok(spec) => {
                    Step::Act(Status::Deploying, Box::new(Action::Create { deployment, service, spec: Box::new(spec) }))
                }
                Err(failure) => Step::Fail(failure),
            },
            Desired::Running if !u.running => Step::Act(
                Status::Starting,
                Box::new(Action::Start { deployment, service, container: u.container_ref() }),
            ),
            Desired::Running => Step::Settle(Status::Running),
            Desired::Stopped | Desired::Removed if u.old.is_some() => {
                let status = if w.desired == Desired::Stopped { Status::Stopping } else { Status::Removing };
                retire(status, u.old.as_ref().unwrap_or(&u.name))
            }
            Desired::Stopped if u.running => Step::Act(
                Status::Stopping,
                Box::new(Action::Stop { deployment, service, container: u.container_ref() }),
            ),
            Desired::Stopped => Step::Settle(Status::Stopped),
            Desired::Removed => Step::Act(
                Status::Removing,
                Box::new(Action::Remove {
                    deployment,
                    service,
                    container: u.container_ref(),
                    image: u.service.image.clone(),
                }),
            ),
        }
    }

    fn spec(&self, w: &Workload, u: &Unit) -> Result<ContainerSpec, Failure> {
        let invalid = |message: String| Failure { code: "invalid_spec".into(), message };
        let mut labels = vec![
            (DEPLOYMENT_LABEL, w.deployment.as_str()),
            (NODE_LABEL, self.node.as_str()),
            (TENANT_LABEL, self.tenant.as_str()),
            (APPLICATION_LABEL, w.application.as_str()),
            (VERSION_LABEL, w.version.as_str()),
        ];
        if !u.service.name.is_empty() {
            labels.push((SERVICE_LABEL, u.service.name.as_str()));
        }
        let prefix = container_prefix(&w.application, &w.deployment, &w.node);
        let ports = u.service.ports.iter().map(|p| compose::parse_port(p)).collect::<Result<Vec<_>, _>>();
        let mounts = u.service.volumes.iter().map(|v| compose::parse_volume(v)).collect::<Result<Vec<_>, _>>();
        let mounts = mounts.map_err(invalid)?;
        // The node checks its host's paths itself, whatever the engine let through.
        for mount in &mounts {
            if let Mount::Bind { source, .. } = mount {
                self.policy.check_bind(source).map_err(|message| Failure { code: "policy_denied".into(), message })?;
            }
        }
        let restart = u.service.restart.as_deref().map(compose::parse_restart).transpose();
        Ok(ContainerSpec {
            name: u.name.clone(),
            image: u.service.image.clone(),
            command: u.service.command.clone(),
            env: u.service.environment.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ports: ports.map_err(invalid)?,
            // Each deployment on each node has volumes of its own.
            mounts: mounts
                .into_iter()
                .map(|m| match m {
                    Mount::Volume { name, target, read_only } => {
                        Mount::Volume { name: format!("{prefix}_{name}"), target, read_only }
                    }
                    bind => bind,
                })
                .collect(),
            restart: restart.map_err(invalid)?,
            network: w.network.clone().map(|network| (network, u.service.name.clone())),
            limits: Limits {
                memory: u.service.limits.memory.or(self.default_limits.memory),
                nano_cpus: u.service.limits.nano_cpus.or(self.default_limits.nano_cpus),
                pids: u.service.limits.pids.or(self.default_limits.pids),
            },
            // A secret a service reads from a file under `/run/secrets` is not in its environment.
            secrets: w
                .secrets
                .iter()
                .filter(|(variable, _)| !w.units.values().any(|u| u.service.secrets.values().any(|v| v == *variable)))
                .map(|(variable, sealed)| (variable.clone(), sealed.clone()))
                .collect(),
            secret_files: u
                .service
                .secrets
                .iter()
                .filter_map(|(name, variable)| w.secrets.get(variable).map(|sealed| (name.clone(), sealed.clone())))
                .collect(),
            files: Vec::new(),
        })
    }

    /// Says the current status again, for work that changed nothing but may be waiting for an
    /// answer.
    fn repeat_status(&mut self, deployment: &str) {
        if let Some(w) = self.workloads.get(deployment).filter(|w| w.units.values().all(|u| !u.busy)) {
            let (_, error) = w.rolled_up();
            self.actions.push_back(Action::Report(NodeReport::DeploymentState {
                deployment: deployment.to_owned(),
                version: w.version.clone(),
                status: w.status,
                error,
                containers: w.containers.clone(),
            }));
        }
    }

    fn report_failure(&mut self, deployment: &str, failure: Failure) {
        self.report(deployment, Status::Failed, Some(failure));
    }

    /// Reports where the deployment stands, with each container; saying the same thing twice
    /// says nothing.
    fn report(&mut self, deployment: &str, status: Status, error: Option<Failure>) {
        let Some(w) = self.workloads.get_mut(deployment) else { return };
        let containers: Containers = w
            .units
            .values()
            .map(|u| (u.name.clone(), ContainerStatus { status: u.status, error: u.error.clone() }))
            .collect();
        if w.status == status && w.containers == containers && error.is_none() {
            return;
        }
        w.status = status;
        w.containers = containers.clone();
        self.actions.push_back(Action::Report(NodeReport::DeploymentState {
            deployment: deployment.to_owned(),
            version: w.version.clone(),
            status,
            error,
            containers,
        }));
    }
}

impl Workload {
    /// New work: what failed is tried again.
    fn retry(&mut self) {
        for u in self.units.values_mut().filter(|u| u.failed) {
            u.failed = false;
            u.error = None;
            u.status = Status::Received;
        }
    }

    /// The most severe status of its containers, with the failure of the first that failed.
    /// Waiting for an apply with nothing of it running is `staged`.
    fn rolled_up(&self) -> (Status, Option<Failure>) {
        let status = Status::roll_up(self.units.values().map(|u| u.status)).unwrap_or(self.status);
        let error = self.units.values().find_map(|u| u.error.clone());
        match status {
            Status::Ready if self.units.values().all(|u| u.container.is_none()) => (Status::Staged, error),
            status => (status, error),
        }
    }
}

impl Unit {
    /// The current container becomes the old one, to go at the switch.
    fn make_way(&mut self) {
        if self.old.is_none() {
            self.old = self.container.take();
        } else {
            // A container not yet retired from an earlier update goes first.
            self.container = None;
        }
        self.running = false;
        self.stale = false;
    }

    fn fail(&mut self, failure: Failure) {
        self.failed = true;
        self.status = Status::Failed;
        self.error = Some(failure);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IMAGE: &str = "127.0.0.1:5000/sample/app:1.0.0";

    /// An agent on a host that takes images from Docker Hub as well as the local registry.
    fn agent() -> Agent {
        let policy =
            Policy { registries: vec!["docker.io".into(), events::policy::LOCAL_REGISTRY.into()], binds: vec![] };
        Agent::new("acme", "edge-1").on_host(policy, Limits::default())
    }

    fn deploy_work(mode: Mode) -> NodeWork {
        NodeWork::Deploy {
            deployment: "d1".into(),
            application: "sample".into(),
            version: "1.0.0".into(),
            image: "127.0.0.1:5000/sample/app:1.0.0".into(),
            mode,
            env: Default::default(),
            services: vec![],
            secrets: Default::default(),
        }
    }

    /// Outcomes for the single container of d1.
    fn pulled(image: impl Into<String>, result: Result<(), RuntimeError>) -> Input {
        Input::Pulled { deployment: "d1".into(), service: String::new(), image: image.into(), result }
    }
    fn created(image: impl Into<String>, result: Result<String, RuntimeError>) -> Input {
        Input::Created { deployment: "d1".into(), service: String::new(), image: image.into(), result }
    }
    fn started(container: impl Into<String>, result: Result<ContainerState, RuntimeError>) -> Input {
        Input::Started { deployment: "d1".into(), service: String::new(), container: container.into(), result }
    }
    fn stopped(result: Result<(), RuntimeError>) -> Input {
        Input::Stopped { deployment: "d1".into(), service: String::new(), result }
    }
    fn retired(result: Result<(), RuntimeError>) -> Input {
        Input::Retired { deployment: "d1".into(), service: String::new(), result }
    }
    fn removed(result: Result<(), RuntimeError>) -> Input {
        Input::Removed { deployment: "d1".into(), service: String::new(), result }
    }
    fn refreshed(result: Result<Option<String>, RuntimeError>) -> Input {
        Input::Refreshed { deployment: "d1".into(), service: String::new(), result }
    }

    /// Runtime steps on d1's single container `container`.
    fn retire(container: &str) -> Action {
        Action::Retire { deployment: "d1".into(), service: String::new(), container: container.into() }
    }
    fn stop_of(container: &str) -> Action {
        Action::Stop { deployment: "d1".into(), service: String::new(), container: container.into() }
    }
    fn start_of(container: &str) -> Action {
        Action::Start { deployment: "d1".into(), service: String::new(), container: container.into() }
    }
    /// A container that started and runs.
    fn up() -> ContainerState {
        ContainerState { image_id: "sha256:one".into(), running: true, exit_code: None, error: None }
    }

    fn deploy() -> Input {
        Input::Work(deploy_work(Mode::default()))
    }

    /// Takes up a single-image deployment after a restart, with what the runtime has of it.
    fn recover(agent: &mut Agent, works: Vec<NodeWork>, observed: Observed) {
        let (deployment, lookups) = agent.recover(works).unwrap();
        assert_eq!(lookups.len(), 1);
        agent.handle(Input::Recovered { deployment, observed: [(String::new(), observed)].into() });
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
        let mut agent = agent();
        agent.handle(deploy());
        let actions = drain(&mut agent);
        assert_eq!(reported(&actions), [Status::Received, Status::Downloading]);
        assert!(matches!(actions.last(), Some(Action::Pull { image, .. }) if image.ends_with("app:1.0.0")));

        agent.handle(pulled(IMAGE, Ok(())));
        let actions = drain(&mut agent);
        assert_eq!(reported(&actions), [Status::Deploying]);
        let Some(Action::Create { spec, .. }) = actions.last() else { panic!("{actions:?}") };
        assert_eq!(spec.labels[DEPLOYMENT_LABEL], "d1");
        assert_eq!(spec.labels[NODE_LABEL], "edge-1");
        assert_eq!(spec.name, "sample-d1-edge-1");

        agent.handle(created(IMAGE, Ok("c1".into())));
        let actions = drain(&mut agent);
        assert_eq!(reported(&actions), [Status::Starting]);
        assert_eq!(actions.last(), Some(&start_of("c1")));

        agent.handle(started("c1", Ok(up())));
        assert_eq!(reported(&drain(&mut agent)), [Status::Running]);
        assert_eq!(agent.workloads().next().map(|w| w.status), Some(Status::Running));
    }

    #[test]
    fn work_delivered_twice_is_handled_once() {
        let mut agent = agent();
        agent.handle(deploy());
        drain(&mut agent);
        agent.handle(deploy());
        assert_eq!(drain(&mut agent), []);
    }

    #[test]
    fn a_failed_pull_reports_failed_with_its_code() {
        let mut agent = agent();
        agent.handle(deploy());
        drain(&mut agent);
        let error = RuntimeError::new(ErrorCode::ImageNotFound, "manifest unknown");
        agent.handle(pulled(IMAGE, Err(error)));
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
        let mut agent = agent();
        agent.handle(deploy());
        agent.handle(pulled(IMAGE, Ok(())));
        agent.handle(created(IMAGE, Ok("c1".into())));
        drain(&mut agent);
        let state = ContainerState { image_id: "sha256:one".into(), running: false, exit_code: Some(127), error: None };
        agent.handle(started("c1", Ok(state)));
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
        let mut agent = agent();
        agent.handle(deploy());
        agent.handle(pulled(IMAGE, Ok(())));
        agent.handle(created(IMAGE, Ok("c1".into())));
        agent.handle(started("c1", Ok(up())));
        drain(&mut agent);
        agent
    }

    #[test]
    fn the_containers_watched_change_with_the_deployments_an_input_touched() {
        let mut agent = agent();
        let mut watched = crate::telemetry::WatchedByDeployment::new();
        assert!(!agent.update_watched(&mut watched), "nothing to watch yet");
        agent.handle(deploy());
        agent.handle(pulled(IMAGE, Ok(())));
        assert!(!agent.update_watched(&mut watched), "work and a pull make no container");
        agent.handle(created(IMAGE, Ok("c1".into())));
        assert!(agent.update_watched(&mut watched), "a container made");
        let references = |watched: &crate::telemetry::WatchedByDeployment| {
            watched.values().flatten().map(|w| w.reference.clone()).collect::<Vec<_>>()
        };
        assert_eq!(references(&watched), ["c1"]);
        agent.handle(started("c1", Ok(up())));
        assert!(!agent.update_watched(&mut watched), "started: the same container");
        let (check, observed) = (agent.to_observe().remove(0), Observed { container: None, ..Observed::default() });
        agent.handle(Input::Observed { check, observed });
        assert!(agent.update_watched(&mut watched), "the container removed behind the node's back");
        assert!(watched.is_empty(), "{watched:?}");
        // A list changed behind the agent's back is mended at the next tick, which looks at
        // every deployment.
        let stray = crate::telemetry::Watched { deployment: "gone".into(), name: "c".into(), reference: "c9".into() };
        watched.insert("gone".into(), vec![stray]);
        agent.handle(Input::Tick { now: 1 });
        assert!(agent.update_watched(&mut watched));
        assert!(watched.is_empty(), "{watched:?}");
    }

    #[test]
    fn stop_then_start_keeps_the_container() {
        let mut agent = running();
        agent.handle(work_for(|deployment| NodeWork::Stop { deployment }));
        let actions = drain(&mut agent);
        assert_eq!(reported(&actions), [Status::Stopping]);
        assert_eq!(actions.last(), Some(&stop_of("c1")));
        agent.handle(stopped(Ok(())));
        assert_eq!(reported(&drain(&mut agent)), [Status::Stopped]);

        agent.handle(work_for(|deployment| NodeWork::Start { deployment }));
        let actions = drain(&mut agent);
        assert_eq!(reported(&actions), [Status::Starting]);
        assert_eq!(actions.last(), Some(&start_of("c1")));
    }

    #[test]
    fn remove_takes_the_container_and_image_and_forgets_the_workload() {
        let mut agent = running();
        agent.handle(work_for(|deployment| NodeWork::Remove { deployment }));
        let actions = drain(&mut agent);
        assert_eq!(reported(&actions), [Status::Removing]);
        let expected = Action::Remove {
            deployment: "d1".into(),
            service: String::new(),
            container: "c1".into(),
            image: "127.0.0.1:5000/sample/app:1.0.0".into(),
        };
        assert_eq!(actions.last(), Some(&expected));
        agent.handle(removed(Ok(())));
        assert_eq!(reported(&drain(&mut agent)), [Status::Removed]);
        assert_eq!(agent.workloads().count(), 0);
    }

    #[test]
    fn a_stop_during_the_pull_leaves_it_stopped_without_a_container() {
        let mut agent = agent();
        agent.handle(deploy());
        drain(&mut agent);
        agent.handle(work_for(|deployment| NodeWork::Stop { deployment }));
        assert_eq!(drain(&mut agent), [], "the pull is still under way");
        agent.handle(pulled(IMAGE, Ok(())));
        assert_eq!(reported(&drain(&mut agent)), [Status::Stopped]);
        agent.handle(work_for(|deployment| NodeWork::Start { deployment }));
        let actions = drain(&mut agent);
        assert_eq!(reported(&actions), [Status::Deploying]);
        assert!(matches!(actions.last(), Some(Action::Create { .. })));
    }

    #[test]
    fn a_failed_workload_waits_for_new_work_and_can_still_be_removed() {
        let mut agent = agent();
        agent.handle(deploy());
        drain(&mut agent);
        let error = RuntimeError::new(ErrorCode::ImageNotFound, "manifest unknown");
        agent.handle(pulled(IMAGE, Err(error)));
        drain(&mut agent);
        agent.handle(work_for(|deployment| NodeWork::Remove { deployment }));
        let actions = drain(&mut agent);
        assert_eq!(reported(&actions), [Status::Removing]);
        assert!(matches!(actions.last(), Some(Action::Remove { container, .. }) if container == "sample-d1-edge-1"));
    }

    #[test]
    fn a_recovered_running_deployment_is_reported_running_without_a_pull() {
        let mut agent = agent();
        let observed = Observed { container: Some(found("c1", true, "1.0.0")), image_present: true };
        recover(&mut agent, vec![deploy_work(Mode::default())], observed);
        assert_eq!(reported(&drain(&mut agent)), [Status::Running]);
        agent.handle(work_for(|deployment| NodeWork::Stop { deployment }));
        let actions = drain(&mut agent);
        assert_eq!(actions.last(), Some(&stop_of("c1")));
    }

    #[test]
    fn a_recovered_deployment_whose_container_is_gone_is_created_again_without_a_pull() {
        let mut agent = agent();
        let observed = Observed { container: None, image_present: true };
        recover(&mut agent, vec![deploy_work(Mode::default())], observed);
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
            services: vec![],
            secrets: Default::default(),
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
        let mut agent = agent();
        agent.handle(Input::Work(deploy_work(STAGED)));
        let actions = drain(&mut agent);
        assert_eq!(reported(&actions), [Status::Received, Status::Processing, Status::Downloading]);
        agent.handle(pulled(IMAGE, Ok(())));
        let actions = drain(&mut agent);
        assert_eq!(reported(&actions), [Status::Staged]);
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
        agent.handle(pulled("127.0.0.1:5000/sample/app:1.1.0", Ok(())));
        let actions = drain(&mut agent);
        assert_eq!(reported(&actions).last(), Some(&Status::Ready));
        assert!(!actions.iter().any(|a| matches!(a, Action::Retire { .. })), "the old one runs on: {actions:?}");
        agent.handle(work_for(|deployment| NodeWork::Apply { deployment }));
        let actions = drain(&mut agent);
        assert_eq!(actions.last(), Some(&retire("c1")));
    }

    #[test]
    fn a_stop_during_a_staged_update_stops_what_runs_and_a_start_brings_it_back() {
        let mut agent = running();
        agent.handle(Input::Work(update_work("1.1.0", STAGED)));
        let new_image = "127.0.0.1:5000/sample/app:1.1.0";
        agent.handle(pulled(new_image, Ok(())));
        assert_eq!(reported(&drain(&mut agent)).last(), Some(&Status::Ready));

        agent.handle(work_for(|deployment| NodeWork::Stop { deployment }));
        let actions = drain(&mut agent);
        assert_eq!(actions.last(), Some(&stop_of("c1")));
        agent.handle(stopped(Ok(())));
        assert_eq!(reported(&drain(&mut agent)), [Status::Stopped]);

        agent.handle(work_for(|deployment| NodeWork::Start { deployment }));
        let actions = drain(&mut agent);
        assert_eq!(actions.last(), Some(&start_of("c1")));
        agent.handle(started("c1", Ok(up())));
        assert_eq!(reported(&drain(&mut agent)), [Status::Ready], "still waiting for the apply");

        agent.handle(work_for(|deployment| NodeWork::Apply { deployment }));
        let actions = drain(&mut agent);
        assert_eq!(actions.last(), Some(&retire("c1")));
    }

    #[test]
    fn an_apply_with_nothing_staged_only_says_where_it_stands() {
        let mut agent = running();
        agent.handle(work_for(|deployment| NodeWork::Apply { deployment }));
        assert_eq!(
            drain(&mut agent),
            [Action::Report(NodeReport::DeploymentState {
                deployment: "d1".into(),
                version: "1.0.0".into(),
                status: Status::Running,
                error: None,
                containers: [("sample-d1-edge-1".to_owned(), ContainerStatus { status: Status::Running, error: None })]
                    .into(),
            })]
        );
    }

    #[test]
    fn an_apply_after_a_stop_starts_it() {
        let mut agent = agent();
        agent.handle(Input::Work(deploy_work(STAGED)));
        agent.handle(pulled(IMAGE, Ok(())));
        agent.handle(work_for(|deployment| NodeWork::Stop { deployment }));
        drain(&mut agent);
        agent.handle(work_for(|deployment| NodeWork::Apply { deployment }));
        assert!(matches!(drain(&mut agent).last(), Some(Action::Create { .. })));
    }

    #[test]
    fn a_pull_from_before_an_update_does_not_count_for_the_new_image() {
        let mut agent = agent();
        agent.handle(deploy());
        agent.handle(update_to("1.1.0"));
        drain(&mut agent);
        // The 1.0.0 pull that was under way ends now.
        agent.handle(pulled(IMAGE, Ok(())));
        let actions = drain(&mut agent);
        assert!(matches!(actions.last(), Some(Action::Pull { image, .. }) if image.ends_with(":1.1.0")), "{actions:?}");
    }

    #[test]
    fn a_deploy_that_arrives_during_a_removal_keeps_the_workload() {
        let mut agent = running();
        agent.handle(work_for(|deployment| NodeWork::Remove { deployment }));
        agent.handle(Input::Work(deploy_work(Mode::default())));
        drain(&mut agent);
        agent.handle(removed(Ok(())));
        let actions = drain(&mut agent);
        assert!(!reported(&actions).contains(&Status::Removed), "{actions:?}");
        assert!(matches!(actions.last(), Some(Action::Create { .. })), "created again: {actions:?}");
        assert_eq!(agent.workloads().count(), 1);
    }

    #[test]
    fn recovery_folds_every_work_received_before_acting_once() {
        let mut agent = agent();
        let works = vec![
            deploy_work(Mode::default()),
            NodeWork::Stop { deployment: "d1".into() },
            NodeWork::Start { deployment: "d1".into() },
        ];
        let observed = Observed { container: Some(found("c1", true, "1.0.0")), image_present: true };
        recover(&mut agent, works, observed);
        let actions = drain(&mut agent);
        assert_eq!(actions.len(), 1, "a running container is not stopped and started again: {actions:?}");
        assert_eq!(reported(&actions), [Status::Running]);
    }

    #[test]
    fn a_deploy_that_came_after_its_stop_is_taken_up_again_in_order_and_never_started() {
        let mut agent = agent();
        agent.handle(work_for(|deployment| NodeWork::Stop { deployment }));
        assert_eq!(drain(&mut agent), [], "a stop of a deployment the node does not hold does nothing");
        agent.let_go("d1");
        let works = vec![deploy_work(Mode::default()), NodeWork::Stop { deployment: "d1".into() }];
        recover(&mut agent, works, Observed::default());
        let actions = drain(&mut agent);
        assert_eq!(reported(&actions), [Status::Stopped], "held, and stopped as the later stop asks: {actions:?}");
        assert_eq!(actions.len(), 1, "nothing pulled, made or started: {actions:?}");
        assert!(!agent.busy("d1"));
        agent.handle(work_for(|deployment| NodeWork::Start { deployment }));
        assert!(matches!(drain(&mut agent).last(), Some(Action::Pull { .. })), "a start then brings it up");
        assert!(agent.busy("d1"));
    }

    #[test]
    fn recovery_replaces_a_container_whose_environment_is_not_the_wanted_one() {
        let mut agent = agent();
        let NodeWork::Deploy { deployment, application, version, image, mode, .. } = deploy_work(Mode::default())
        else {
            unreachable!()
        };
        let env = [("MODE".to_owned(), "test".to_owned())].into();
        let works = vec![NodeWork::Deploy {
            deployment,
            application,
            version,
            image,
            mode,
            env,
            services: vec![],
            secrets: Default::default(),
        }];
        // The container found was made before the environment changed.
        let observed = Observed { container: Some(found("c1", true, "1.0.0")), image_present: true };
        recover(&mut agent, works, observed);
        let actions = drain(&mut agent);
        assert_eq!(actions.last(), Some(&retire("c1")));
    }

    #[test]
    fn recovery_mid_update_sees_the_old_container_for_what_it_is() {
        let works = vec![deploy_work(Mode::default()), update_work("1.1.0", Mode::default())];
        let lookups = agent().recover(works.clone()).unwrap().1;
        let mut agent = agent();
        assert_eq!(lookups[0].image, "127.0.0.1:5000/sample/app:1.1.0");
        let observed = Observed { container: Some(found("c1", true, "1.0.0")), image_present: true };
        recover(&mut agent, works, observed);
        let actions = drain(&mut agent);
        assert_eq!(actions.last(), Some(&retire("c1")));
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

        agent.handle(pulled("127.0.0.1:5000/sample/app:1.1.0", Ok(())));
        let actions = drain(&mut agent);
        assert_eq!(reported(&actions), [Status::Deploying]);
        assert_eq!(actions.last(), Some(&retire("c1")));

        agent.handle(retired(Ok(())));
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
        agent.handle(pulled("127.0.0.1:5000/sample/app:9.9.9", Err(error)));
        let actions = drain(&mut agent);
        assert_eq!(reported(&actions), [Status::Failed]);
        assert!(!actions.iter().any(|a| matches!(a, Action::Retire { .. })));
        assert_eq!(agent.workloads().next().unwrap().units[""].old.as_deref(), Some("c1"));
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
        agent.handle(refreshed(Ok(Some("sha256:one".into()))));
        assert_eq!(reported(&drain(&mut agent)), [Status::Running]);

        agent.handle(refresh());
        drain(&mut agent);
        // Another image under the same tag: the container is replaced.
        agent.handle(refreshed(Ok(Some("sha256:two".into()))));
        let actions = drain(&mut agent);
        assert_eq!(actions.last(), Some(&retire("c1")));
    }

    #[test]
    fn outcomes_for_an_unknown_deployment_are_ignored() {
        let mut agent = agent();
        agent.handle(Input::Pulled {
            deployment: "nope".into(),
            service: String::new(),
            image: IMAGE.into(),
            result: Ok(()),
        });
        agent.handle(Input::Created {
            deployment: "nope".into(),
            service: String::new(),
            image: IMAGE.into(),
            result: Ok("c".into()),
        });
        assert_eq!(drain(&mut agent), []);
    }

    fn service(name: &str, image: &str, depends_on: &[&str]) -> Service {
        Service {
            name: name.into(),
            image: image.into(),
            depends_on: depends_on.iter().map(|d| d.to_string()).collect(),
            ..Service::default()
        }
    }

    fn compose_work(services: Vec<Service>) -> NodeWork {
        NodeWork::Deploy {
            deployment: "d1".into(),
            application: "shop".into(),
            version: "1.0.0".into(),
            image: String::new(),
            mode: Mode::default(),
            env: Default::default(),
            services,
            secrets: Default::default(),
        }
    }

    fn units_of(actions: &[Action]) -> Vec<(&'static str, String)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Pull { service, .. } => Some(("pull", service.clone())),
                Action::Create { service, .. } => Some(("create", service.clone())),
                Action::Start { service, .. } => Some(("start", service.clone())),
                Action::Retire { service, .. } => Some(("retire", service.clone())),
                _ => None,
            })
            .collect()
    }

    fn last_containers(actions: &[Action]) -> Containers {
        actions
            .iter()
            .rev()
            .find_map(|a| match a {
                Action::Report(NodeReport::DeploymentState { containers, .. }) => Some(containers.clone()),
                _ => None,
            })
            .unwrap()
    }

    fn service_pulled(agent: &mut Agent, service: &str, image: &str) {
        let (deployment, service, image) = ("d1".into(), service.into(), image.into());
        agent.handle(Input::Pulled { deployment, service, image, result: Ok(()) });
    }

    fn bring_up(agent: &mut Agent, service: &str, image: &str, id: &str) -> Vec<Action> {
        let (deployment, service) = ("d1".to_owned(), service.to_owned());
        let created = Ok(id.to_owned());
        agent.handle(Input::Created {
            deployment: deployment.clone(),
            service: service.clone(),
            image: image.into(),
            result: created,
        });
        let state = ContainerState { image_id: format!("sha256:{id}"), running: true, exit_code: None, error: None };
        agent.handle(Input::Started { deployment, service, container: id.into(), result: Ok(state) });
        drain(agent)
    }

    #[test]
    fn work_that_binds_the_hosts_own_paths_fails_on_the_node_whatever_the_engine_sent() {
        let mut agent = agent();
        let root = Service { volumes: vec!["/var/run/docker.sock:/sock".into()], ..service("web", "web:1", &[]) };
        agent.handle(Input::Work(compose_work(vec![root])));
        drain(&mut agent);
        service_pulled(&mut agent, "web", "web:1");
        let actions = drain(&mut agent);
        assert_eq!(units_of(&actions), [], "nothing is created: {actions:?}");
        let failed = failure_in(&actions);
        assert_eq!(failed.code, "policy_denied");
        assert!(failed.message.contains("/var/run/docker.sock"), "{}", failed.message);
    }

    /// The failure the agent reported among `actions`.
    fn failure_in(actions: &[Action]) -> Failure {
        let failed = actions.iter().find_map(|a| match a {
            Action::Report(NodeReport::DeploymentState { status: Status::Failed, error: Some(error), .. }) => {
                Some(error.clone())
            }
            _ => None,
        });
        failed.unwrap_or_else(|| panic!("no failure reported: {actions:?}"))
    }

    #[test]
    fn an_image_from_a_registry_the_host_does_not_allow_is_never_pulled() {
        let mut agent = Agent::new("acme", "edge-1");
        agent.handle(Input::Work(compose_work(vec![service("web", "127.0.0.1:5001/x/web:1", &[])])));
        let actions = drain(&mut agent);
        assert_eq!(units_of(&actions), [], "nothing is pulled: {actions:?}");
        let failed = failure_in(&actions);
        assert_eq!(failed.code, "policy_denied");
        assert!(failed.message.contains("comes from `127.0.0.1:5001`"), "{}", failed.message);
    }

    #[test]
    fn a_bind_under_an_allowed_path_is_made_and_the_hosts_default_limits_fill_what_the_version_leaves() {
        let policy = Policy { binds: vec!["/srv/apps".into()], ..Policy::default() };
        let defaults = Limits { memory: Some(64 << 20), nano_cpus: Some(500_000_000), pids: None };
        let mut agent = Agent::new("acme", "edge-1").on_host(policy, defaults);
        let image = "127.0.0.1:5000/web:1";
        let web = Service {
            volumes: vec!["/srv/apps/web:/data".into()],
            limits: Limits { memory: Some(32 << 20), ..Limits::default() },
            ..service("web", image, &[])
        };
        agent.handle(Input::Work(compose_work(vec![web])));
        drain(&mut agent);
        service_pulled(&mut agent, "web", image);
        let actions = drain(&mut agent);
        let spec = actions.iter().find_map(|a| match a {
            Action::Create { spec, .. } => Some(spec.clone()),
            _ => None,
        });
        let spec = spec.unwrap_or_else(|| panic!("no container made: {actions:?}"));
        assert_eq!(spec.limits, Limits { memory: Some(32 << 20), nano_cpus: Some(500_000_000), pids: None });
        assert!(matches!(&spec.mounts[..], [Mount::Bind { source, .. }] if source == "/srv/apps/web"), "{spec:?}");
    }

    #[test]
    fn a_compose_deployment_pulls_every_image_then_starts_each_service_after_those_it_depends_on() {
        let mut agent = agent();
        let services = vec![service("db", "db:1", &[]), service("web", "web:1", &["db"])];
        agent.handle(Input::Work(compose_work(services)));
        let actions = drain(&mut agent);
        assert_eq!(units_of(&actions), [("pull", "db".into()), ("pull", "web".into())]);
        agent.handle(Input::Pulled {
            deployment: "d1".into(),
            service: "db".into(),
            image: "db:1".into(),
            result: Ok(()),
        });
        assert_eq!(units_of(&drain(&mut agent)), [], "nothing is created before every image is in");
        service_pulled(&mut agent, "web", "web:1");
        let actions = drain(&mut agent);
        assert_eq!(units_of(&actions), [("create", "db".into())], "web waits for db to run");
        let Some(Action::Create { spec, .. }) = actions.last() else { panic!("{actions:?}") };
        assert_eq!(spec.name, "shop-d1-edge-1-db");
        assert_eq!(spec.network, Some(("shop-d1-edge-1".to_owned(), "db".to_owned())));
        assert_eq!(spec.labels[SERVICE_LABEL], "db");

        let actions = bring_up(&mut agent, "db", "db:1", "c-db");
        assert_eq!(units_of(&actions), [("start", "db".into()), ("create", "web".into())], "web comes once db runs");
        let containers = last_containers(&actions);
        assert_eq!(containers["shop-d1-edge-1-db"].status, Status::Running);
        assert_eq!(containers["shop-d1-edge-1-web"].status, Status::Deploying);
        let actions = bring_up(&mut agent, "web", "web:1", "c-web");
        assert_eq!(reported(&actions), [Status::Starting, Status::Running]);
    }

    #[test]
    fn an_update_replaces_only_the_services_that_changed_and_retires_those_that_left() {
        let mut agent = agent();
        let services = vec![service("db", "db:1", &[]), service("web", "web:1", &[]), service("cache", "cache:1", &[])];
        agent.handle(Input::Work(compose_work(services)));
        for (name, image) in [("db", "db:1"), ("web", "web:1"), ("cache", "cache:1")] {
            agent.handle(Input::Pulled {
                deployment: "d1".into(),
                service: name.into(),
                image: image.into(),
                result: Ok(()),
            });
        }
        for (name, image) in [("db", "db:1"), ("web", "web:1"), ("cache", "cache:1")] {
            bring_up(&mut agent, name, image, &format!("c-{name}"));
        }
        drain(&mut agent);

        agent.handle(Input::Work(NodeWork::Update {
            deployment: "d1".into(),
            version: "1.1.0".into(),
            image: String::new(),
            mode: Mode::default(),
            env: Default::default(),
            services: vec![service("db", "db:1", &[]), service("web", "web:2", &[])],
            secrets: Default::default(),
        }));
        let actions = drain(&mut agent);
        assert_eq!(units_of(&actions), [("pull", "web".into())], "only the new image is pulled; the rest runs on");
        agent.handle(Input::Pulled {
            deployment: "d1".into(),
            service: "web".into(),
            image: "web:2".into(),
            result: Ok(()),
        });
        let mut switched = units_of(&drain(&mut agent));
        switched.sort();
        assert_eq!(switched, [("retire", "cache".into()), ("retire", "web".into())]);
        let w = agent.workloads().next().unwrap();
        assert_eq!(w.units["db"].container.as_deref(), Some("c-db"), "db is unchanged and keeps its container");
        agent.handle(Input::Retired { deployment: "d1".into(), service: "cache".into(), result: Ok(()) });
        assert!(!agent.workloads().next().unwrap().units.contains_key("cache"), "a service that left is gone");
    }

    #[test]
    fn a_step_past_its_deadline_is_reported_failed_and_a_late_outcome_still_counts() {
        let deadlines = Deadlines { download: 5_000, step: 1_000 };
        let mut agent = Agent::with_deadlines("acme", "edge-1", deadlines);
        agent.handle(Input::Tick { now: 1_000 });
        agent.handle(deploy());
        drain(&mut agent);
        agent.handle(Input::Tick { now: 6_000 });
        assert_eq!(drain(&mut agent), [], "within its deadline");
        agent.handle(Input::Tick { now: 6_001 });
        let actions = drain(&mut agent);
        let [Action::Report(NodeReport::DeploymentState { status: Status::Failed, error: Some(failure), .. })] =
            actions.as_slice()
        else {
            panic!("{actions:?}")
        };
        assert_eq!(failure.code, "deadline_exceeded");
        assert_eq!(failure.message, "the pull of sample-d1-edge-1 did not finish within 5 s");

        agent.handle(pulled(IMAGE, Ok(())));
        let actions = drain(&mut agent);
        assert_eq!(reported(&actions), [Status::Deploying]);
        assert!(matches!(actions.last(), Some(Action::Create { .. })), "{actions:?}");
    }

    /// What the runtime has of d1's container c1, looked up while the agent believed it ran.
    fn observed(container: Option<ObservedContainer>) -> Input {
        let check = Check {
            deployment: "d1".into(),
            service: String::new(),
            name: "sample-d1-edge-1".into(),
            image: IMAGE.into(),
            container: Some("c1".into()),
            running: true,
        };
        Input::Observed { check, observed: Observed { container, image_present: true } }
    }

    fn drifts(actions: &[Action]) -> Vec<&str> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Report(NodeReport::Drift { drift, .. }) => Some(drift.as_str()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_container_changed_behind_the_nodes_back_is_drift_and_is_put_back() {
        let mut agent = running();
        assert_eq!(agent.to_observe().len(), 1);
        agent.handle(observed(Some(found("c1", true, "1.0.0"))));
        assert_eq!(drain(&mut agent), [], "as expected: no drift");

        agent.handle(observed(Some(found("c1", false, "1.0.0"))));
        let actions = drain(&mut agent);
        assert_eq!(drifts(&actions), ["stopped"]);
        assert!(matches!(actions.last(), Some(Action::Start { container, .. }) if container == "c1"), "{actions:?}");
        agent.handle(started("c1", Ok(up())));
        drain(&mut agent);

        agent.handle(observed(None));
        let actions = drain(&mut agent);
        assert_eq!(drifts(&actions), ["removed"]);
        assert!(matches!(actions.last(), Some(Action::Create { .. })), "{actions:?}");
    }

    #[test]
    fn a_stranger_under_the_containers_name_is_removed_and_the_container_made_again() {
        let mut agent = running();
        agent.handle(observed(Some(found("intruder", true, "6.6.6"))));
        let actions = drain(&mut agent);
        assert_eq!(drifts(&actions), ["replaced"]);
        let retire = retire("intruder");
        assert_eq!(actions.last(), Some(&retire));
        agent.handle(retired(Ok(())));
        assert!(matches!(drain(&mut agent).last(), Some(Action::Create { .. })));
    }

    #[test]
    fn a_lookup_from_before_a_step_is_not_drift() {
        let mut agent = running();
        agent.handle(work_for(|deployment| NodeWork::Stop { deployment }));
        drain(&mut agent);
        // Looked up while the stop was under way: the unit is busy, the lookup says nothing.
        agent.handle(observed(Some(found("c1", false, "1.0.0"))));
        assert_eq!(drifts(&drain(&mut agent)), Vec::<&str>::new());
    }
}
