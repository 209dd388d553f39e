//! The container runtime on Docker, through bollard: the only module that touches Docker.

use bollard::errors::Error as DockerError;
use std::collections::HashMap;

use bollard::models::{
    ContainerCreateBody, EndpointSettings, HostConfig, HostConfigLogConfig, NetworkCreateRequest, NetworkingConfig,
    PortBinding, PortMap, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptions, CreateImageOptions, InspectNetworkOptions, ListContainersOptions, LogsOptions,
    RemoveContainerOptions, RemoveImageOptions, StatsOptions, StopContainerOptions,
};
use bollard::Docker;
use events::compose::{Mount, Restart};
use events::policy::Policy;
use futures::StreamExt;

use crate::runtime::{
    ContainerRuntime, ContainerSpec, ContainerState, ErrorCode, Observed, ObservedContainer, RuntimeError, Sample,
};

/// A bind's host path with its symbolic links resolved, checked again: a link another
/// container left in an allowed directory must not lead Docker to the host's own paths. A path
/// that does not exist yet is taken as written (Docker makes it).
fn resolved_bind(policy: &Policy, source: &str) -> Result<String, RuntimeError> {
    let resolved = match std::fs::canonicalize(source) {
        Ok(path) => path.to_string_lossy().into_owned(),
        Err(_) => source.to_owned(),
    };
    policy
        .check_bind(&resolved)
        .map(|()| resolved)
        .map_err(|message| RuntimeError { code: ErrorCode::PolicyDenied, message })
}

/// `path` as a directory of this process's user alone (0700): made if missing; refused if it
/// is a link, not a directory, or another user's (someone else may write in `/dev/shm`).
fn private_dir(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    let refuse = |why: &str| std::io::Error::other(format!("{} {why}", path.display()));
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() || !meta.is_dir() => return Err(refuse("is not a directory")),
        Ok(meta) if meta.uid() != std::fs::metadata("/proc/self")?.uid() => return Err(refuse("is another user's")),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::DirBuilder::new().mode(0o700).create(path)?,
        Err(e) => return Err(e),
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
}

/// How long a container has to stop on SIGTERM before it is killed.
const STOP_GRACE_SECONDS: i32 = 10;

/// The capabilities a container keeps; every other is dropped. Docker's default set without
/// `NET_RAW` (forged packets), `MKNOD`, `AUDIT_WRITE`, `SETFCAP`, `SETPCAP` and `SYS_CHROOT`.
pub const CAPABILITIES: &[&str] =
    &["CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID", "NET_BIND_SERVICE"];
/// Processes a container may hold unless its version says otherwise: a fork bomb stays in its
/// container.
pub const PIDS_LIMIT: i64 = 4096;
/// Container logs are rotated: so many files of so much each, so an edge disk never fills.
pub const LOG_MAX_SIZE: &str = "10m";
pub const LOG_MAX_FILE: &str = "3";

#[derive(Debug, Clone)]
pub struct DockerRuntime {
    docker: Docker,
    /// Held while a network is looked for and made: Docker would make two of one name.
    networks: std::sync::Arc<tokio::sync::Mutex<()>>,
    /// The host paths a bind may resolve to.
    policy: Policy,
    /// Where each container's files under `/run/secrets` are kept, in memory (`tmpfs`).
    secrets_dir: std::path::PathBuf,
    /// Bytes its pulls downloaded.
    pulled: std::sync::Arc<crate::metrics::PulledBytes>,
    /// The pulls under way: by image, each layer's bytes come so far and its size.
    pulling: std::sync::Arc<std::sync::Mutex<Pulling>>,
}

/// Each image being pulled: by layer, the bytes come so far and the layer's size.
type Pulling = std::collections::BTreeMap<String, std::collections::BTreeMap<String, (u64, u64)>>;

/// Forgets an image's pull when it ends, however it ends.
struct PullUnderWay<'a> {
    pulling: &'a std::sync::Mutex<Pulling>,
    image: String,
}

impl PullUnderWay<'_> {
    fn layer(&self, layer: &str, bytes: u64, total: u64) {
        let mut pulling = self.pulling.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        pulling.entry(self.image.clone()).or_default().insert(layer.to_owned(), (bytes, total));
    }
}

