//! Measurements of the project's paths beside raw JetStream, in one run on one machine. Run
//! with `cargo bench -p benches`; each bench prints its figures.
//!
//! Timings live here and only here: tests assert behaviour, never speed.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use engine::{Engine, EngineConfig};
use events::deployment::DeploymentEvent;
use serde_json::{json, Value};

/// A representative event: a launch of one version on one node.
pub fn launched() -> DeploymentEvent {
    DeploymentEvent::Launched {
        application: "sample".into(),
        version: "1.0.0".into(),
        image: "127.0.0.1:5000/sample/app:1.0.0".into(),
        nodes: vec!["edge-1".into()],
        mode: Default::default(),
        selector: None,
        profile: None,
        overrides: Default::default(),
        env: Default::default(),
        services: Default::default(),
        rollout: None,
        secrets: Default::default(),
    }
}

/// Latency percentiles and rate of a set of timed operations.
#[derive(Debug, Clone, Copy)]
pub struct Figures {
    pub count: usize,
    pub per_second: f64,
    pub p50: Duration,
    pub p99: Duration,
}

impl Figures {
    /// From each operation's latency and the wall time of the whole run.
    pub fn from(mut latencies: Vec<Duration>, wall: Duration) -> Figures {
        latencies.sort();
        let at = |q: f64| latencies.get(((latencies.len() as f64 - 1.0) * q) as usize).copied().unwrap_or_default();
        Figures {
            count: latencies.len(),
            per_second: latencies.len() as f64 / wall.as_secs_f64(),
            p50: at(0.50),
            p99: at(0.99),
        }
    }

    /// Only a rate is known (pipelined work).
    pub fn rate(count: usize, wall: Duration) -> Figures {
        Figures { count, per_second: count as f64 / wall.as_secs_f64(), p50: Duration::ZERO, p99: Duration::ZERO }
    }
}

impl std::fmt::Display for Figures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:>9.0}/s over {:>6}", self.per_second, self.count)?;
        if self.p50 > Duration::ZERO {
            write!(f, "   p50 {:>7.3} ms   p99 {:>7.3} ms", ms(self.p50), ms(self.p99))?;
        }
        Ok(())
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// An engine in this process on `nats` (with its trust: credentials and TLS), its read models
/// in a temporary directory, and a client of its API.
#[derive(Debug)]
pub struct Api {
    pub engine: Engine,
    pub url: String,
    pub http: reqwest::Client,
    pub nats_url: String,
    pub ca: std::path::PathBuf,
    config: EngineConfig,
    data: tempfile::TempDir,
}

impl Api {
    pub async fn start(nats: &tests::NatsServer) -> Api {
        Api::start_on(&nats.url(), nats.trust(), 1).await
    }

    /// An engine on `nats_url` (one server or a cluster's members) trusted by `trust`, whose
    /// streams keep `replicas`.
    pub async fn start_on(nats_url: &str, trust: &engine::trust::Trust, replicas: usize) -> Api {
        Api::start_with(nats_url, trust, replicas, |_| {}).await
    }

    /// An engine as [`Api::start_on`] makes it, its configuration changed by `change`.
    pub async fn start_with(
        nats_url: &str,
        trust: &engine::trust::Trust,
        replicas: usize,
        change: impl FnOnce(&mut EngineConfig),
    ) -> Api {
        let data = tempfile::tempdir().expect("a temporary directory");
        let mut config = EngineConfig {
            nats_url: nats_url.to_owned(),
            trust_dir: trust.dir().to_owned(),
            listen: "127.0.0.1:0".parse().expect("a loopback address"),
            data_dir: data.path().join("engine"),
            store: bus::store::StoreConfig { replicas, ..Default::default() },
            tls: Some(engine::trust::Trust::server_tls(trust.dir())),
            ..EngineConfig::default()
        };
        change(&mut config);
        let engine = Engine::start(config.clone()).await.expect("the engine starts");
        let url = format!("https://{}", engine.api_addr);
        let (nats_url, ca) = (nats_url.to_owned(), trust.ca());
        let http = tests::admin_client(&engine.commands, &ca).await;
        Api { engine, url, http, nats_url, ca, config, data }
    }

