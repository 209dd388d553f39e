//! A deployment: one application version launched onto a set of nodes, and what each node
//! says of it.
//!
//! # Environment
//!
//! A version carries parameters (environment defaults) and named profiles
//! (`crate::application`). A launch picks a profile and overrides single values; `decide`
//! resolves the environment once, into the `launched` event, and an update resolves it again
//! against the new version. The node receives it resolved.
//!
//! # Targets
//!
//! A launch names nodes or a label selector. A selector deployment's targets change with
//! `target_added` and `target_removed` events, each with its reason, decided on the commands of
//! the engine's membership worker; no target joins an uninstalled deployment.
//!
//! # Rollouts and rollbacks
//!
//! Both are decided here, as events that follow the one that triggered them in the same
//! command. A launch or update with `rollout {batch, max_failures}` releases nodes in
//! `wave_released` events: first a batch, then one more each time a released node settles, so
//! at most `batch` nodes (or `batch` percent of the targets) are under way; the router sends
//! work to a node only when a wave reaches it. Once more than `max_failures` released nodes
//! failed, `rollout_halted` says why and no node is released any more; nodes not reached keep
//! what they ran.
//!
//! An update with `rollback_within` keeps the version before. A node reporting `failed` before
//! the new version ever ran there, or a container of it stopping (drift) within that many
//! seconds of it running, is followed by `rolled_back`, and every node is sent the version
//! before. Retiring a container keeps its image, so going back needs no download.
//!
//! # Reports
//!
//! What a node says of a deployment is recorded on the aggregate of that pair
//! (`crate::deployment_node`), not here: a fleet's reports do not wait on each other. The
//! deployment takes, in batches (`SettleNodes`), only the settled reports it decides on: a
//! phased rollout's waves and failure threshold, a guarded update's rollback. A report says
//! the version it speaks of: one about a version older than the one the node was sent since
//! changes nothing, and so does a report older than the node's last one.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::aggregate::{event_payload, Aggregate, Ctx};
use crate::application::{Application, SettingsError};
use crate::compose::{ComposeError, Service};
use crate::deployment_node::Seen;
use crate::node::Labels;
use crate::status::{Containers, Failure, Status};

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Deployment {
    pub launched: bool,
    /// What the operator last asked for.
    pub desired: Desired,
    pub application: String,
    pub version: String,
    pub image: String,
    pub mode: Mode,
    /// Staged and not yet applied: an apply is what it waits for.
    pub awaiting_apply: bool,
    pub selector: Option<Labels>,
    pub profile: Option<String>,
    pub overrides: BTreeMap<String, String>,
    /// The phased rollout of the last launch or update, if it has one.
    pub rollout: Option<Rollout>,
    /// Why that rollout stopped releasing nodes, once it did.
    pub halted: Option<String>,
    /// The last request was an update (the nodes have the deployment); a launch otherwise.
    pub updating: bool,
    /// An update that goes back by itself if it fails to start or stops running too soon.
    pub guard: Option<Guard>,
    /// The environment its containers get (a compose version's parameter values).
    pub env: BTreeMap<String, String>,
    /// A compose version's services, resolved.
    pub services: Vec<Service>,
    /// Sealed under the tenant's key, by name: the engine seals each again for each node.
    pub secrets: BTreeMap<String, String>,
    pub nodes: BTreeMap<String, NodeProgress>,
    /// How many events asked the nodes for something (a launch, a request, a wave): a node's
    /// report like its last one counts again once one came between them.
    pub requests: u64,
}

/// How a deployment reaches its nodes (Kelvin's `staged` and `instantly_apply`):
/// - not staged, applied at once (the default): pull and start;
/// - staged, not applied at once: download in the background, then wait for an apply;
/// - staged, applied at once: download everything first, then switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mode {
    #[serde(default)]
    pub staged: bool,
    #[serde(default = "yes")]
    pub instantly_apply: bool,
}

fn yes() -> bool {
    true
}

impl Default for Mode {
    fn default() -> Self {
        Mode { staged: false, instantly_apply: true }
    }
}

/// What an update with automatic rollback keeps: how long the new version must stay running
/// on a node, and the version that ran before, to go back to.
#[derive(Debug, Clone, PartialEq)]
pub struct Guard {
    pub within_secs: u32,
    pub previous: Target,
}

/// A version as the nodes get it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Target {
    pub version: String,
    pub image: String,
    pub env: BTreeMap<String, String>,
    pub services: Vec<Service>,
    /// The profile and overrides it was resolved with.
    pub values: Reconfigure,
}

/// A phased rollout: a launch or an update reaches at most `batch` nodes at a time (or
/// `batch` percent of the targets, with `percent`), and stops releasing nodes once more than
/// `max_failures` of those it released have failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Rollout {
    pub batch: u32,
    #[serde(default, skip_serializing_if = "is_false")]
    pub percent: bool,
    #[serde(default)]
    pub max_failures: u32,
}

fn is_false(value: &bool) -> bool {
    !*value
}

impl Rollout {
    /// How many nodes may be under way at once, out of `targets`: never less than one.
    pub fn size(&self, targets: usize) -> usize {
        let batch = usize::try_from(self.batch).unwrap_or(usize::MAX);
        let size = match self.percent {
            true => targets.saturating_mul(batch).div_ceil(100),
            false => batch,
        };
        size.max(1)
    }

    fn check(&self) -> Result<(), DeploymentRejection> {
        match (self.batch, self.percent) {
            (0, _) => Err(DeploymentRejection::InvalidRollout("a batch of 0 nodes would never start".into())),
            (101.., true) => Err(DeploymentRejection::InvalidRollout(format!("{}% is over 100%", self.batch))),
            _ => Ok(()),
        }
    }
}

impl Mode {
    /// Whether the node waits for an apply once the images are in.
    pub fn waits_for_apply(self) -> bool {
        !self.instantly_apply
    }
}

/// What a deployment should be doing on its nodes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Desired {
    #[default]
    Running,
    Stopped,
    Removed,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NodeProgress {
    /// A target now; a node that stopped matching the selector stays, inactive, for its
    /// last reports.
    pub active: bool,
    pub status: Status,
    pub error: Option<Failure>,
    /// When the node said so; a report older than this one is stale.
    pub reported_at: Option<DateTime<Utc>>,
    /// The staged version was applied on the node itself.
    pub applied_locally: bool,
    /// The last launch or update was sent to it (a phased rollout holds nodes back).
    pub released: bool,
    /// When it first reported `running` since the last launch or update.
    pub running_since: Option<DateTime<Utc>>,
    /// Its credential was revoked: its last status stands, and it will report no more.
    pub revoked: bool,
}

impl NodeProgress {
    /// A target that has not answered yet.
    fn pending() -> NodeProgress {
        NodeProgress {
            active: true,
            status: Status::PendingDeploy,
            error: None,
            reported_at: None,
            applied_locally: false,
            released: true,
            running_since: None,
            revoked: false,
        }
    }
}

/// A launch, with what the engine read of the catalog and the fleet when it was asked.
#[derive(Debug, Clone, PartialEq)]
pub struct Launch {
    pub application_id: String,
    pub application: Application,
    pub version: String,
    /// The nodes named, or with a selector the registered nodes it matches now (maybe none).
    pub nodes: Vec<String>,
    /// The requested nodes that are registered.
    pub registered_nodes: BTreeSet<String>,
    pub mode: Mode,
    /// Targets every node whose labels include these, now and as nodes join or change.
    pub selector: Option<Labels>,
    /// A profile of the version, and single values over it.
    pub profile: Option<String>,
    pub overrides: BTreeMap<String, String>,
    pub rollout: Option<Rollout>,
    /// Values the containers get in their environment that the log must never hold in clear:
    /// each sealed under the tenant's key by the engine (`bus::seal`), by name.
    pub secrets: BTreeMap<String, String>,
}

impl Launch {
    /// A launch of `version` on `nodes`, all registered, in the default mode, with the
    /// version's defaults.
    pub fn new(application_id: &str, application: Application, version: &str, nodes: &[&str]) -> Launch {
        Launch {
            application_id: application_id.to_owned(),
            application,
            version: version.to_owned(),
            nodes: nodes.iter().map(|n| n.to_string()).collect(),
            registered_nodes: nodes.iter().map(|n| n.to_string()).collect(),
            mode: Mode::default(),
            selector: None,
            profile: None,
            overrides: BTreeMap::new(),
            rollout: None,
            secrets: BTreeMap::new(),
        }
    }
}

