//! The orchestration engine: the command path onto the JetStream event store, the projectors
//! that keep read models in sled, the workers (the router that addresses work to nodes, the
//! ingestor of node reports, selector membership, tenant deletion), the credentials on the bus
//! (`trust`, `credentials`), node liveness from the heartbeats, and the HTTP API. The `engine`
//! binary (`src/main.rs`, `src/cli.rs`) also carries the operator CLI.
//!
//! It deliberately holds no state of its own beyond its read models: delete the sled directory
//! and it rebuilds them from the log. It never talks to Docker; edge nodes do.
//!
//! Two engines may run at once on one stream: each folds the whole log into its own read
//! models, while the workers are durable consumers whose messages go to one engine or the
//! other; every command they issue is idempotent, so nothing is done twice.
//!
//! It reads the log, the nodes' reports and the API's bodies, any of which may be hostile: no
//! arithmetic that can overflow, no indexing that can panic, no slicing of a string off a
//! character boundary.

#![cfg_attr(not(test), deny(clippy::arithmetic_side_effects, clippy::indexing_slicing, clippy::string_slice))]

pub mod api;
pub mod auth;
pub mod command;
pub mod credentials;
pub mod dashboard;
pub mod deadlines;
pub mod liveness;
pub mod metrics;
pub mod projector;
pub mod read_model;
pub mod registry;
pub mod secrets;
pub mod trust;
pub mod wfm;
pub mod worker;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::task::JoinSet;

use crate::command::CommandHandler;
use crate::projector::ProjectorConfig;
use crate::read_model::{Deployments, Nodes, Notifications};
use bus::store::{EventStore, StoreConfig};

#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// One server, or a cluster's members separated by commas.
    pub nats_url: String,
    /// The trust directory (`engine trust init`): the engine's credentials, the account's
    /// signing key, the operator key that signs revocations, the CA of the servers.
    pub trust_dir: PathBuf,
    /// Where the HTTP API listens; port 0 picks a free one.
    pub listen: SocketAddr,
    /// The sled directory of the read models.
    pub data_dir: PathBuf,
    pub store: StoreConfig,
    pub projector: ProjectorConfig,
    /// Each API token's rate budget.
    pub rate_limit: auth::RateLimit,
    /// The API's certificate and key (PEM): with them it speaks HTTPS only.
    pub tls: Option<ApiTls>,
    /// How long an in-flight status may stand before the engine says the node is overdue.
    pub deadlines: events::status::Deadlines,
    /// Where the web dashboard listens (port 0 picks a free one); none: no dashboard.
    pub dashboard: Option<SocketAddr>,
    /// Where the Margo Workload Fleet Manager API listens (port 0 picks a free one), over the
    /// API's TLS; none: no Margo device is served.
    pub margo: Option<SocketAddr>,
    /// How often Margo devices are expected to poll: three polls missed, a device is
    /// unreachable.
    pub margo_poll_interval: Duration,
}

/// The API's certificate chain and private key, as PEM files.
#[derive(Debug, Clone)]
pub struct ApiTls {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            nats_url: "tls://127.0.0.1:4222".to_owned(),
            trust_dir: PathBuf::from("trust"),
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("engine-data"),
            store: StoreConfig::default(),
            projector: ProjectorConfig::default(),
            rate_limit: auth::RateLimit::default(),
            tls: None,
            deadlines: events::status::Deadlines::default(),
            dashboard: None,
            margo: None,
            margo_poll_interval: Duration::from_secs(30),
        }
    }
}

/// `text` as one value of a URL's query: every byte but the unreserved ones percent-encoded.
pub fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => char::from(b).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A client of the API: over HTTPS it trusts the certificate authority in `ca` (PEM) alone, and
/// no authority at all without one.
pub fn api_client(ca: Option<&std::path::Path>) -> anyhow::Result<reqwest::Client> {
    Ok(api_client_builder(ca)?.build()?)
}

/// [`api_client`], to be configured further.
pub fn api_client_builder(ca: Option<&std::path::Path>) -> anyhow::Result<reqwest::ClientBuilder> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    if let Some(ca) = ca {
        for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca)
            .with_context(|| format!("reading the certificate authority {}", ca.display()))?
        {
            roots.add(cert.with_context(|| format!("reading {}", ca.display()))?)?;
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(reqwest::Client::builder().use_preconfigured_tls(tls))
}

/// A running engine. Dropping it stops every task.
#[derive(Debug)]
pub struct Engine {
    pub api_addr: SocketAddr,
    /// Where the dashboard listens, when it does.
    pub dashboard_addr: Option<SocketAddr>,
    /// Where the Margo Workload Fleet Manager API listens, when it does.
    pub margo_addr: Option<SocketAddr>,
    pub commands: CommandHandler,
    pub deployments: Deployments,
    pub notifications: Notifications,
    pub nodes: Nodes,
    pub liveness: liveness::Liveness,
    pub issuer: credentials::Issuer,
    tasks: JoinSet<anyhow::Result<()>>,
    /// Close the API's and the dashboard's connections, which live in tasks of their own.
    servers: Vec<axum_server::Handle>,
}