    /// Stops the engine, leaving nothing of it running, and starts it again on the same read
    /// models (on a new port).
    pub async fn restart(self) -> Api {
        let Api { engine, nats_url, ca, config, data, .. } = self;
        drop(engine);
        let engine = Engine::start(config.clone()).await.expect("the engine starts again");
        let url = format!("https://{}", engine.api_addr);
        let http = tests::admin_client(&engine.commands, &ca).await;
        Api { engine, url, http, nats_url, ca, config, data }
    }

    /// Enrolls `node`: its credentials, with a key the engine made.
    pub async fn enroll(&self, node: &str) -> bus::Credentials {
        let meta = engine::command::CommandMeta::new("default", "bench");
        let enrolled =
            self.engine.issuer.enroll(node, Default::default(), None, &meta).await.expect("the node enrolls");
        bus::Credentials::parse(&enrolled.creds, None).expect("the engine's credentials parse")
    }

    /// Enrolls `size` simulated nodes (`sim-00000`, ...), [`ENROLLING_AT_ONCE`] at a time, and
    /// waits until the engine has made each one's consumer: their names and credentials. Says
    /// how long each took, as the benches that call it print their figures.
    #[allow(clippy::print_stdout)]
    pub async fn enroll_fleet(&self, size: usize) -> Vec<(String, bus::Credentials)> {
        use futures::StreamExt;
        let started = Instant::now();
        // A few at once: each is a command on its own node, with a key pair and a JWT made.
        let enrolled: Vec<(String, bus::Credentials)> = futures::stream::iter(0..size)
            .map(|i| async move {
                let node = format!("sim-{i:05}");
                let credentials = self.enroll(&node).await;
                (node, credentials)
            })
            .buffered(ENROLLING_AT_ONCE)
            .collect()
            .await;
        println!("  {size} nodes enrolled in {:.1?}", started.elapsed());
        record(&format!("fleet_{size}_enrolled_s"), started.elapsed().as_secs_f64());
        // Each node's consumer is made by the engine; a node connects once it is there.
        let stream = self.engine.commands.store().stream().clone();
        tests::eventually("every node's consumer", Duration::from_secs(1800), || async {
            (stream.clone().info().await.ok()?.state.consumer_count >= size).then_some(())
        })
        .await;
        println!("  every node's consumer made after {:.1?}", started.elapsed());
        enrolled
    }

    /// Waits until the engine knows `size` nodes online.
    pub async fn wait_online(&self, size: usize) {
        tests::eventually("every node to register", Duration::from_secs(1800), || async {
            let nodes = self.engine.nodes.all().ok()?;
            (nodes.iter().filter(|n| n.state == Some(events::node::NodeState::Online)).count() >= size).then_some(())
        })
        .await;
    }

    /// Enrolls `node` and writes its credentials file; returns the file.
    pub async fn enroll_to_file(&self, node: &str) -> std::path::PathBuf {
        let credentials = self.enroll(node).await;
        let path = self.data.path().join(format!("{node}.creds"));
        let seed = credentials.key().seed().expect("a seed");
        std::fs::write(&path, bus::Credentials::format(credentials.jwt(), Some(&seed)))
            .expect("writing the credentials");
        path
    }