impl Drop for PullUnderWay<'_> {
    fn drop(&mut self) {
        self.pulling.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(&self.image);
    }
}

/// Where secret files are kept unless told otherwise: shared memory, never the disk.
pub const SECRETS_DIR: &str = "/dev/shm/edge-node-secrets";

impl DockerRuntime {
    /// Connects where `DOCKER_HOST` says (or the default socket) and agrees on an API version.
    pub async fn connect() -> Result<DockerRuntime, RuntimeError> {
        DockerRuntime::with(Docker::connect_with_local_defaults().map_err(unavailable)?).await
    }

    /// Uses an existing connection, agreeing on an API version first.
    pub async fn with(docker: Docker) -> Result<DockerRuntime, RuntimeError> {
        let docker = docker.negotiate_version().await.map_err(unavailable)?;
        docker.ping().await.map_err(unavailable)?;
        let secrets_dir = std::path::PathBuf::from(SECRETS_DIR);
        Ok(DockerRuntime {
            docker,
            networks: Default::default(),
            policy: Policy::default(),
            secrets_dir,
            pulled: Default::default(),
            pulling: Default::default(),
        })
    }

    /// Removes every container of `node` (by its label), running or not: how many.
    pub async fn remove_node(&self, node: &str) -> Result<usize, RuntimeError> {
        let filters = [("label".to_owned(), vec![format!("{}={node}", crate::runtime::NODE_LABEL)])].into();
        let options = ListContainersOptions { all: true, filters: Some(filters), ..Default::default() };
        let containers = self.docker.list_containers(Some(options)).await.map_err(|e| classify(Step::Other, e))?;
        let mut removed: usize = 0;
        for id in containers.into_iter().filter_map(|c| c.id) {
            let options = RemoveContainerOptions { force: true, v: true, ..Default::default() };
            self.docker.remove_container(&id, Some(options)).await.map_err(|e| classify(Step::Other, e))?;
            removed = removed.saturating_add(1);
        }
        Ok(removed)
    }

    /// Binds only what `policy` allows once their links are resolved (none by default).
    pub fn confined_to(mut self, policy: Policy) -> DockerRuntime {
        self.policy = policy;
        self
    }

    /// Keeps the containers' secret files under `dir` (it should be a `tmpfs`).
    pub fn with_secrets_dir(mut self, dir: std::path::PathBuf) -> DockerRuntime {
        self.secrets_dir = dir;
        self
    }

    /// Writes `spec`'s secret files, readable and not listable, for read-only binds at
    /// `/run/secrets/<name>`; returns the binds.
    fn write_secret_files(&self, spec: &ContainerSpec) -> Result<Vec<String>, RuntimeError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        if spec.files.is_empty() {
            return Ok(Vec::new());
        }
        let failed = |e: std::io::Error| RuntimeError::new(ErrorCode::Runtime, format!("writing a secret file: {e}"));
        let dir = self.secrets_dir.join(&spec.name);
        for path in [&self.secrets_dir, &dir] {
            private_dir(path).map_err(failed)?;
        }
        let mut binds = Vec::with_capacity(spec.files.len());
        for file in &spec.files {
            if !file.name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
                || file.name.starts_with('.')
            {
                return Err(RuntimeError::new(
                    ErrorCode::PolicyDenied,
                    format!("`{}` is not a secret's name", file.name),
                ));
            }
            let path = dir.join(&file.name);
            let mut out = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o444)
                .open(&path)
                .map_err(failed)?;
            out.write_all(&file.content).map_err(failed)?;
            binds.push(format!("{}:/run/secrets/{}:ro", path.display(), file.name));
        }
        Ok(binds)
    }
}

fn unavailable(e: DockerError) -> RuntimeError {
    RuntimeError::new(ErrorCode::RuntimeUnavailable, e.to_string())
}

/// The step whose failure is being sorted: the same words mean different things in each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Pull,
    Create,
    Other,
}