/// A deployment's profile and overrides, given anew with an update.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reconfigure {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub overrides: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum DeploymentCommand {
    Launch(Launch),
    /// Stop the containers, keep them and their images.
    Stop,
    /// Start stopped containers again.
    Start,
    /// Remove the containers, and the images no other container uses.
    Uninstall,
    /// Move to another published version of the same application (the catalog as read when
    /// asked): download first, switch after.
    Update {
        application: Application,
        version: String,
        mode: Mode,
        rollout: Option<Rollout>,
        /// Go back to the current version if the new one fails to start, or stops running
        /// within this many seconds on a node.
        rollback_within: Option<u32>,
        /// A new profile and overrides, in place of the deployment's: the same version with
        /// other values is an update too (a failed launch fixed in place).
        reconfigure: Option<Reconfigure>,
    },
    /// Start what was staged.
    Apply,
    /// Take what the tags name now: `digests` has each image's tag (`repo:tag`) resolved
    /// afresh; the containers whose digest changed are recreated, the rest stay.
    ForceUpdate {
        digests: BTreeMap<String, String>,
    },
    /// A node now matches the selector.
    AddTarget {
        node: String,
        reason: String,
    },
    /// A target node's credential was revoked.
    MarkNodeRevoked {
        node: String,
    },
    /// A node no longer matches the selector.
    RemoveTarget {
        node: String,
        reason: String,
    },
    /// Nodes' reports, as their own aggregates recorded them (`crate::deployment_node`), passed
    /// on because the deployment decides on them: a phased rollout or a guarded update.
    SettleNodes {
        reports: Vec<Settle>,
    },
    /// A node found a container changed behind its back and is putting it back.
    RecordDrift {
        node: String,
        container: String,
        drift: String,
        at: DateTime<Utc>,
    },
    /// A node applied the staged version itself (its local command line, maybe offline).
    RecordLocalApply {
        node: String,
        at: DateTime<Utc>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeploymentEvent {
    Launched {
        application: String,
        version: String,
        image: String,
        nodes: Vec<String>,
        #[serde(default)]
        mode: Mode,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        selector: Option<Labels>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        profile: Option<String>,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        overrides: BTreeMap<String, String>,
        /// The resolved environment: defaults, then the profile, then the overrides.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        env: BTreeMap<String, String>,
        /// A compose version's services with those values filled in; empty for one image.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        services: Vec<Service>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rollout: Option<Rollout>,
        /// Environment values sealed under the tenant's key, by name; never in clear.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        secrets: BTreeMap<String, String>,
    },
    StopRequested {
        at: DateTime<Utc>,
    },
    StartRequested {
        at: DateTime<Utc>,
    },
    UninstallRequested {
        at: DateTime<Utc>,
    },
    UpdateRequested {
        from_version: String,
        version: String,
        image: String,
        #[serde(default)]
        mode: Mode,
        /// The environment resolved for the new version with the deployment's profile and
        /// overrides.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        env: BTreeMap<String, String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        services: Vec<Service>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rollout: Option<Rollout>,
        /// Seconds the new version must stay running on a node, or it goes back.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rollback_within: Option<u32>,
        /// The profile and overrides the deployment has from now on, when the update gave them.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reconfigured: Option<Reconfigure>,
        at: DateTime<Utc>,
    },
    /// An update that failed went back to the version that ran before.
    RolledBack {
        from_version: String,
        version: String,
        image: String,
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        env: BTreeMap<String, String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        services: Vec<Service>,
        /// The profile and overrides it goes back to, when the update had changed them.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reconfigured: Option<Reconfigure>,
        reason: String,
        at: DateTime<Utc>,
    },
    ApplyRequested {
        at: DateTime<Utc>,
    },
    ForceUpdateRequested {
        at: DateTime<Utc>,
        /// The image pinned to its tag's digest now (a single-image version).
        #[serde(default, skip_serializing_if = "String::is_empty")]
        image: String,
        /// The services, each image pinned to its tag's digest now (a compose version).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        services: Vec<Service>,
    },
    TargetAdded {
        node: String,
        reason: String,
    },
    TargetRemoved {
        node: String,
        reason: String,
    },
    /// A node's report, in a log written before each (deployment, node) pair had an aggregate
    /// of its own: read and folded, never written any more.
    NodeStateReported {
        node: String,
        status: Status,
        error: Option<Failure>,
        #[serde(default, skip_serializing_if = "Containers::is_empty")]
        containers: Containers,
        reported_at: DateTime<Utc>,
    },
    /// Nodes settled (running, stopped, failed...), as their pairs' aggregates recorded it:
    /// what a phased rollout and a guarded update decide on. Only those deployments have it.
    NodesSettled {
        nodes: Vec<Settled>,
    },
    DriftDetected {
        node: String,
        container: String,
        /// `removed`, `stopped`, `started` or `replaced`.
        drift: String,
        at: DateTime<Utc>,
    },
    AppliedLocally {
        node: String,
        at: DateTime<Utc>,
    },
    /// The next nodes of a phased rollout get the launch or update.
    WaveReleased {
        nodes: Vec<String>,
    },
    /// The rollout releases no more nodes.
    RolloutHalted {
        reason: String,
    },
    /// A target node's credential was revoked: it is cut off, its last status stands.
    NodeRevoked {
        node: String,
    },
}

/// When a node last said something, and what.
type Last<'a> = (Option<DateTime<Utc>>, Status, &'a Option<Failure>);

/// A node's report passed on to its deployment.
#[derive(Debug, Clone, PartialEq)]
pub struct Settle {
    pub node: String,
    /// The version the node speaks of; empty when it did not say.
    pub version: String,
    pub status: Status,
    pub error: Option<Failure>,
    pub reported_at: DateTime<Utc>,
}

/// A node that settled, as the deployment took it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Settled {
    pub node: String,
    pub status: Status,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Failure>,
    pub reported_at: DateTime<Utc>,
}