    /// Posts `body`, as a client should: asked to slow down (429), it waits as long as told
    /// and asks again. Any other refusal ends the run, naming it.
    pub async fn post(&self, path: &str, body: Value) -> Value {
        loop {
            let response =
                self.http.post(format!("{}{path}", self.url)).json(&body).send().await.expect("the API answers");
            let status = response.status();
            if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
                let wait = response
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                    .unwrap_or(1);
                tokio::time::sleep(Duration::from_secs(wait)).await;
                continue;
            }
            let answer = response.json().await.unwrap_or(Value::Null);
            assert!(status.is_success(), "POST {path}: {status} {answer}");
            return answer;
        }
    }

    pub async fn get(&self, path: &str) -> Value {
        let response = self.http.get(format!("{}{path}", self.url)).send().await.expect("the API answers");
        response.json().await.unwrap_or(Value::Null)
    }

    /// Waits for `node` to register.
    pub async fn wait_node(&self, node: &str) {
        tests::eventually("the node to register", Duration::from_secs(60), || async {
            let response = self.http.get(format!("{}/v1/nodes/{node}", self.url)).send().await.ok()?;
            response.status().is_success().then_some(())
        })
        .await;
    }

    /// Registers `sample` with version 1.0.0 of `image`, published.
    pub async fn publish_sample(&self, image: &str) {
        self.post("/v1/applications", json!({"id": "sample", "name": "Sample"})).await;
        self.post("/v1/applications/sample/versions", json!({"version": "1.0.0", "image": image})).await;
        self.post("/v1/applications/sample/versions/1.0.0/publish", json!({})).await;
    }
}

/// Node `name` on the simulated runtime (no container engine in the way), in this process,
/// enrolled by `api` and reaching NATS at `nats_url`, its state under `data`.
pub async fn sim_node(
    api: &Api,
    nats_url: &str,
    name: &str,
    data: &Path,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    let config = edge_node::NodeConfig {
        nats_url: nats_url.to_owned(),
        credentials: Some(api.enroll(name).await),
        ca: Some(api.ca.clone()),
        node: name.to_owned(),
        data_dir: data.join(name),
        ..edge_node::NodeConfig::default()
    };
    let runtime = Arc::new(edge_node::sim::SimRuntime::new(Duration::ZERO));
    tokio::spawn(edge_node::driver::run(config, runtime))
}

/// The `edge-node` binary as it ships, as a process of its own, node `name` (enrolled by `api`) on
/// the project's Docker engine, its state under `data`; `extra` arguments after `run`'s own.
/// `scripts/bench.sh` builds the binary first.
pub async fn edge_node_process(api: &Api, name: &str, data: &Path, extra: &[&str]) -> tokio::process::Child {
    let binary = edge_node_binary();
    let docker_host = tests::docker_host().expect("DOCKER_HOST, from scripts/setup.sh");
    let creds = api.enroll_to_file(name).await;
    tokio::process::Command::new(&binary)
        .args(["run", "--nats", &api.nats_url, "--node", name])
        .arg("--creds")
        .arg(creds)
        .arg("--ca")
        .arg(&api.ca)
        .arg("--data-dir")
        .arg(data.join(name))
        .args(extra)
        .env("DOCKER_HOST", docker_host)
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()))
}

/// The `edge-node` binary as it ships for x86_64 (`scripts/release.sh`), which
/// `scripts/bench.sh` builds.
pub fn edge_node_binary() -> std::path::PathBuf {
    let binary = tests::root().join("target/release-artifacts/edge-node-x86_64");
    assert!(binary.exists(), "no {}: run scripts/bench.sh, which builds it", binary.display());
    binary
}

/// Polls `check` every `every` until it holds. A run that never gets there fails, naming
/// `what`, after ten minutes instead of hanging.
pub async fn until(what: &str, every: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(600);
    while !check() {
        assert!(Instant::now() < deadline, "still waiting for {what} after ten minutes");
        tokio::time::sleep(every).await;
    }
}

/// Records one figure of this run under `key` (a key of `benches/results.json`): a JSON line
/// appended to the file `BENCH_FIGURES` names, which `scripts/bench.sh` gathers over its runs.
pub fn record(key: &str, value: f64) {
    let Ok(path) = std::env::var("BENCH_FIGURES") else { return };
    let line = format!("{}\n", json!({"key": key, "value": value}));
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut file| std::io::Write::write_all(&mut file, line.as_bytes()));
    if let Err(e) = written {
        panic!("recording {key} in {path}: {e}");
    }
}