/// Sorts Docker's answers into the failure codes a node reports.
fn classify(step: Step, e: DockerError) -> RuntimeError {
    let message = match &e {
        DockerError::DockerResponseServerError { message, .. } => message.clone(),
        DockerError::DockerStreamError { error } => error.clone(),
        _ => e.to_string(),
    };
    let lower = message.to_lowercase();
    let status = match &e {
        DockerError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    };
    let code = if lower.contains("invalid reference format") || lower.contains("invalid tag format") {
        ErrorCode::InvalidImageReference
    } else if (step == Step::Pull
        && (status == Some(404) || lower.contains("manifest unknown") || lower.contains("not found")))
        || (step == Step::Create && lower.contains("no such image"))
    {
        ErrorCode::ImageNotFound
    } else if matches!(e, DockerError::HyperResponseError { .. } | DockerError::IOError { .. }) {
        ErrorCode::RuntimeUnavailable
    } else {
        ErrorCode::Runtime
    };
    RuntimeError::new(code, message)
}

impl ContainerRuntime for DockerRuntime {
    fn pulled_bytes(&self) -> u64 {
        self.pulled.get()
    }

    fn pulls(&self) -> Vec<events::telemetry::Pull> {
        let pulling = self.pulling.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        pulling
            .iter()
            .map(|(image, layers)| {
                let sum = |pick: fn(&(u64, u64)) -> u64| layers.values().map(pick).fold(0, u64::saturating_add);
                events::telemetry::Pull { image: image.clone(), bytes: sum(|l| l.0), total: sum(|l| l.1) }
            })
            .collect()
    }

    async fn observe(&self, name: &str, image: &str) -> Result<Observed, RuntimeError> {
        let container = match self.docker.inspect_container(name, None).await {
            Ok(found) => {
                let running = found.state.and_then(|s| s.running).unwrap_or(false);
                let config = found.config.unwrap_or_default();
                let (image, env) = (config.image.unwrap_or_default(), config.env.unwrap_or_default());
                let image_id = found.image.unwrap_or_default();
                found.id.map(|id| ObservedContainer { id, running, image, image_id, env })
            }
            Err(DockerError::DockerResponseServerError { status_code: 404, .. }) => None,
            Err(e) => return Err(classify(Step::Other, e)),
        };
        let image_present = match self.docker.inspect_image(image).await {
            Ok(_) => true,
            Err(DockerError::DockerResponseServerError { status_code: 404, .. }) => false,
            Err(e) => return Err(classify(Step::Other, e)),
        };
        Ok(Observed { container, image_present })
    }

    async fn pull(&self, image: &str) -> Result<(), RuntimeError> {
        if self.image_id(image).await?.is_some() {
            return Ok(());
        }
        self.pull_again(image).await
    }

    async fn pull_again(&self, image: &str) -> Result<(), RuntimeError> {
        // Without a tag the engine would pull every tag of the repository: name one.
        let (from_image, tag) = split_tag(image);
        let options = CreateImageOptions {
            from_image: Some(from_image.to_owned()),
            tag: Some(tag.to_owned()),
            ..Default::default()
        };
        let mut progress = self.docker.create_image(Some(options), None, None);
        // Each layer's size, as its download says: counted once the pull is over.
        let mut layers: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
        let under_way = PullUnderWay { pulling: &self.pulling, image: image.to_owned() };
        while let Some(step) = progress.next().await {
            let step = step.map_err(|e| classify(Step::Pull, e))?;
            if let Some(detail) = step.error_detail {
                let message = detail.message.unwrap_or_else(|| "the pull failed".to_owned());
                return Err(classify(Step::Pull, DockerError::DockerStreamError { error: message }));
            }
            if let (Some("Download complete"), Some(id)) = (step.status.as_deref(), &step.id) {
                if let Some(size) = layers.get(id) {
                    under_way.layer(id, *size, *size);
                }
            }
            if let (Some(status), Some(detail)) = (&step.status, &step.progress_detail) {
                tracing::debug!(image, status, current = detail.current, total = detail.total, "pulling");
                if let (Some(id), Some(total)) = (&step.id, detail.total.and_then(|t| u64::try_from(t).ok())) {
                    if status == "Downloading" {
                        layers.insert(id.clone(), total);
                        let bytes = detail.current.and_then(|c| u64::try_from(c).ok()).unwrap_or(0);
                        under_way.layer(id, bytes, total);
                    }
                }
            }
        }
        self.pulled.add(layers.values().fold(0, |sum, size| sum.saturating_add(*size)));
        Ok(())
    }

