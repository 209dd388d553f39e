//! What the agent needs of a container engine, as a trait: the Docker implementation is in
//! `docker`, a simulated one may stand behind it for fleet-scale benchmarks.

use std::collections::HashMap;
use std::future::Future;

use events::compose::{Mount, Port, Restart};

/// The label that ties a container to its deployment.
pub const DEPLOYMENT_LABEL: &str = "io.edge-orchestrator.deployment";
pub const NODE_LABEL: &str = "io.edge-orchestrator.node";
pub const TENANT_LABEL: &str = "io.edge-orchestrator.tenant";
pub const APPLICATION_LABEL: &str = "io.edge-orchestrator.application";
pub const VERSION_LABEL: &str = "io.edge-orchestrator.version";

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    /// Replaces the image's command when not empty.
    pub command: Vec<String>,
    /// `NAME=value` pairs.
    pub env: Vec<String>,
    pub labels: HashMap<String, String>,
    pub ports: Vec<Port>,
    pub mounts: Vec<Mount>,
    pub restart: Option<Restart>,
    /// The network it joins (made if missing) and its name there.
    pub network: Option<(String, String)>,
    /// What it may use; the node's defaults where absent.
    pub limits: events::compose::Limits,
    /// Environment values still sealed for this node, by name: the driver opens them into
    /// `env` just before the container is made, so that they are never kept in clear.
    pub secrets: std::collections::BTreeMap<String, String>,
    /// Files under `/run/secrets`, by name, still sealed: the driver opens them into `files`.
    pub secret_files: std::collections::BTreeMap<String, String>,
    /// The files under `/run/secrets`, opened, for the runtime alone.
    pub files: Vec<SecretFile>,
}

/// A file a container gets under `/run/secrets`. Its content is never shown.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretFile {
    pub name: String,
    pub content: Vec<u8>,
}

impl std::fmt::Debug for SecretFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretFile({}, ***)", self.name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerState {
    /// The ID of the image the container runs.
    pub image_id: String,
    pub running: bool,
    pub exit_code: Option<i64>,
    pub error: Option<String>,
}

/// Stable failure codes, carried in `failed` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    ImageNotFound,
    InvalidImageReference,
    RuntimeUnavailable,
    ContainerExited,
    /// The host refuses what the work asks of it (a bind of one of its own paths).
    PolicyDenied,
    /// A secret sealed for another node, altered, or with no key to open it.
    SecretUnreadable,
    Runtime,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::ImageNotFound => "image_not_found",
            ErrorCode::InvalidImageReference => "invalid_image_reference",
            ErrorCode::RuntimeUnavailable => "runtime_unavailable",
            ErrorCode::ContainerExited => "container_exited",
            ErrorCode::PolicyDenied => "policy_denied",
            ErrorCode::SecretUnreadable => "secret_unreadable",
            ErrorCode::Runtime => "runtime_error",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", code.as_str())]
pub struct RuntimeError {
    pub code: ErrorCode,
    pub message: String,
}

impl RuntimeError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> RuntimeError {
        RuntimeError { code, message: message.into() }
    }

    pub fn failure(&self) -> events::Failure {
        events::Failure { code: self.code.as_str().to_owned(), message: self.message.clone() }
    }
}

/// What the engine has of a deployment: its container, and whether the image it should run
/// is present.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Observed {
    pub container: Option<ObservedContainer>,
    pub image_present: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedContainer {
    pub id: String,
    pub running: bool,
    /// The reference it was created from.
    pub image: String,
    /// The ID of the image it runs.
    pub image_id: String,
    /// Its environment, `NAME=value`, the image's own variables included.
    pub env: Vec<String>,
}

/// A container's counters at one moment; CPU is cumulative, so a rate needs two samples.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Sample {
    pub state: String,
    pub restarts: u64,
    pub cpu_total: u64,
    pub cpu_system: u64,
    pub online_cpus: u64,
    pub memory_bytes: u64,
}

impl Sample {
    /// CPU use between `earlier` and this sample, in percent of one CPU.
    pub fn cpu_percent_since(&self, earlier: &Sample) -> f64 {
        let used = self.cpu_total.saturating_sub(earlier.cpu_total) as f64;
        let elapsed = self.cpu_system.saturating_sub(earlier.cpu_system) as f64;
        if elapsed == 0.0 {
            return 0.0;
        }
        used / elapsed * self.online_cpus.max(1) as f64 * 100.0
    }
}

pub trait ContainerRuntime: Send + Sync + 'static {
    /// Bytes of image layers downloaded since the runtime started, where it counts them.
    fn pulled_bytes(&self) -> u64 {
        0
    }

    /// The images being downloaded now, and how far each has come.
    fn pulls(&self) -> Vec<events::telemetry::Pull> {
        Vec::new()
    }

    /// The container's state and counters now.
    fn sample(&self, id: &str) -> impl Future<Output = Result<Sample, RuntimeError>> + Send;

    /// What exists of container `name` and `image`, without changing anything.
    fn observe(&self, name: &str, image: &str) -> impl Future<Output = Result<Observed, RuntimeError>> + Send;

    /// Makes `image` present locally: what is here already is not downloaded again.
    fn pull(&self, image: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// Downloads the tag again, whatever is here: a forced update.
    fn pull_again(&self, image: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// The ID of local image `image`, if present: two IDs differ when the content does.
    fn image_id(&self, image: &str) -> impl Future<Output = Result<Option<String>, RuntimeError>> + Send;

    /// Creates the container, or finds the one already created under `spec.name`; returns its id.
    fn create(&self, spec: &ContainerSpec) -> impl Future<Output = Result<String, RuntimeError>> + Send;

    /// Starts it (a running container is left alone) and says how it is once started.
    fn start(&self, id: &str) -> impl Future<Output = Result<ContainerState, RuntimeError>> + Send;

    /// Lines `offset..offset + limit` of the container's output (stdout and stderr), each
    /// beginning with when it was written if `timestamps`, and whether more follow.
    fn logs(
        &self,
        id: &str,
        offset: u64,
        limit: usize,
        timestamps: bool,
    ) -> impl Future<Output = Result<(Vec<String>, bool), RuntimeError>> + Send;

    /// Stops it (a stopped one is left alone).
    fn stop(&self, id: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// Removes the container (a missing one is fine), then `image`, if given, unless a
    /// container still uses it.
    fn remove(&self, id: &str, image: Option<&str>) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// Removes a network its containers have left (a missing one is fine).
    fn remove_network(&self, name: &str) -> impl Future<Output = Result<(), RuntimeError>> + Send;
}