event_payload!(DeploymentEvent, "deployment", {
    Launched => "launched",
    StopRequested => "stop_requested",
    StartRequested => "start_requested",
    UninstallRequested => "uninstall_requested",
    UpdateRequested => "update_requested",
    ApplyRequested => "apply_requested",
    ForceUpdateRequested => "force_update_requested",
    TargetAdded => "target_added",
    TargetRemoved => "target_removed",
    NodeStateReported => "node_state_reported",
    DriftDetected => "drift_detected",
    AppliedLocally => "applied_locally",
    WaveReleased => "wave_released",
    RolloutHalted => "rollout_halted",
    RolledBack => "rolled_back",
    NodeRevoked => "node_revoked",
    NodesSettled => "nodes_settled",
});

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeploymentRejection {
    #[error("the deployment exists already")]
    AlreadyLaunched,
    #[error("the deployment does not exist")]
    NotLaunched,
    #[error("secret `{0}` is not an environment variable name")]
    InvalidSecret(String),
    #[error("secret `{0}` is a parameter of the version, whose value is not secret")]
    SecretIsParameter(String),
    #[error("application `{0}` does not exist")]
    UnknownApplication(String),
    #[error("application `{application}` has no version {version}")]
    UnknownVersion { application: String, version: String },
    #[error("version {version} of `{application}` is not published")]
    VersionNotPublished { application: String, version: String },
    #[error("version {version} of `{application}` is withdrawn: it may no longer be launched or updated to")]
    VersionWithdrawn { application: String, version: String },
    #[error("at least one node is needed")]
    NoNodes,
    #[error("node `{0}` is not registered")]
    UnknownNode(String),
    #[error("node `{0}` is named twice")]
    DuplicateNode(String),
    #[error("node `{0}` is not a target of this deployment")]
    NotATarget(String),
    #[error("`{0}` is the server's status; a node cannot report it")]
    NotANodeStatus(Status),
    #[error("a failed status needs an error code and message")]
    FailureWithoutError,
    #[error("the deployment is already {0}")]
    AlreadyDesired(&'static str),
    #[error("the deployment is uninstalled")]
    Uninstalled,
    #[error("staged=false with instantly_apply=false would never start: stage it, or apply at once")]
    NeverApplied,
    #[error("the deployment has nothing staged to apply")]
    NothingToApply,
    #[error("the deployment targets explicit nodes, not a selector")]
    NoSelector,
    #[error("the selector must name at least one label")]
    EmptySelector,
    #[error("{0}")]
    Settings(SettingsError),
    #[error("{0}")]
    Compose(ComposeError),
    #[error("rollout: {0}")]
    InvalidRollout(String),
    #[error("status {status} is less severe than container `{container}`'s {its}")]
    BelowContainer { status: Status, container: String, its: Status },
}

impl Aggregate for Deployment {
    const TYPE: &'static str = "deployment";
    type Command = DeploymentCommand;
    type Event = DeploymentEvent;
    type Rejection = DeploymentRejection;

    fn decide(&self, command: &DeploymentCommand, ctx: &Ctx) -> Result<Vec<DeploymentEvent>, DeploymentRejection> {
        use DeploymentRejection as R;
        match command {
            DeploymentCommand::Launch(_) if self.launched => Err(R::AlreadyLaunched),
            DeploymentCommand::Launch(launch) => {
                let name = &launch.application_id;
                let version = published(name, &launch.application, &launch.version)?;
                check_mode(launch.mode)?;
                launch.rollout.as_ref().map(Rollout::check).transpose()?;
                let env =
                    version.settings.resolve(launch.profile.as_deref(), &launch.overrides).map_err(R::Settings)?;
                if let Some(name) = version.settings.missing_secret(&launch.secrets) {
                    return Err(R::Settings(SettingsError::MissingSecret(name.clone())));
                }
                let services = version.resolve_services(&env).map_err(R::Compose)?;
                if let Some(name) = launch.secrets.keys().find(|name| !crate::application::is_variable_name(name)) {
                    return Err(R::InvalidSecret(name.clone()));
                }
                if let Some(name) = launch.secrets.keys().find(|name| env.contains_key(*name)) {
                    return Err(R::SecretIsParameter(name.clone()));
                }
                match &launch.selector {
                    None if launch.nodes.is_empty() => return Err(R::NoNodes),
                    Some(selector) if selector.is_empty() => return Err(R::EmptySelector),
                    _ => {}
                }
                let mut seen = BTreeSet::new();
                for node in &launch.nodes {
                    if !seen.insert(node) {
                        return Err(R::DuplicateNode(node.clone()));
                    }
                    if !launch.registered_nodes.contains(node) {
                        return Err(R::UnknownNode(node.clone()));
                    }
                }
                self.with_next_wave(DeploymentEvent::Launched {
                    application: name.clone(),
                    version: version.version.clone(),
                    image: version.pinned_image(),
                    nodes: launch.nodes.clone(),
                    mode: launch.mode,
                    selector: launch.selector.clone(),
                    profile: launch.profile.clone(),
                    overrides: launch.overrides.clone(),
                    env,
                    services,
                    rollout: launch.rollout,
                    secrets: launch.secrets.clone(),
                })
            }
            _ if !self.launched => Err(R::NotLaunched),
            DeploymentCommand::Stop
            | DeploymentCommand::Start
            | DeploymentCommand::Uninstall
            | DeploymentCommand::Update { .. }
            | DeploymentCommand::Apply
            | DeploymentCommand::ForceUpdate { .. }
            | DeploymentCommand::AddTarget { .. }
                if self.desired == Desired::Removed =>
            {
                Err(R::Uninstalled)
            }
            DeploymentCommand::Apply if !self.awaiting_apply => Err(R::NothingToApply),
            DeploymentCommand::Apply => Ok(vec![DeploymentEvent::ApplyRequested { at: ctx.now }]),
            DeploymentCommand::ForceUpdate { digests } => {
                let repin = |image: &str| match digests.get(crate::application::unpinned(image)) {
                    Some(digest) => crate::application::pin(image, digest),
                    None => image.to_owned(),
                };
                let (image, services) = match digests.is_empty() {
                    true => (String::new(), Vec::new()),
                    false => (
                        if self.image.is_empty() { String::new() } else { repin(&self.image) },
                        self.services.iter().map(|s| Service { image: repin(&s.image), ..s.clone() }).collect(),
                    ),
                };
                Ok(vec![DeploymentEvent::ForceUpdateRequested { at: ctx.now, image, services }])
            }
            DeploymentCommand::AddTarget { .. } | DeploymentCommand::RemoveTarget { .. } if self.selector.is_none() => {
                Err(R::NoSelector)
            }
            DeploymentCommand::AddTarget { node, reason } => Ok(match self.nodes.get(node) {
                Some(progress) if progress.active => vec![],
                _ => vec![DeploymentEvent::TargetAdded { node: node.clone(), reason: reason.clone() }],
            }),
            DeploymentCommand::MarkNodeRevoked { node } => Ok(match self.nodes.get(node) {
                Some(progress) if !progress.revoked => vec![DeploymentEvent::NodeRevoked { node: node.clone() }],
                _ => vec![],
            }),
            DeploymentCommand::RemoveTarget { node, reason } => Ok(match self.nodes.get(node) {
                Some(progress) if progress.active => {
                    vec![DeploymentEvent::TargetRemoved { node: node.clone(), reason: reason.clone() }]
                }
                _ => vec![],
            }),
            DeploymentCommand::Update { application, version, mode, rollout, rollback_within, reconfigure } => {
                let target = published(&self.application, application, version)?;
                check_mode(*mode)?;
                rollout.as_ref().map(Rollout::check).transpose()?;
                let (profile, overrides) = match reconfigure {
                    Some(r) => (r.profile.as_deref(), &r.overrides),
                    None => (self.profile.as_deref(), &self.overrides),
                };
                let env = target.settings.resolve(profile, overrides).map_err(R::Settings)?;
                if let Some(name) = target.settings.missing_secret(&self.secrets) {
                    return Err(R::Settings(SettingsError::MissingSecret(name.clone())));
                }
                let services = target.resolve_services(&env).map_err(R::Compose)?;
                let same_values = profile == self.profile.as_deref() && overrides == &self.overrides;
                if target.version == self.version && same_values {
                    return Err(R::AlreadyDesired("at that version, with those values"));
                }
                self.with_next_wave(DeploymentEvent::UpdateRequested {
                    from_version: self.version.clone(),
                    version: target.version.clone(),
                    image: target.pinned_image(),
                    mode: *mode,
                    env,
                    services,
                    rollout: *rollout,
                    rollback_within: *rollback_within,
                    reconfigured: reconfigure.clone(),
                    at: ctx.now,
                })
            }
            DeploymentCommand::Stop if self.desired == Desired::Stopped => Err(R::AlreadyDesired("stopped")),
            DeploymentCommand::Stop => Ok(vec![DeploymentEvent::StopRequested { at: ctx.now }]),
            DeploymentCommand::Start if self.desired == Desired::Running => Err(R::AlreadyDesired("running")),
            DeploymentCommand::Start => Ok(vec![DeploymentEvent::StartRequested { at: ctx.now }]),
            DeploymentCommand::Uninstall => Ok(vec![DeploymentEvent::UninstallRequested { at: ctx.now }]),
            DeploymentCommand::RecordDrift { node, .. } | DeploymentCommand::RecordLocalApply { node, .. }
                if !self.nodes.contains_key(node) =>
            {
                Err(R::NotATarget(node.clone()))
            }
            DeploymentCommand::RecordDrift { node, container, drift, at } => {
                self.with_next_wave(DeploymentEvent::DriftDetected {
                    node: node.clone(),
                    container: container.clone(),
                    drift: drift.clone(),
                    at: *at,
                })
            }
            DeploymentCommand::RecordLocalApply { node, at } => Ok(match self.awaiting_apply {
                true => vec![DeploymentEvent::AppliedLocally { node: node.clone(), at: *at }],
                false => vec![],
            }),
            DeploymentCommand::SettleNodes { reports } => {
                // Each node's reports in order, each against the one before it.
                let mut taken: Vec<Settled> = Vec::new();
                let mut last: BTreeMap<&str, Last<'_>> = BTreeMap::new();
                for Settle { node, version, status, error, reported_at } in reports {
                    let Some(current) = self.nodes.get(node) else { continue };
                    // Said of a version before the one the node was sent since: it answers nothing.
                    let before = !version.is_empty() && *version != self.version && current.released;
                    let failed_without_error = *status == Status::Failed && error.is_none();
                    if before || !status.is_settled() || failed_without_error {
                        continue;
                    }
                    let (at, was, had) =
                        *last.entry(node).or_insert((current.reported_at, current.status, &current.error));
                    let stale = at.is_some_and(|last| *reported_at < last);
                    if stale || (was == *status && had == error) {
                        continue;
                    }
                    last.insert(node, (Some(*reported_at), *status, error));
                    taken.push(Settled {
                        node: node.clone(),
                        status: *status,
                        error: error.clone(),
                        reported_at: *reported_at,
                    });
                }
                if taken.is_empty() {
                    return Ok(vec![]);
                }
                // Nodes settling let a phased rollout go on, or halt it, or a guarded update go back.
                self.with_next_wave(DeploymentEvent::NodesSettled { nodes: taken })
            }
        }
    }

    fn evolve(mut self, event: &DeploymentEvent) -> Deployment {
        let reported = matches!(
            event,
            DeploymentEvent::NodeStateReported { .. }
                | DeploymentEvent::NodesSettled { .. }
                | DeploymentEvent::DriftDetected { .. }
                | DeploymentEvent::AppliedLocally { .. }
                | DeploymentEvent::NodeRevoked { .. }
                | DeploymentEvent::RolloutHalted { .. }
        );
        if !reported {
            self.requests = self.requests.saturating_add(1);
        }
        match event {
            DeploymentEvent::Launched {
                application,
                version,
                image,
                nodes,
                mode,
                selector,
                profile,
                overrides,
                env,
                services,
                rollout,
                secrets,
            } => {
                self.launched = true;
                self.secrets = secrets.clone();
                self.services = services.clone();
                self.rollout = *rollout;
                self.halted = None;
                self.updating = false;
                self.selector = selector.clone();
                self.profile = profile.clone();
                self.overrides = overrides.clone();
                self.env = env.clone();
                self.mode = *mode;
                self.awaiting_apply = mode.waits_for_apply();
                self.application = application.clone();
                self.version = version.clone();
                self.image = image.clone();
                let pending = NodeProgress { released: rollout.is_none(), ..NodeProgress::pending() };
                self.nodes = nodes.iter().map(|n| (n.clone(), pending.clone())).collect();
            }
            DeploymentEvent::StopRequested { .. } => self.request(Desired::Stopped, Status::PendingStop),
            DeploymentEvent::StartRequested { .. } => self.request(Desired::Running, Status::PendingStart),
            DeploymentEvent::UninstallRequested { .. } => self.request(Desired::Removed, Status::PendingRemove),
            DeploymentEvent::UpdateRequested {
                from_version: _,
                version,
                image,
                mode,
                env,
                services,
                rollout,
                rollback_within,
                reconfigured,
                at: _,
            } => {
                let previous = Target {
                    version: self.version.clone(),
                    image: self.image.clone(),
                    env: self.env.clone(),
                    services: self.services.clone(),
                    values: Reconfigure { profile: self.profile.clone(), overrides: self.overrides.clone() },
                };
                if let Some(r) = reconfigured {
                    self.profile = r.profile.clone();
                    self.overrides = r.overrides.clone();
                }
                self.guard = rollback_within.map(|within_secs| Guard { within_secs, previous });
                self.env = env.clone();
                self.services = services.clone();
                self.rollout = *rollout;
                self.halted = None;
                self.updating = true;
                self.version = version.clone();
                self.image = image.clone();
                self.mode = *mode;
                self.awaiting_apply = mode.waits_for_apply();
                for progress in self.nodes.values_mut() {
                    progress.applied_locally = false;
                    progress.released = rollout.is_none();
                    progress.running_since = None;
                }
                self.request(Desired::Running, Status::PendingDeploy);
            }
            DeploymentEvent::RolledBack { version, image, env, services, reconfigured, .. } => {
                if let Some(r) = reconfigured {
                    self.profile = r.profile.clone();
                    self.overrides = r.overrides.clone();
                }
                (self.version, self.image) = (version.clone(), image.clone());
                (self.env, self.services) = (env.clone(), services.clone());
                (self.guard, self.rollout, self.halted) = (None, None, None);
                self.updating = true;
                for progress in self.nodes.values_mut() {
                    progress.released = true;
                    progress.running_since = None;
                }
                self.request(Desired::Running, Status::PendingDeploy);
            }
            DeploymentEvent::ApplyRequested { .. } => {
                self.awaiting_apply = false;
                self.request(Desired::Running, Status::PendingApply);
            }
            DeploymentEvent::ForceUpdateRequested { image, services, .. } => {
                if !image.is_empty() {
                    self.image = image.clone();
                }
                if !services.is_empty() {
                    self.services = services.clone();
                }
                self.request(Desired::Running, Status::PendingDeploy)
            }
            DeploymentEvent::TargetAdded { node, .. } => {
                let progress = NodeProgress::pending();
                self.nodes.insert(node.clone(), progress);
            }
            DeploymentEvent::TargetRemoved { node, .. } => {
                if let Some(progress) = self.nodes.get_mut(node) {
                    progress.active = false;
                    progress.status = Status::PendingRemove;
                    progress.error = None;
                }
            }
            DeploymentEvent::NodeStateReported { node, status, error, reported_at, .. } => {
                self.settle(node, *status, error, *reported_at)
            }
            DeploymentEvent::NodesSettled { nodes } => {
                for Settled { node, status, error, reported_at } in nodes {
                    self.settle(node, *status, error, *reported_at);
                }
            }
            DeploymentEvent::DriftDetected { .. } => {}
            DeploymentEvent::WaveReleased { nodes } => {
                // What a node said before its wave was of the version before: it is sent this one now.
                for node in nodes {
                    if let Some(progress) = self.nodes.get_mut(node) {
                        (progress.released, progress.status, progress.error) = (true, Status::PendingDeploy, None);
                    }
                }
            }
            DeploymentEvent::RolloutHalted { reason } => self.halted = Some(reason.clone()),
            DeploymentEvent::NodeRevoked { node } => {
                if let Some(progress) = self.nodes.get_mut(node) {
                    progress.revoked = true;
                }
            }
            DeploymentEvent::AppliedLocally { node, .. } => {
                if let Some(progress) = self.nodes.get_mut(node) {
                    progress.applied_locally = true;
                }
                // Applied everywhere it targets: nothing waits for an apply any more.
                self.awaiting_apply = self.nodes.values().any(|n| n.active && !n.applied_locally);
            }
        }
        self
    }
}

fn check_mode(mode: Mode) -> Result<(), DeploymentRejection> {
    match mode {
        Mode { staged: false, instantly_apply: false } => Err(DeploymentRejection::NeverApplied),
        _ => Ok(()),
    }
}

/// The version `version` of application `name`, if it exists and is published.
fn published<'a>(
    name: &str,
    application: &'a Application,
    version: &str,
) -> Result<&'a crate::application::Version, DeploymentRejection> {
    if !application.registered {
        return Err(DeploymentRejection::UnknownApplication(name.to_owned()));
    }
    let found = application.version(version).ok_or_else(|| DeploymentRejection::UnknownVersion {
        application: name.to_owned(),
        version: version.to_owned(),
    })?;
    if found.published_at.is_none() {
        return Err(DeploymentRejection::VersionNotPublished {
            application: name.to_owned(),
            version: found.version.clone(),
        });
    }
    if found.withdrawn_at.is_some() {
        return Err(DeploymentRejection::VersionWithdrawn {
            application: name.to_owned(),
            version: found.version.clone(),
        });
    }
    Ok(found)
}