    async fn sample(&self, id: &str) -> Result<Sample, RuntimeError> {
        let inspected = self.docker.inspect_container(id, None).await.map_err(|e| classify(Step::Other, e))?;
        let state = inspected.state.and_then(|s| s.status).map(|s| s.to_string()).unwrap_or_default();
        let restarts = inspected.restart_count.unwrap_or(0).max(0) as u64;
        let options = StatsOptions { stream: false, one_shot: true };
        let stats = match self.docker.stats(id, Some(options)).next().await {
            Some(Ok(stats)) => stats,
            Some(Err(e)) => return Err(classify(Step::Other, e)),
            None => return Ok(Sample { state, restarts, ..Sample::default() }),
        };
        let cpu = stats.cpu_stats.unwrap_or_default();
        Ok(Sample {
            state,
            restarts,
            cpu_total: cpu.cpu_usage.and_then(|u| u.total_usage).unwrap_or(0),
            cpu_system: cpu.system_cpu_usage.unwrap_or(0),
            online_cpus: cpu.online_cpus.unwrap_or(1) as u64,
            memory_bytes: stats.memory_stats.and_then(|m| m.usage).unwrap_or(0),
        })
    }

    async fn image_id(&self, image: &str) -> Result<Option<String>, RuntimeError> {
        match self.docker.inspect_image(image).await {
            Ok(found) => Ok(found.id),
            Err(DockerError::DockerResponseServerError { status_code: 404, .. }) => Ok(None),
            Err(e) => Err(classify(Step::Other, e)),
        }
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<String, RuntimeError> {
        if let Ok(existing) = self.docker.inspect_container(&spec.name, None).await {
            if let Some(id) = existing.id {
                return Ok(id);
            }
        }
        if let Some((network, _)) = &spec.network {
            self.ensure_network(network, &spec.labels).await?;
        }
        let mut bindings: PortMap = HashMap::new();
        for port in &spec.ports {
            let binding =
                PortBinding { host_ip: port.host_ip.clone(), host_port: port.host_port.map(|p| p.to_string()) };
            bindings
                .entry(port.container_key())
                .or_insert_with(|| Some(Vec::new()))
                .get_or_insert_default()
                .push(binding);
        }
        let mut binds = Vec::new();
        for mount in &spec.mounts {
            let (source, target, read_only) = match mount {
                Mount::Volume { name, target, read_only } => (name.clone(), target, read_only),
                Mount::Bind { source, target, read_only } => (resolved_bind(&self.policy, source)?, target, read_only),
            };
            binds.push(format!("{source}:{target}{}", if *read_only { ":ro" } else { "" }));
        }
        binds.extend(self.write_secret_files(spec)?);
        let restart_policy = spec.restart.map(|r| {
            let (name, retries) = match r {
                Restart::No => (RestartPolicyNameEnum::NO, None),
                Restart::Always => (RestartPolicyNameEnum::ALWAYS, None),
                Restart::UnlessStopped => (RestartPolicyNameEnum::UNLESS_STOPPED, None),
                Restart::OnFailure(retries) => (RestartPolicyNameEnum::ON_FAILURE, retries.map(i64::from)),
            };
            RestartPolicy { name: Some(name), maximum_retry_count: retries }
        });
        // On the version's network each service answers to its own name.
        let networking_config = spec.network.as_ref().map(|(network, alias)| {
            let endpoint = EndpointSettings { aliases: Some(vec![alias.clone()]), ..Default::default() };
            NetworkingConfig { endpoints_config: Some([(network.clone(), endpoint)].into_iter().collect()) }
        });
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            cmd: (!spec.command.is_empty()).then(|| spec.command.clone()),
            env: Some(spec.env.clone()),
            labels: Some(spec.labels.clone()),
            exposed_ports: Some(bindings.keys().cloned().collect()).filter(|p: &Vec<String>| !p.is_empty()),
            host_config: Some(HostConfig {
                // An init process forwards signals, so a stop never waits for the kill timeout.
                init: Some(true),
                port_bindings: Some(bindings).filter(|b| !b.is_empty()),
                binds: Some(binds).filter(|b| !b.is_empty()),
                restart_policy,
                network_mode: spec.network.as_ref().map(|(network, _)| network.clone()),
                cap_drop: Some(vec!["ALL".to_owned()]),
                cap_add: Some(CAPABILITIES.iter().map(|c| c.to_string()).collect()),
                // No process gains privileges by exec (setuid binaries).
                security_opt: Some(vec!["no-new-privileges:true".to_owned()]),
                pids_limit: Some(spec.limits.pids.unwrap_or(PIDS_LIMIT)),
                memory: spec.limits.memory,
                nano_cpus: spec.limits.nano_cpus,
                log_config: Some(HostConfigLogConfig {
                    typ: Some("json-file".to_owned()),
                    config: Some(HashMap::from([
                        ("max-size".to_owned(), LOG_MAX_SIZE.to_owned()),
                        ("max-file".to_owned(), LOG_MAX_FILE.to_owned()),
                    ])),
                }),
                ..Default::default()
            }),
            networking_config,
            ..Default::default()
        };
        let options = CreateContainerOptions { name: Some(spec.name.clone()), ..Default::default() };
        // A create this node asked for before it was killed may still hold the name: it is
        // either made soon (and is this very container) or given up (and the name is free).
        let mut attempts = 0u32;
        loop {
            match self.docker.create_container(Some(options.clone()), body.clone()).await {
                Ok(created) => return Ok(created.id),
                Err(DockerError::DockerResponseServerError { status_code: 409, .. }) if attempts < 50 => {
                    if let Ok(Some(id)) = self.docker.inspect_container(&spec.name, None).await.map(|c| c.id) {
                        return Ok(id);
                    }
                    attempts = attempts.saturating_add(1);
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(e) => return Err(classify(Step::Create, e)),
            }
        }
    }

    async fn start(&self, id: &str) -> Result<ContainerState, RuntimeError> {
        match self.docker.start_container(id, None).await {
            Ok(()) => {}
            // 304: already started.
            Err(DockerError::DockerResponseServerError { status_code: 304, .. }) => {}
            Err(e) => return Err(classify(Step::Other, e)),
        }
        let inspected = self.docker.inspect_container(id, None).await.map_err(|e| classify(Step::Other, e))?;
        let state = inspected.state.unwrap_or_default();
        Ok(ContainerState {
            image_id: inspected.image.unwrap_or_default(),
            running: state.running.unwrap_or(false),
            exit_code: state.exit_code,
            error: state.error.filter(|e| !e.is_empty()),
        })
    }

    async fn logs(
        &self,
        id: &str,
        offset: u64,
        limit: usize,
        timestamps: bool,
    ) -> Result<(Vec<String>, bool), RuntimeError> {
        let options = LogsOptions { stdout: true, stderr: true, timestamps, ..Default::default() };
        let mut output = self.docker.logs(id, Some(options));
        // Read as far as the page and one line past it, never the whole log into memory.
        let mut page = Page::new(offset, limit);
        while let Some(chunk) = output.next().await {
            if page.take(&chunk.map_err(|e| classify(Step::Other, e))?.into_bytes()) {
                return Ok(page.done());
            }
        }
        page.end();
        Ok(page.done())
    }

    async fn stop(&self, id: &str) -> Result<(), RuntimeError> {
        let options = StopContainerOptions { t: Some(STOP_GRACE_SECONDS), ..Default::default() };
        match self.docker.stop_container(id, Some(options)).await {
            // 304: already stopped.
            Ok(()) | Err(DockerError::DockerResponseServerError { status_code: 304, .. }) => Ok(()),
            Err(e) => Err(classify(Step::Other, e)),
        }
    }

    async fn remove(&self, id: &str, image: Option<&str>) -> Result<(), RuntimeError> {
        let name = self.docker.inspect_container(id, None).await.ok().and_then(|c| c.name);
        let options = RemoveContainerOptions { force: true, ..Default::default() };
        match self.docker.remove_container(id, Some(options)).await {
            Ok(()) | Err(DockerError::DockerResponseServerError { status_code: 404, .. }) => {}
            Err(e) => return Err(classify(Step::Other, e)),
        }
        // Its secret files go with it.
        if let Some(name) = name.as_deref().map(|n| n.trim_start_matches('/')).filter(|n| !n.is_empty()) {
            let _ = std::fs::remove_dir_all(self.secrets_dir.join(name));
        }
        let Some(image) = image else { return Ok(()) };
        // Removing one of several tags of an image only untags it, whoever uses it: keep it while
        // a container was created from this very reference. (The last tag of content in use
        // is refused by Docker itself, with 409.) Every container is looked at: Docker's
        // `ancestor` filter does not take a reference pinned to a digest.
        let users = ListContainersOptions { all: true, ..Default::default() };
        match self.docker.list_containers(Some(users)).await {
            Ok(users) if users.iter().any(|c| c.image.as_deref() == Some(image)) => return Ok(()),
            Ok(_) | Err(DockerError::DockerResponseServerError { status_code: 404, .. }) => {}
            Err(e) => return Err(classify(Step::Other, e)),
        }
        match self.docker.remove_image(image, None::<RemoveImageOptions>, None).await {
            // 409: another container uses it; 404: gone already. Either way it stays as it is.
            Ok(_) | Err(DockerError::DockerResponseServerError { status_code: 404 | 409, .. }) => Ok(()),
            Err(e) => Err(classify(Step::Other, e)),
        }
    }

    async fn remove_network(&self, name: &str) -> Result<(), RuntimeError> {
        match self.docker.remove_network(name).await {
            Ok(()) | Err(DockerError::DockerResponseServerError { status_code: 404, .. }) => Ok(()),
            Err(e) => Err(classify(Step::Other, e)),
        }
    }
}

impl DockerRuntime {
    /// Makes the network if it is missing; one made meanwhile by another container's create
    /// is as good.
    async fn ensure_network(&self, name: &str, labels: &HashMap<String, String>) -> Result<(), RuntimeError> {
        let _one_at_a_time = self.networks.lock().await;
        match self.docker.inspect_network(name, None::<InspectNetworkOptions>).await {
            Ok(_) => return Ok(()),
            Err(DockerError::DockerResponseServerError { status_code: 404, .. }) => {}
            Err(e) => return Err(classify(Step::Other, e)),
        }
        let request = NetworkCreateRequest {
            name: name.to_owned(),
            driver: Some("bridge".to_owned()),
            labels: Some(labels.clone()),
            ..Default::default()
        };
        match self.docker.create_network(request).await {
            Ok(_) | Err(DockerError::DockerResponseServerError { status_code: 409, .. }) => Ok(()),
            Err(e) => Err(classify(Step::Other, e)),
        }
    }
}

/// Splits a reference into what to pull and its tag (or digest); `latest` when it has neither.
fn split_tag(image: &str) -> (&str, &str) {
    if let Some((name, digest)) = image.split_once('@') {
        return (name, digest);
    }
    let (name, tag) = events::application::tagged(image);
    (name, tag.unwrap_or("latest"))
}

#[cfg(test)]
mod tests {
    use super::{resolved_bind, split_tag, ErrorCode, Policy};