impl Drop for Engine {
    fn drop(&mut self) {
        for server in &self.servers {
            server.shutdown();
        }
    }
}

impl Engine {
    pub async fn start(config: EngineConfig) -> anyhow::Result<Engine> {
        let trust = Arc::new(
            trust::Trust::load(&config.trust_dir)
                .with_context(|| format!("loading the trust directory {}", config.trust_dir.display()))?,
        );
        let client = trust.engine_connection(&config.nats_url).connect().await?;
        let system = trust.system_connection(&config.nats_url).connect().await?;
        let store = EventStore::open(client, &config.store)
            .await
            .context("opening the event store")?
            .signed_by(trust.engine().key().clone());
        let dead = bus::dead::DeadLetters::open(store.jetstream().clone(), config.store.replicas).await?;
        let store = store.setting_aside_to(dead);
        let db = sled::open(&config.data_dir)
            .with_context(|| format!("opening the read models in {}", config.data_dir.display()))?;
        let models = read_model::open(&db)?;
        let deployments = Deployments::new(models.clone());
        let notifications = Notifications::new(models.clone());
        let nodes = Nodes::new(models.clone());
        let commands = CommandHandler::new(store.clone());
        let issuer = credentials::Issuer::new(trust.clone(), commands.clone(), nodes.clone());
        liveness::open_stream(store.jetstream(), config.store.replicas).await?;
        let keys = secrets::TenantKeys::open(store.jetstream(), config.store.replicas).await?;
        let liveness = liveness::Liveness::default();

        std::fs::create_dir_all(&config.data_dir)?;
        if let Some(path) = auth::first_admin(&commands, &config.data_dir).await? {
            tracing::info!(path = %path.display(), "issued the first admin token: use it as ENGINE_TOKEN");
        }
        let listener =
            std::net::TcpListener::bind(config.listen).with_context(|| format!("listening on {}", config.listen))?;
        listener.set_nonblocking(true)?;
        let api_addr = listener.local_addr()?;
        let tls = match &config.tls {
            Some(files) => Some(
                axum_server::tls_rustls::RustlsConfig::from_pem_file(&files.cert, &files.key)
                    .await
                    .with_context(|| format!("loading the API's TLS certificate {}", files.cert.display()))?,
            ),
            None => None,
        };
        let state = api::AppState {
            commands: commands.clone(),
            deployments: deployments.clone(),
            notifications: notifications.clone(),
            nodes: nodes.clone(),
            catalog: read_model::Catalog::new(models.clone()),
            liveness: liveness.clone(),
            issuer: issuer.clone(),
            keys: keys.clone(),
            registry: registry::client()?,
            metrics: metrics::Metrics::new(commands.metrics()),
        };
        let auth = auth::Auth::new(commands.clone(), config.rate_limit);
        let mut servers = vec![(listener, api::router(state.clone(), auth.clone()), "the API")];
        let mut dashboard_addr = None;
        if let Some(addr) = config.dashboard {
            let listener =
                std::net::TcpListener::bind(addr).with_context(|| format!("listening on {addr} (the dashboard)"))?;
            listener.set_nonblocking(true)?;
            dashboard_addr = Some(listener.local_addr()?);
            servers.push((listener, dashboard::router(state, auth, tls.is_some()), "the dashboard"));
        }
        let mut margo_addr = None;
        if let Some(addr) = config.margo {
            anyhow::ensure!(tls.is_some(), "the Margo API is served over TLS alone: give the API a certificate");
            let listener =
                std::net::TcpListener::bind(addr).with_context(|| format!("listening on {addr} (the Margo API)"))?;
            listener.set_nonblocking(true)?;
            margo_addr = Some(listener.local_addr()?);
            let ca = std::fs::read_to_string(trust.ca())
                .with_context(|| format!("reading the certificate authority {}", trust.ca().display()))?;
            let wfm = wfm::Wfm::new(commands.clone(), models.clone(), ca, config.margo_poll_interval);
            servers.push((listener, wfm::router(wfm), "the Margo API"));
        }

        let mut tasks = JoinSet::new();
        let (s, m, p) = (store.clone(), models, config.projector);
        tasks.spawn(supervise("projector", move || projector::run(s.clone(), m.clone(), p.clone())));
        let (c, d, n) = (commands.clone(), deployments.clone(), nodes.clone());
        tasks.spawn(supervise("targets", move || worker::membership(c.clone(), d.clone(), n.clone())));
        let (c, k) = (commands.clone(), keys.clone());
        tasks.spawn(supervise("tenants", move || worker::tenants(c.clone(), k.clone())));
        let (s, k) = (store.clone(), keys.clone());
        tasks.spawn(supervise("router", move || worker::route(s.clone(), k.clone())));
        let keys = Arc::new(worker::NodeKeys::default());
        let (c, k) = (commands.clone(), keys.clone());
        tasks.spawn(supervise("ingest", move || worker::ingest(c.clone(), k.clone())));
        let c = commands.clone();
        tasks.spawn(supervise("settle", move || worker::settle(c.clone())));
        let (c, d, n, t) = (commands.clone(), deployments.clone(), nodes.clone(), trust.clone());
        tasks.spawn(supervise("credentials", move || {
            credentials::run(c.clone(), d.clone(), n.clone(), t.clone(), system.clone(), keys.clone())
        }));
        let (c, l, n, every) = (commands.clone(), liveness.clone(), nodes.clone(), config.margo_poll_interval);
        tasks.spawn(supervise("liveness", move || liveness::run(c.clone(), l.clone(), n.clone(), every)));
        let (c, d, limits) = (commands.clone(), deployments.clone(), config.deadlines);
        tasks.spawn(supervise("deadlines", move || deadlines::run(c.clone(), d.clone(), limits)));
        let mut handles = Vec::new();
        for (listener, app, what) in servers {
            let handle = axum_server::Handle::new();
            handles.push(handle.clone());
            let tls = tls.clone();
            tasks.spawn(async move {
                let app = app.into_make_service();
                match tls {
                    Some(tls) => axum_server::from_tcp_rustls(listener, tls).handle(handle).serve(app).await,
                    None => axum_server::from_tcp(listener).handle(handle).serve(app).await,
                }
                .with_context(|| format!("serving {what}"))
            });
        }
        tracing::info!(%api_addr, dashboard = ?dashboard_addr, "engine started");
        Ok(Engine {
            api_addr,
            dashboard_addr,
            margo_addr,
            commands,
            deployments,
            notifications,
            nodes,
            liveness,
            issuer,
            tasks,
            servers: handles,
        })
    }