impl Deployment {
    /// What it asks of `node`, for that node's report (`crate::deployment_node`).
    pub fn seen(&self, node: &str) -> Seen {
        match self.nodes.get(node) {
            Some(progress) => Seen {
                target: true,
                version: self.version.clone(),
                released: progress.released,
                requests: self.requests,
            },
            None => Seen::default(),
        }
    }

    /// Whether a node settling bears on what it decides: a phased rollout still releasing
    /// nodes, or an update that goes back if it fails.
    pub fn watches_nodes(&self) -> bool {
        (self.rollout.is_some() && self.halted.is_none()) || self.guard.is_some()
    }

    /// The nodes it targets now.
    /// The nodes that have the deployment: the active targets, but for those a phased launch
    /// has not reached yet.
    pub fn targets(&self) -> impl Iterator<Item = &String> {
        self.nodes.iter().filter(|(_, p)| p.active && (p.released || self.updating)).map(|(node, _)| node)
    }

    /// What a node said, folded in.
    fn settle(&mut self, node: &str, status: Status, error: &Option<Failure>, reported_at: DateTime<Utc>) {
        if let Some(progress) = self.nodes.get_mut(node) {
            progress.status = status;
            progress.error = error.clone();
            progress.reported_at = Some(reported_at);
            progress.revoked = false;
            if status == Status::Running && progress.running_since.is_none() {
                progress.running_since = Some(reported_at);
            }
        }
    }

    /// `first`, then what follows from it once it is folded in: going back to the previous
    /// version when a guarded update failed; or else, in a phased rollout, releasing the next
    /// nodes up to the batch, or halting when too many of those released failed.
    fn with_next_wave(&self, first: DeploymentEvent) -> Result<Vec<DeploymentEvent>, DeploymentRejection> {
        // Nothing can follow a node's report without a rollout or a guard.
        let reported = matches!(&first, DeploymentEvent::NodesSettled { .. } | DeploymentEvent::DriftDetected { .. });
        if reported && self.rollout.is_none() && self.guard.is_none() {
            return Ok(vec![first]);
        }
        // Without a guard, reports bear on the rollout through the nodes' new statuses alone:
        // no copy of a deployment of many nodes is needed.
        if let (DeploymentEvent::NodesSettled { nodes }, None) = (&first, &self.guard) {
            let reported = nodes.iter().map(|s| (s.node.as_str(), s.status)).collect();
            let then = self.advance_with(&reported);
            return Ok(std::iter::once(first).chain(then).collect());
        }
        let next = self.clone().evolve(&first);
        let then = match next.rollback_for(&first) {
            Some(rollback) => Some(rollback),
            None => next.advance(),
        };
        Ok(std::iter::once(first).chain(then).collect())
    }

    /// Going back, if `event` shows the guarded update failing on a node: it did not start, or
    /// stopped running before it had run for the time set.
    fn rollback_for(&self, event: &DeploymentEvent) -> Option<DeploymentEvent> {
        let guard = self.guard.as_ref()?;
        let too_soon = |node: &str, at: &DateTime<Utc>| {
            let since = self.nodes.get(node)?.running_since?;
            (at.signed_duration_since(since) < chrono::Duration::seconds(guard.within_secs.into())).then_some(since)
        };
        let failed = |Settled { node, error, reported_at, .. }: &Settled| {
            let why = error.as_ref().map(|e| format!(": {}", e.message)).unwrap_or_default();
            match self.nodes.get(node).and_then(|p| p.running_since) {
                None => Some((format!("{} did not start on {node}{why}", self.version), *reported_at)),
                Some(_) if too_soon(node, reported_at).is_some() => Some((
                    format!("{} failed on {node} within {} s{why}", self.version, guard.within_secs),
                    *reported_at,
                )),
                Some(_) => None,
            }
        };
        let (reason, at) = match event {
            DeploymentEvent::NodesSettled { nodes } => {
                nodes.iter().filter(|s| s.status == Status::Failed).find_map(failed)?
            }
            DeploymentEvent::DriftDetected { node, container, drift, at } if drift != "started" => {
                too_soon(node, at)?;
                (format!("{container} of {} was {drift} on {node} within {} s", self.version, guard.within_secs), *at)
            }
            _ => return None,
        };
        let previous = guard.previous.clone();
        Some(DeploymentEvent::RolledBack {
            from_version: self.version.clone(),
            version: previous.version,
            image: previous.image,
            env: previous.env,
            services: previous.services,
            reconfigured: (previous.values.profile != self.profile || previous.values.overrides != self.overrides)
                .then_some(previous.values),
            reason,
            at,
        })
    }