    #[test]
    fn a_bind_through_a_symbolic_link_out_of_the_allowed_paths_is_refused() {
        let dir = std::env::temp_dir().join(format!("bind-policy-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let elsewhere = tempfile_dir("bind-policy-elsewhere");
        std::os::unix::fs::symlink("/", dir.join("root")).unwrap();
        std::os::unix::fs::symlink("/etc", dir.join("config")).unwrap();
        std::os::unix::fs::symlink(&elsewhere, dir.join("out")).unwrap();
        let canonical = std::fs::canonicalize(&dir).unwrap().to_string_lossy().into_owned();
        let policy = Policy { binds: vec![canonical], ..Policy::default() };
        for link in ["root", "config", "out"] {
            let refused = resolved_bind(&policy, &dir.join(link).to_string_lossy()).unwrap_err();
            assert_eq!(refused.code, ErrorCode::PolicyDenied, "{link}: {refused}");
        }
        let data = dir.join("data").to_string_lossy().into_owned();
        let resolved = resolved_bind(&policy, &data).unwrap();
        assert_eq!(resolved, std::fs::canonicalize(&data).unwrap().to_string_lossy());
        // Without an allowed path, nothing is bound.
        assert_eq!(resolved_bind(&Policy::default(), &data).unwrap_err().code, ErrorCode::PolicyDenied);
        std::fs::remove_dir_all(&elsewhere).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn secret_files_are_kept_in_a_directory_of_the_node_alone_never_through_a_link() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile_dir("secrets-dir");
        let mine = dir.join("mine");
        super::private_dir(&mine).unwrap();
        assert_eq!(std::fs::metadata(&mine).unwrap().permissions().mode() & 0o777, 0o700);
        super::private_dir(&mine).unwrap();
        let planted = dir.join("planted");
        std::os::unix::fs::symlink(&mine, &planted).unwrap();
        assert!(super::private_dir(&planted).is_err(), "a link someone left is not followed");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn tempfile_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_reference_is_split_into_name_and_tag() {
        assert_eq!(split_tag("127.0.0.1:5000/sample/app:1.0.0"), ("127.0.0.1:5000/sample/app", "1.0.0"));
        assert_eq!(split_tag("127.0.0.1:5000/sample/app"), ("127.0.0.1:5000/sample/app", "latest"));
        assert_eq!(split_tag("app"), ("app", "latest"));
        assert_eq!(split_tag("127.0.0.1:5000/app@sha256:abc"), ("127.0.0.1:5000/app", "sha256:abc"));
    }
}

/// The longest line of a container's log a page holds whole; the rest of it is cut.
const LONGEST_LINE: usize = 64 * 1024;

/// A page of a log read as it streams: `limit` lines from line `offset`, and whether more follow.
struct Page {
    offset: u64,
    limit: usize,
    /// Lines seen so far.
    seen: u64,
    lines: Vec<String>,
    partial: Vec<u8>,
    more: bool,
}

impl Page {
    fn new(offset: u64, limit: usize) -> Page {
        Page { offset, limit, seen: 0, lines: Vec::new(), partial: Vec::new(), more: false }
    }

    /// Takes a chunk of the log; true once the page is full and a line past it was seen.
    fn take(&mut self, chunk: &[u8]) -> bool {
        for &byte in chunk {
            if byte != b'\n' {
                if self.partial.len() < LONGEST_LINE {
                    self.partial.push(byte);
                }
                continue;
            }
            if self.line() {
                return true;
            }
        }
        false
    }

    /// The line read so far is whole; true once a line past the page was seen.
    fn line(&mut self) -> bool {
        let bytes = std::mem::take(&mut self.partial);
        let text = String::from_utf8_lossy(&bytes);
        let text = text.strip_suffix('\r').unwrap_or(&text);
        if self.seen >= self.offset {
            if self.lines.len() >= self.limit {
                self.more = true;
                return true;
            }
            self.lines.push(text.to_owned());
        }
        self.seen = self.seen.saturating_add(1);
        false
    }

    /// The log ended: a last line without its newline counts.
    fn end(&mut self) {
        if !self.partial.is_empty() {
            self.line();
        }
    }

    fn done(self) -> (Vec<String>, bool) {
        (self.lines, self.more)
    }
}

#[cfg(test)]
mod page_tests {
    use super::Page;

    fn read(log: &str, offset: u64, limit: usize, chunk: usize) -> (Vec<String>, bool) {
        let mut page = Page::new(offset, limit);
        for piece in log.as_bytes().chunks(chunk.max(1)) {
            if page.take(piece) {
                return page.done();
            }
        }
        page.end();
        page.done()
    }

    #[test]
    fn a_page_is_its_lines_from_the_offset_and_says_whether_more_follow() {
        let log = "a\nb\r\nc\nd";
        for chunk in [1, 2, 3, 100] {
            assert_eq!(read(log, 0, 2, chunk), (vec!["a".to_owned(), "b".to_owned()], true));
            assert_eq!(read(log, 2, 2, chunk), (vec!["c".to_owned(), "d".to_owned()], false));
            assert_eq!(read(log, 3, 5, chunk), (vec!["d".to_owned()], false));
            assert_eq!(read(log, 9, 5, chunk), (vec![], false));
        }
        let long = "x".repeat(super::LONGEST_LINE * 2) + "\ny\n";
        let (lines, more) = read(&long, 0, 1, 4096);
        assert_eq!((lines[0].len(), more), (super::LONGEST_LINE, true));
    }
}