/// The CPU time process `pid` has used so far (user and system), from `/proc`.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command's name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are the 14th and 15th fields, in clock ticks of 1/100 s.
    (ticks(11) + ticks(12)) / 100.0
}

/// A memory figure of process `pid` from `/proc` (`VmRSS`, `VmHWM`), in MB.
pub fn memory_mb(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse::<f64>().ok());
    kb.unwrap_or(0.0) / 1024.0
}

/// How many nodes [`Api::enroll_fleet`] enrolls at once.
pub const ENROLLING_AT_ONCE: usize = 16;

/// The environment variable that makes a bench binary run a [`FleetProcess`]'s nodes instead of
/// its bench: the path of their description.
const FLEET_CHILD: &str = "BENCH_SIM_FLEET";

/// Simulated nodes ([`tests::SimFleet`]) in a process of their own, so that the bench's own
/// process holds the engine alone and its memory is the engine's. The process is the bench's
/// own binary again, run with [`FLEET_CHILD`]: its `main` starts with [`FleetProcess::serve`].
#[derive(Debug)]
pub struct FleetProcess {
    child: tokio::process::Child,
    _description: tempfile::NamedTempFile,
    /// The nodes' state, on tmpfs: removed once the process is gone (its own cleanup never
    /// runs, since it is killed).
    _data: tempfile::TempDir,
}

impl Drop for FleetProcess {
    fn drop(&mut self) {
        // Gone before its state is removed, so that nothing is written there meanwhile.
        if self.child.start_kill().is_ok() {
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

impl FleetProcess {
    /// Starts `enrolled` (each node's name and credentials) on `nats_url`, trusting `ca`,
    /// labelled `labels`, in a new process.
    pub async fn start(
        nats_url: &str,
        ca: &Path,
        enrolled: &[(String, bus::Credentials)],
        labels: &events::node::Labels,
    ) -> FleetProcess {
        let nodes: Vec<(String, String)> = enrolled
            .iter()
            .map(|(name, c)| {
                let seed = c.key().seed().expect("a seed");
                (name.clone(), bus::Credentials::format(c.jwt(), Some(seed.as_str())))
            })
            .collect();
        let data = tests::tmpfs_dir();
        let description =
            json!({"nats_url": nats_url, "ca": ca, "labels": labels, "nodes": nodes, "data": data.path()});
        let file = tempfile::NamedTempFile::new().expect("a temporary file");
        std::fs::write(file.path(), description.to_string()).expect("writing the fleet's description");
        let child = tokio::process::Command::new(std::env::current_exe().expect("this bench's binary"))
            .env(FLEET_CHILD, file.path())
            .kill_on_drop(true)
            .spawn()
            .expect("starting the fleet's process");
        FleetProcess { child, _description: file, _data: data }
    }

    /// The process's id, for its memory.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("the fleet's process runs")
    }

    /// In a process started by [`FleetProcess::start`]: runs its nodes until it is killed, and
    /// returns `true`. Elsewhere returns `false` at once.
    pub async fn serve() -> bool {
        let Ok(path) = std::env::var(FLEET_CHILD) else { return false };
        let text = std::fs::read_to_string(&path).expect("the fleet's description");
        let description: Value = serde_json::from_str(&text).expect("the fleet's description is JSON");
        let field = |name: &str| description[name].as_str().expect("a field of the description").to_owned();
        let labels: events::node::Labels =
            serde_json::from_value(description["labels"].clone()).expect("the fleet's labels");
        let nodes: Vec<(String, String)> =
            serde_json::from_value(description["nodes"].clone()).expect("the fleet's nodes");
        let enrolled = nodes
            .into_iter()
            .map(|(name, creds)| (name, bus::Credentials::parse(&creds, None).expect("a node's credentials")))
            .collect();
        let (data, ca) = (field("data"), field("ca"));
        let _fleet =
            tests::SimFleet::start_in(Path::new(&data), &field("nats_url"), Path::new(&ca), enrolled, &labels).await;
        std::future::pending::<()>().await;
        true
    }
}