    fn advance(&self) -> Option<DeploymentEvent> {
        self.advance_with(&BTreeMap::new())
    }

    /// The rollout's next step, as if `reported` (nodes and their new statuses) were folded in.
    fn advance_with(&self, reported: &BTreeMap<&str, Status>) -> Option<DeploymentEvent> {
        let rollout = self.rollout?;
        if self.halted.is_some() || self.desired == Desired::Removed {
            return None;
        }
        let status =
            |node: &String, progress: &NodeProgress| reported.get(node.as_str()).copied().unwrap_or(progress.status);
        let active: Vec<(&String, &NodeProgress)> = self.nodes.iter().filter(|(_, p)| p.active).collect();
        let released = active.iter().filter(|(_, p)| p.released);
        let failed = released.clone().filter(|(n, p)| status(n, p) == Status::Failed).count();
        if failed > rollout.max_failures as usize {
            let waiting = active.iter().filter(|(_, p)| !p.released).count();
            let reason = format!(
                "{failed} node(s) failed, more than the {} allowed; {waiting} node(s) not reached",
                rollout.max_failures
            );
            return Some(DeploymentEvent::RolloutHalted { reason });
        }
        let under_way = released.filter(|(n, p)| !status(n, p).is_settled()).count();
        let free = rollout.size(active.len()).saturating_sub(under_way);
        let nodes: Vec<String> =
            active.iter().filter(|(_, p)| !p.released).take(free).map(|(n, _)| n.to_string()).collect();
        (!nodes.is_empty()).then_some(DeploymentEvent::WaveReleased { nodes })
    }