    /// Runs until the API server ends; returns its error.
    pub async fn wait(mut self) -> anyhow::Result<()> {
        match self.tasks.join_next().await {
            Some(Ok(result)) => result.and_then(|()| anyhow::bail!("an engine task ended")),
            Some(Err(e)) => Err(e.into()),
            None => Ok(()),
        }
    }
}

/// Runs the task `make` makes for as long as the engine runs: one that ends, fails or panics
/// is logged and made again, after a pause that doubles from 100 ms to 30 s (and starts over
/// once a task has run for a minute). No task's failure ends the engine.
async fn supervise<F, Fut>(name: &'static str, mut make: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    const FIRST_PAUSE: Duration = Duration::from_millis(100);
    const LONGEST_PAUSE: Duration = Duration::from_secs(30);
    const SETTLED: Duration = Duration::from_secs(60);
    let mut pause = FIRST_PAUSE;
    loop {
        let started = std::time::Instant::now();
        // Spawned apart, so that a panic is caught here; aborted with the supervisor, so that
        // an engine shut down leaves no task of its own behind.
        let mut task = Aborting(tokio::spawn(make()));
        match (&mut task.0).await {
            Ok(Ok(())) => tracing::error!(task = name, "an engine task ended; starting it again"),
            Ok(Err(e)) => {
                tracing::error!(task = name, error = format!("{e:#}"), "an engine task failed; starting it again")
            }
            Err(e) => tracing::error!(task = name, error = %e, "an engine task panicked; starting it again"),
        }
        if started.elapsed() >= SETTLED {
            pause = FIRST_PAUSE;
        }
        tokio::time::sleep(pause).await;
        pause = pause.saturating_mul(2).min(LONGEST_PAUSE);
    }
}

/// A spawned task, aborted when dropped.
struct Aborting<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for Aborting<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn a_task_that_panics_or_fails_is_started_again_and_the_supervisor_goes_on() {
        let runs = Arc::new(AtomicUsize::new(0));
        let counted = runs.clone();
        let supervisor = tokio::spawn(supervise("test", move || {
            let run = counted.fetch_add(1, Ordering::SeqCst);
            async move {
                match run {
                    0 => panic!("a bug"),
                    1 => anyhow::bail!("a failure"),
                    _ => std::future::pending().await,
                }
            }
        }));
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while runs.load(Ordering::SeqCst) < 3 {
            assert!(std::time::Instant::now() < deadline, "started {} times", runs.load(Ordering::SeqCst));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!supervisor.is_finished(), "the supervisor runs on");
        supervisor.abort();
    }
}