    fn request(&mut self, desired: Desired, pending: Status) {
        self.desired = desired;
        let updating = self.updating;
        for progress in self.nodes.values_mut().filter(|p| p.active && (p.released || updating)) {
            progress.status = pending;
            progress.error = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::application::ApplicationEvent;
    use crate::testing::{given, now};
    use DeploymentCommand as C;
    use DeploymentEvent as E;
    use DeploymentRejection as R;

    fn catalog(published: bool) -> Application {
        let mut events = vec![
            ApplicationEvent::Registered { name: "Sample".into() },
            ApplicationEvent::version_added("1.0.0", "127.0.0.1:5000/sample/app:1.0.0", vec![], Default::default()),
        ];
        if published {
            events.push(ApplicationEvent::VersionPublished {
                version: "1.0.0".into(),
                published_at: now(),
                digests: Default::default(),
            });
        }
        Application::fold(&events)
    }

    fn launch(nodes: &[&str]) -> Launch {
        Launch {
            application_id: "sample".into(),
            application: catalog(true),
            version: "v1.0.0".into(),
            nodes: nodes.iter().map(|n| n.to_string()).collect(),
            registered_nodes: ["edge-1", "edge-2"].iter().map(|n| n.to_string()).collect(),
            mode: Mode::default(),
            selector: None,
            profile: None,
            overrides: BTreeMap::new(),
            rollout: Default::default(),
            secrets: Default::default(),
        }
    }

    fn launched() -> E {
        crate::testing::launched("1.0.0", &["edge-1", "edge-2"])
    }

    fn report(node: &str, status: Status, error: Option<Failure>) -> C {
        C::SettleNodes {
            reports: vec![Settle { node: node.into(), version: String::new(), status, error, reported_at: now() }],
        }
    }

    #[test]
    fn launch_on_explicit_nodes() {
        let state = given::<Deployment>([]).when(C::Launch(launch(&["edge-1", "edge-2"]))).then([launched()]);
        assert_eq!(state.nodes["edge-1"].status, Status::PendingDeploy);
    }

    #[test]
    fn launch_twice_is_rejected() {
        given::<Deployment>([launched()]).when(C::Launch(launch(&["edge-1"]))).then_rejected(R::AlreadyLaunched);
    }

    #[test]
    fn launch_of_an_unknown_application_is_rejected() {
        let mut l = launch(&["edge-1"]);
        l.application = Application::default();
        given::<Deployment>([]).when(C::Launch(l)).then_rejected(R::UnknownApplication("sample".into()));
    }

    #[test]
    fn launch_of_an_unknown_version_is_rejected() {
        let mut l = launch(&["edge-1"]);
        l.version = "2.0.0".into();
        given::<Deployment>([])
            .when(C::Launch(l))
            .then_rejected(R::UnknownVersion { application: "sample".into(), version: "2.0.0".into() });
    }

    #[test]
    fn launch_of_an_unpublished_version_is_rejected() {
        let mut l = launch(&["edge-1"]);
        l.application = catalog(false);
        given::<Deployment>([])
            .when(C::Launch(l))
            .then_rejected(R::VersionNotPublished { application: "sample".into(), version: "1.0.0".into() });
    }

    #[test]
    fn launch_of_a_withdrawn_version_is_rejected() {
        let mut l = launch(&["edge-1"]);
        if let Some(v) = l.application.versions.get_mut("1.0.0") {
            v.withdrawn_at = Some(now());
        }
        given::<Deployment>([])
            .when(C::Launch(l))
            .then_rejected(R::VersionWithdrawn { application: "sample".into(), version: "1.0.0".into() });
    }

    #[test]
    fn launch_without_nodes_is_rejected() {
        given::<Deployment>([]).when(C::Launch(launch(&[]))).then_rejected(R::NoNodes);
    }

    #[test]
    fn launch_on_an_unknown_node_is_rejected() {
        given::<Deployment>([])
            .when(C::Launch(launch(&["edge-1", "edge-9"])))
            .then_rejected(R::UnknownNode("edge-9".into()));
    }

    #[test]
    fn launch_naming_a_node_twice_is_rejected() {
        given::<Deployment>([])
            .when(C::Launch(launch(&["edge-1", "edge-1"])))
            .then_rejected(R::DuplicateNode("edge-1".into()));
    }

    fn at() -> chrono::DateTime<chrono::Utc> {
        now()
    }

    #[test]
    fn stop() {
        let state = given::<Deployment>([launched()]).when(C::Stop).then([E::StopRequested { at: at() }]);
        assert_eq!(state.desired, Desired::Stopped);
        assert_eq!(state.nodes["edge-1"].status, Status::PendingStop);
    }

    #[test]
    fn stop_twice_is_rejected() {
        given::<Deployment>([launched(), E::StopRequested { at: at() }])
            .when(C::Stop)
            .then_rejected(R::AlreadyDesired("stopped"));
    }

    #[test]
    fn stop_an_unknown_deployment_is_rejected() {
        given::<Deployment>([]).when(C::Stop).then_rejected(R::NotLaunched);
    }

    #[test]
    fn start_after_a_stop() {
        let state = given::<Deployment>([launched(), E::StopRequested { at: at() }])
            .when(C::Start)
            .then([E::StartRequested { at: at() }]);
        assert_eq!(state.desired, Desired::Running);
        assert_eq!(state.nodes["edge-2"].status, Status::PendingStart);
    }

    #[test]
    fn start_a_running_deployment_is_rejected() {
        given::<Deployment>([launched()]).when(C::Start).then_rejected(R::AlreadyDesired("running"));
    }

    #[test]
    fn uninstall() {
        let state = given::<Deployment>([launched()]).when(C::Uninstall).then([E::UninstallRequested { at: at() }]);
        assert_eq!(state.desired, Desired::Removed);
        assert_eq!(state.nodes["edge-1"].status, Status::PendingRemove);
    }

    #[test]
    fn uninstall_a_stopped_deployment() {
        given::<Deployment>([launched(), E::StopRequested { at: at() }])
            .when(C::Uninstall)
            .then([E::UninstallRequested { at: at() }]);
    }

    #[test]
    fn nothing_but_reports_after_an_uninstall() {
        let history = [launched(), E::UninstallRequested { at: at() }];
        for command in [C::Stop, C::Start, C::Uninstall] {
            given::<Deployment>(history.clone()).when(command).then_rejected(R::Uninstalled);
        }
        given::<Deployment>(history).when(report("edge-1", Status::Removed, None)).then([E::NodesSettled {
            nodes: vec![Settled { node: "edge-1".into(), status: Status::Removed, error: None, reported_at: now() }],
        }]);
    }

    fn catalog_with(versions: &[(&str, bool)]) -> Application {
        let mut events = vec![ApplicationEvent::Registered { name: "Sample".into() }];
        for (version, published) in versions {
            let image = format!("127.0.0.1:5000/sample/app:{version}");
            events.push(ApplicationEvent::version_added(version, &image, vec![], Default::default()));
            if *published {
                events.push(ApplicationEvent::VersionPublished {
                    version: version.to_string(),
                    published_at: now(),
                    digests: Default::default(),
                });
            }
        }
        Application::fold(&events)
    }

    fn update(versions: &[(&str, bool)], to: &str) -> C {
        C::Update {
            application: catalog_with(versions),
            version: to.into(),
            mode: Mode::default(),
            rollout: Default::default(),
            rollback_within: Default::default(),
            reconfigure: None,
        }
    }

    const STAGED: Mode = Mode { staged: true, instantly_apply: false };

    fn staged_launch() -> E {
        let E::Launched { application, version, image, nodes, .. } = launched() else { unreachable!() };
        E::Launched {
            application,
            version,
            image,
            nodes,
            mode: STAGED,
            selector: None,
            profile: None,
            overrides: BTreeMap::new(),
            env: BTreeMap::new(),
            services: Default::default(),
            rollout: Default::default(),
            secrets: Default::default(),
        }
    }

    #[test]
    fn a_launch_stored_before_modes_existed_reads_as_the_default_mode() {
        use crate::aggregate::EventPayload;
        #[derive(serde::Serialize)]
        struct LaunchedV1 {
            application: String,
            version: String,
            image: String,
            nodes: Vec<String>,
        }
        #[derive(serde::Serialize)]
        #[serde(rename_all = "snake_case")]
        enum Old {
            Launched(LaunchedV1),
        }
        let old = Old::Launched(LaunchedV1 {
            application: "sample".into(),
            version: "1.0.0".into(),
            image: "127.0.0.1:5000/sample/app:1.0.0".into(),
            nodes: vec!["edge-1".into(), "edge-2".into()],
        });
        let bytes = rmp_serde::to_vec_named(&old).unwrap();
        let read = DeploymentEvent::from_payload("deployment.launched", 1, &bytes).unwrap();
        assert_eq!(read, launched());
    }

    fn catalog_with_settings() -> Application {
        use crate::application::Settings;
        let settings = Settings {
            parameters: [("GREETING".into(), "hello".into()), ("MODE".into(), "prod".into())].into(),
            profiles: [("test".into(), [("MODE".into(), "test".into())].into())].into(),
            secrets: Default::default(),
        };
        catalog_of(settings)
    }

    /// `sample` 1.0.0 (`x:1`), published, with `settings`.
    fn catalog_of(settings: crate::application::Settings) -> Application {
        Application::fold(&[
            ApplicationEvent::Registered { name: "Sample".into() },
            ApplicationEvent::version_added("1.0.0", "x:1", vec![], settings),
            ApplicationEvent::VersionPublished {
                version: "1.0.0".into(),
                published_at: now(),
                digests: Default::default(),
            },
        ])
    }

    #[test]
    fn launch_with_a_profile_and_an_override_resolves_the_environment() {
        let mut l = launch(&["edge-1"]);
        l.application = catalog_with_settings();
        l.profile = Some("test".into());
        l.overrides = [("GREETING".to_owned(), "hi".to_owned())].into();
        let state = given::<Deployment>([]).when(C::Launch(l)).then([E::Launched {
            application: "sample".into(),
            version: "1.0.0".into(),
            image: "x:1".into(),
            nodes: vec!["edge-1".into()],
            mode: Mode::default(),
            selector: None,
            profile: Some("test".into()),
            overrides: [("GREETING".to_owned(), "hi".to_owned())].into(),
            env: [("GREETING".to_owned(), "hi".to_owned()), ("MODE".to_owned(), "test".to_owned())].into(),
            services: Default::default(),
            rollout: Default::default(),
            secrets: Default::default(),
        }]);
        assert_eq!(state.env["MODE"], "test");
    }

    #[test]
    fn a_secret_the_version_declares_must_come_sealed_with_the_launch_and_never_as_an_override() {
        use crate::application::Settings;
        let settings = Settings { secrets: ["DB_PASSWORD".to_owned()].into(), ..Settings::default() };
        let mut l = launch(&["edge-1"]);
        l.application = catalog_of(settings);
        given::<Deployment>([])
            .when(C::Launch(l.clone()))
            .then_rejected(R::Settings(SettingsError::MissingSecret("DB_PASSWORD".into())));
        let mut in_clear = l.clone();
        in_clear.overrides = [("DB_PASSWORD".to_owned(), "hunter2".to_owned())].into();
        given::<Deployment>([])
            .when(C::Launch(in_clear))
            .then_rejected(R::Settings(SettingsError::SecretInOverrides("DB_PASSWORD".into())));
        let mut shadowing = l.clone();
        shadowing.secrets = [("DB_PASSWORD".to_owned(), "x".to_owned()), ("MODE".to_owned(), "x".to_owned())].into();
        shadowing.application = catalog_with_settings();
        let refused = given::<Deployment>([]).when(C::Launch(shadowing)).rejection();
        assert_eq!(refused, R::SecretIsParameter("MODE".into()));
        l.secrets = [("DB_PASSWORD".to_owned(), "tenant1.sealed".to_owned())].into();
        let state =
            given::<Deployment>([]).when(C::Launch(l)).events().iter().fold(Deployment::default(), Deployment::evolve);
        assert_eq!(state.secrets["DB_PASSWORD"], "tenant1.sealed");
        assert!(state.env.is_empty());
    }

    #[test]
    fn launch_with_an_unknown_profile_or_parameter_is_rejected() {
        let mut l = launch(&["edge-1"]);
        l.application = catalog_with_settings();
        l.profile = Some("nope".into());
        given::<Deployment>([])
            .when(C::Launch(l.clone()))
            .then_rejected(R::Settings(SettingsError::UnknownProfile("nope".into())));
        l.profile = None;
        l.overrides = [("COLOR".to_owned(), "red".to_owned())].into();
        given::<Deployment>([])
            .when(C::Launch(l))
            .then_rejected(R::Settings(SettingsError::UnknownParameter("COLOR".into())));
    }

    #[test]
    fn launch_staged_waits_for_an_apply() {
        let mut l = launch(&["edge-1", "edge-2"]);
        l.mode = STAGED;
        let state = given::<Deployment>([]).when(C::Launch(l)).then([staged_launch()]);
        assert!(state.awaiting_apply);
    }

    #[test]
    fn launch_neither_staged_nor_applied_is_rejected() {
        let mut l = launch(&["edge-1"]);
        l.mode = Mode { staged: false, instantly_apply: false };
        given::<Deployment>([]).when(C::Launch(l)).then_rejected(R::NeverApplied);
    }

    fn lab() -> Labels {
        [("site".to_owned(), "lab".to_owned())].into()
    }

    fn selector_launched(nodes: &[&str]) -> E {
        E::Launched {
            application: "sample".into(),
            version: "1.0.0".into(),
            image: "127.0.0.1:5000/sample/app:1.0.0".into(),
            nodes: nodes.iter().map(|n| n.to_string()).collect(),
            mode: Mode::default(),
            selector: Some(lab()),
            profile: None,
            overrides: BTreeMap::new(),
            env: BTreeMap::new(),
            services: Default::default(),
            rollout: Default::default(),
            secrets: Default::default(),
        }
    }

    #[test]
    fn launch_on_a_selector_that_matches_no_node_yet() {
        let mut l = launch(&[]);
        l.selector = Some(lab());
        given::<Deployment>([]).when(C::Launch(l)).then([selector_launched(&[])]);
    }

    #[test]
    fn launch_on_an_empty_selector_is_rejected() {
        let mut l = launch(&[]);
        l.selector = Some(Labels::new());
        given::<Deployment>([]).when(C::Launch(l)).then_rejected(R::EmptySelector);
    }

    #[test]
    fn a_node_that_comes_to_match_is_added_once() {
        let add = || C::AddTarget { node: "edge-3".into(), reason: "labels match".into() };
        let state = given::<Deployment>([selector_launched(&["edge-1"])])
            .when(add())
            .then([E::TargetAdded { node: "edge-3".into(), reason: "labels match".into() }]);
        assert_eq!(state.targets().collect::<Vec<_>>(), ["edge-1", "edge-3"]);
        let added = E::TargetAdded { node: "edge-3".into(), reason: "labels match".into() };
        given::<Deployment>([selector_launched(&["edge-1"]), added]).when(add()).then([]);
    }

    #[test]
    fn a_node_that_stops_matching_is_removed_once() {
        let remove = || C::RemoveTarget { node: "edge-1".into(), reason: "labels changed".into() };
        let state = given::<Deployment>([selector_launched(&["edge-1"])])
            .when(remove())
            .then([E::TargetRemoved { node: "edge-1".into(), reason: "labels changed".into() }]);
        assert_eq!(state.targets().count(), 0);
        assert_eq!(state.nodes["edge-1"].status, Status::PendingRemove);
        let removed = E::TargetRemoved { node: "edge-1".into(), reason: "labels changed".into() };
        given::<Deployment>([selector_launched(&["edge-1"]), removed]).when(remove()).then([]);
        given::<Deployment>([selector_launched(&["edge-1"])])
            .when(C::RemoveTarget { node: "edge-9".into(), reason: "x".into() })
            .then([]);
    }

    #[test]
    fn targets_change_only_on_selector_deployments() {
        given::<Deployment>([launched()])
            .when(C::AddTarget { node: "edge-3".into(), reason: "x".into() })
            .then_rejected(R::NoSelector);
    }

    #[test]
    fn no_target_joins_an_uninstalled_deployment() {
        given::<Deployment>([selector_launched(&[]), E::UninstallRequested { at: at() }])
            .when(C::AddTarget { node: "edge-3".into(), reason: "x".into() })
            .then_rejected(R::Uninstalled);
    }

    #[test]
    fn force_update() {
        let state = given::<Deployment>([launched(), E::StopRequested { at: at() }])
            .when(C::ForceUpdate { digests: BTreeMap::new() })
            .then([E::ForceUpdateRequested { at: at(), image: String::new(), services: vec![] }]);
        assert_eq!((state.desired, state.nodes["edge-1"].status), (Desired::Running, Status::PendingDeploy));
    }

    #[test]
    fn a_forced_update_pins_each_image_to_its_tags_digest_now() {
        let old = format!("sha256:{}", "a".repeat(64));
        let new = format!("sha256:{}", "b".repeat(64));
        let mut launched = launched();
        if let E::Launched { image, .. } = &mut launched {
            *image = format!("x:1@{old}");
        }
        let digests = [("x:1".to_owned(), new.clone())].into();
        let state = given::<Deployment>([launched]).when(C::ForceUpdate { digests }).then([E::ForceUpdateRequested {
            at: at(),
            image: format!("x:1@{new}"),
            services: vec![],
        }]);
        assert_eq!(state.image, format!("x:1@{new}"));
    }

    #[test]
    fn force_update_an_uninstalled_deployment_is_rejected() {
        given::<Deployment>([launched(), E::UninstallRequested { at: at() }])
            .when(C::ForceUpdate { digests: BTreeMap::new() })
            .then_rejected(R::Uninstalled);
    }

    #[test]
    fn force_update_an_unknown_deployment_is_rejected() {
        given::<Deployment>([]).when(C::ForceUpdate { digests: BTreeMap::new() }).then_rejected(R::NotLaunched);
    }

    #[test]
    fn apply_a_staged_deployment() {
        let state = given::<Deployment>([staged_launch()]).when(C::Apply).then([E::ApplyRequested { at: at() }]);
        assert!(!state.awaiting_apply);
        assert_eq!(state.nodes["edge-1"].status, Status::PendingApply);
    }

    #[test]
    fn apply_twice_is_rejected() {
        given::<Deployment>([staged_launch(), E::ApplyRequested { at: at() }])
            .when(C::Apply)
            .then_rejected(R::NothingToApply);
    }

    #[test]
    fn apply_what_was_not_staged_is_rejected() {
        given::<Deployment>([launched()]).when(C::Apply).then_rejected(R::NothingToApply);
    }

    #[test]
    fn apply_an_unknown_deployment_is_rejected() {
        given::<Deployment>([]).when(C::Apply).then_rejected(R::NotLaunched);
    }

    #[test]
    fn a_staged_update_waits_for_an_apply() {
        let command = C::Update {
            application: catalog_with(&[("1.0.0", true), ("1.1.0", true)]),
            version: "1.1.0".into(),
            mode: STAGED,
            rollout: Default::default(),
            rollback_within: Default::default(),
            reconfigure: None,
        };
        let state = given::<Deployment>([launched()]).when(command).then([E::UpdateRequested {
            from_version: "1.0.0".into(),
            version: "1.1.0".into(),
            image: "127.0.0.1:5000/sample/app:1.1.0".into(),
            mode: STAGED,
            env: BTreeMap::new(),
            at: now(),
            services: Default::default(),
            rollout: Default::default(),
            rollback_within: Default::default(),
            reconfigured: None,
        }]);
        assert!(state.awaiting_apply);
    }

    #[test]
    fn an_update_to_the_same_version_takes_a_new_profile_and_overrides_and_keeps_them() {
        let application = catalog_with_settings();
        let mut l = launch(&["edge-1"]);
        l.application = application.clone();
        let launched = given::<Deployment>([]).when(C::Launch(l)).events();
        let again = |reconfigure: Option<Reconfigure>| C::Update {
            application: application.clone(),
            version: "1.0.0".into(),
            mode: Mode::default(),
            rollout: None,
            rollback_within: None,
            reconfigure,
        };
        given::<Deployment>(launched.clone())
            .when(again(None))
            .then_rejected(R::AlreadyDesired("at that version, with those values"));
        let test = Reconfigure { profile: Some("test".into()), overrides: [("GREETING".into(), "hi".into())].into() };
        let updated = given::<Deployment>(launched.clone()).when(again(Some(test.clone()))).events();
        let state = Deployment::fold(&[launched.clone(), updated].concat());
        assert_eq!((state.profile.as_deref(), state.overrides.clone()), (Some("test"), test.overrides.clone()));
        assert_eq!(state.env.get("MODE").map(String::as_str), Some("test"));
        assert_eq!(state.env.get("GREETING").map(String::as_str), Some("hi"));
        let unknown = Reconfigure { profile: Some("nope".into()), overrides: Default::default() };
        given::<Deployment>(launched)
            .when(again(Some(unknown)))
            .then_rejected(R::Settings(SettingsError::UnknownProfile("nope".into())));
    }

    #[test]
    fn update_to_a_published_version() {
        let state =
            given::<Deployment>([launched()]).when(update(&[("1.0.0", true), ("1.1.0", true)], "v1.1.0")).then([
                E::UpdateRequested {
                    from_version: "1.0.0".into(),
                    version: "1.1.0".into(),
                    image: "127.0.0.1:5000/sample/app:1.1.0".into(),
                    mode: Mode::default(),
                    env: BTreeMap::new(),
                    at: now(),
                    services: Default::default(),
                    rollout: Default::default(),
                    rollback_within: Default::default(),
                    reconfigured: None,
                },
            ]);
        assert_eq!((state.version.as_str(), state.desired), ("1.1.0", Desired::Running));
        assert_eq!(state.nodes["edge-1"].status, Status::PendingDeploy);
    }

    #[test]
    fn update_to_a_draft_is_rejected() {
        given::<Deployment>([launched()])
            .when(update(&[("1.0.0", true), ("1.1.0", false)], "1.1.0"))
            .then_rejected(R::VersionNotPublished { application: "sample".into(), version: "1.1.0".into() });
    }

    #[test]
    fn update_to_an_unknown_version_is_rejected() {
        given::<Deployment>([launched()])
            .when(update(&[("1.0.0", true)], "2.0.0"))
            .then_rejected(R::UnknownVersion { application: "sample".into(), version: "2.0.0".into() });
    }

    #[test]
    fn update_to_the_current_version_is_rejected() {
        given::<Deployment>([launched()])
            .when(update(&[("1.0.0", true)], "1.0.0"))
            .then_rejected(R::AlreadyDesired("at that version, with those values"));
    }

    #[test]
    fn update_an_uninstalled_deployment_is_rejected() {
        given::<Deployment>([launched(), E::UninstallRequested { at: at() }])
            .when(update(&[("1.0.0", true), ("1.1.0", true)], "1.1.0"))
            .then_rejected(R::Uninstalled);
    }

    #[test]
    fn update_an_unknown_deployment_is_rejected() {
        given::<Deployment>([]).when(update(&[("1.1.0", true)], "1.1.0")).then_rejected(R::NotLaunched);
    }

    #[test]
    fn report_node_state() {
        let state =
            given::<Deployment>([launched()]).when(report("edge-1", Status::Running, None)).then([E::NodesSettled {
                nodes: vec![Settled {
                    node: "edge-1".into(),
                    status: Status::Running,
                    error: None,
                    reported_at: now(),
                }],
            }]);
        assert_eq!(state.nodes["edge-1"].status, Status::Running);
        assert_eq!(state.nodes["edge-2"].status, Status::PendingDeploy);
    }

    #[test]
    fn report_a_failure_with_its_error() {
        let error = Failure { code: "image_not_found".into(), message: "manifest unknown".into() };
        given::<Deployment>([launched()]).when(report("edge-1", Status::Failed, Some(error.clone()))).then([
            E::NodesSettled {
                nodes: vec![Settled {
                    node: "edge-1".into(),
                    status: Status::Failed,
                    error: Some(error),
                    reported_at: now(),
                }],
            },
        ]);
    }

    #[test]
    fn report_the_same_state_again_changes_nothing() {
        let first = E::NodesSettled {
            nodes: vec![Settled { node: "edge-1".into(), status: Status::Running, error: None, reported_at: now() }],
        };
        given::<Deployment>([launched(), first]).when(report("edge-1", Status::Running, None)).then([]);
    }

    #[test]
    fn a_report_older_than_the_last_one_changes_nothing() {
        let later = now() + chrono::Duration::seconds(5);
        let running = E::NodesSettled {
            nodes: vec![Settled { node: "edge-1".into(), status: Status::Running, error: None, reported_at: later }],
        };
        given::<Deployment>([launched(), running]).when(report("edge-1", Status::Downloading, None)).then([]);
    }

    #[test]
    fn a_batch_leaves_out_what_its_nodes_could_not_have_said_and_takes_the_rest() {
        let settle = |node: &str, status: Status, error: Option<Failure>, at: i64| Settle {
            node: node.into(),
            version: String::new(),
            status,
            error,
            reported_at: now() + chrono::Duration::seconds(at),
        };
        let failed = Failure { code: "x".into(), message: "y".into() };
        let batch = C::SettleNodes {
            reports: vec![
                settle("edge-3", Status::Running, None, 0),
                settle("edge-1", Status::PendingDeploy, None, 0),
                settle("edge-1", Status::Failed, None, 0),
                settle("edge-1", Status::Downloading, None, 0),
                settle("edge-2", Status::Failed, Some(failed.clone()), 1),
                settle("edge-2", Status::Running, None, 2),
                settle("edge-2", Status::Failed, Some(failed), 1),
            ],
        };
        let at = |seconds| now() + chrono::Duration::seconds(seconds);
        let failure = Some(Failure { code: "x".into(), message: "y".into() });
        let state = given::<Deployment>([launched()]).when(batch).then([E::NodesSettled {
            nodes: vec![
                Settled { node: "edge-2".into(), status: Status::Failed, error: failure, reported_at: at(1) },
                Settled { node: "edge-2".into(), status: Status::Running, error: None, reported_at: at(2) },
            ],
        }]);
        assert_eq!(state.nodes["edge-2"].status, Status::Running, "each in order, the older one after them dropped");
        assert_eq!(state.nodes["edge-1"].status, Status::PendingDeploy);
    }

    #[test]
    fn report_on_an_unknown_deployment_is_rejected() {
        given::<Deployment>([]).when(report("edge-1", Status::Running, None)).then_rejected(R::NotLaunched);
    }

    const FOUR: [&str; 4] = ["edge-1", "edge-2", "edge-3", "edge-4"];

    fn phased(batch: u32, max_failures: u32) -> (Launch, E) {
        let rollout = Some(Rollout { batch, percent: false, max_failures });
        let registered_nodes = FOUR.iter().map(|n| n.to_string()).collect();
        let launch = Launch { rollout, registered_nodes, ..launch(&FOUR) };
        let E::Launched { application, version, image, mode, .. } = launched() else { unreachable!() };
        let event = E::Launched {
            application,
            version,
            image,
            nodes: FOUR.iter().map(|n| n.to_string()).collect(),
            mode,
            selector: None,
            profile: None,
            overrides: BTreeMap::new(),
            env: BTreeMap::new(),
            services: vec![],
            rollout,
            secrets: Default::default(),
        };
        (launch, event)
    }

    fn wave(nodes: &[&str]) -> E {
        E::WaveReleased { nodes: nodes.iter().map(|n| n.to_string()).collect() }
    }

    #[test]
    fn a_phased_launch_reaches_a_batch_of_nodes_then_the_next_as_each_settles() {
        let (command, event) = phased(2, 0);
        let state = given::<Deployment>([]).when(C::Launch(command)).then([event.clone(), wave(&["edge-1", "edge-2"])]);
        assert_eq!(state.targets().collect::<Vec<_>>(), ["edge-1", "edge-2"], "the others do not have it yet");
        let running = |node: &str| E::NodesSettled {
            nodes: vec![Settled { node: node.into(), status: Status::Running, error: None, reported_at: now() }],
        };
        given::<Deployment>([event.clone(), wave(&["edge-1", "edge-2"])])
            .when(report("edge-1", Status::Running, None))
            .then([running("edge-1"), wave(&["edge-3"])]);
        // Still downloading: not settled, nothing to decide.
        given::<Deployment>([event, wave(&["edge-1", "edge-2"])])
            .when(report("edge-1", Status::Downloading, None))
            .then([]);
    }

    #[test]
    fn a_phased_rollout_halts_once_failures_pass_the_threshold() {
        let (_, event) = phased(1, 0);
        let failure = Failure { code: "image_not_found".into(), message: "manifest unknown".into() };
        let events = given::<Deployment>([event, wave(&["edge-1"])])
            .when(report("edge-1", Status::Failed, Some(failure.clone())))
            .then([
                E::NodesSettled {
                    nodes: vec![Settled {
                        node: "edge-1".into(),
                        status: Status::Failed,
                        error: Some(failure),
                        reported_at: now(),
                    }],
                },
                E::RolloutHalted { reason: "1 node(s) failed, more than the 0 allowed; 3 node(s) not reached".into() },
            ]);
        assert!(events.halted.is_some());
    }

    #[test]
    fn a_rollout_in_percent_and_a_batch_of_zero() {
        assert_eq!(Rollout { batch: 25, percent: true, max_failures: 0 }.size(10), 3);
        assert_eq!(Rollout { batch: 1, percent: true, max_failures: 0 }.size(4), 1, "never less than one");
        let (mut command, _) = phased(0, 0);
        given::<Deployment>([])
            .when(C::Launch(command.clone()))
            .then_rejected(R::InvalidRollout("a batch of 0 nodes would never start".into()));
        command.rollout = Some(Rollout { batch: 150, percent: true, max_failures: 0 });
        given::<Deployment>([]).when(C::Launch(command)).then_rejected(R::InvalidRollout("150% is over 100%".into()));
    }

    fn guarded_update(within: u32) -> E {
        E::UpdateRequested {
            from_version: "1.0.0".into(),
            version: "1.1.0".into(),
            image: "127.0.0.1:5000/sample/app:1.1.0".into(),
            mode: Mode::default(),
            env: BTreeMap::new(),
            services: vec![],
            rollout: None,
            rollback_within: Some(within),
            reconfigured: None,
            at: now(),
        }
    }

    fn rolled_back(reason: &str) -> E {
        E::RolledBack {
            from_version: "1.1.0".into(),
            version: "1.0.0".into(),
            image: "127.0.0.1:5000/sample/app:1.0.0".into(),
            env: BTreeMap::new(),
            services: vec![],
            reconfigured: None,
            reason: reason.into(),
            at: now(),
        }
    }

    #[test]
    fn a_guarded_update_that_fails_to_start_goes_back_to_the_version_before() {
        let failure = Failure { code: "image_not_found".into(), message: "manifest unknown".into() };
        let state = given::<Deployment>([launched(), guarded_update(30)])
            .when(report("edge-1", Status::Failed, Some(failure.clone())))
            .then([
                E::NodesSettled {
                    nodes: vec![Settled {
                        node: "edge-1".into(),
                        status: Status::Failed,
                        error: Some(failure),
                        reported_at: now(),
                    }],
                },
                rolled_back("1.1.0 did not start on edge-1: manifest unknown"),
            ]);
        assert_eq!((state.version.as_str(), state.guard.is_none()), ("1.0.0", true));
        assert_eq!(state.nodes["edge-2"].status, Status::PendingDeploy, "every node goes back");
    }

    #[test]
    fn a_guarded_update_with_new_values_goes_back_to_the_values_before_too() {
        let mut update = guarded_update(30);
        let values = Reconfigure { profile: Some("test".into()), overrides: [("MODE".into(), "x".into())].into() };
        if let E::UpdateRequested { reconfigured, .. } = &mut update {
            *reconfigured = Some(values.clone());
        }
        let failure = Failure { code: "image_not_found".into(), message: "manifest unknown".into() };
        let events = given::<Deployment>([launched(), update.clone()])
            .when(report("edge-1", Status::Failed, Some(failure)))
            .events();
        let Some(E::RolledBack { reconfigured, .. }) = events.last() else { panic!("{events:?}") };
        assert_eq!(reconfigured, &Some(Reconfigure::default()), "back to no profile and no overrides");
        let state = Deployment::fold(&[vec![launched(), update], events].concat());
        assert_eq!((state.profile, state.overrides), (None, BTreeMap::new()));
    }

    #[test]
    fn a_guarded_update_goes_back_if_it_stops_too_soon_and_stays_once_proven() {
        let running = E::NodesSettled {
            nodes: vec![Settled { node: "edge-1".into(), status: Status::Running, error: None, reported_at: now() }],
        };
        let drift = |secs: i64| C::RecordDrift {
            node: "edge-1".into(),
            container: "c".into(),
            drift: "stopped".into(),
            at: now() + chrono::Duration::seconds(secs),
        };
        let detected = |secs: i64| E::DriftDetected {
            node: "edge-1".into(),
            container: "c".into(),
            drift: "stopped".into(),
            at: now() + chrono::Duration::seconds(secs),
        };
        let E::RolledBack { from_version, version, image, env, services, .. } = rolled_back("") else { unreachable!() };
        let back = E::RolledBack {
            from_version,
            version,
            image,
            env,
            services,
            reconfigured: None,
            reason: "c of 1.1.0 was stopped on edge-1 within 30 s".into(),
            at: now() + chrono::Duration::seconds(10),
        };
        given::<Deployment>([launched(), guarded_update(30), running.clone()])
            .when(drift(10))
            .then([detected(10), back]);
        given::<Deployment>([launched(), guarded_update(30), running]).when(drift(31)).then([detected(31)]);
    }

    #[test]
    fn a_report_of_the_version_before_an_update_answers_nothing() {
        let of = |version: &str| C::SettleNodes {
            reports: vec![Settle {
                node: "edge-1".into(),
                version: version.into(),
                status: Status::Running,
                error: None,
                reported_at: now(),
            }],
        };
        let mut update = guarded_update(30);
        if let E::UpdateRequested { rollback_within, .. } = &mut update {
            *rollback_within = None;
        }
        given::<Deployment>([launched(), update.clone()]).when(of("1.0.0")).then([]);
        let state = given::<Deployment>([launched(), update]).when(of("1.1.0")).then([E::NodesSettled {
            nodes: vec![Settled { node: "edge-1".into(), status: Status::Running, error: None, reported_at: now() }],
        }]);
        assert_eq!(state.nodes["edge-1"].status, Status::Running);
    }
}
