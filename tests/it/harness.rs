//! An engine in this process on a test's own nats-server, and what tests ask of it.

use std::time::Duration;

use bus::store::{EventStore, StoreConfig};
use engine::command::{CommandHandler, CommandMeta};
use engine::{Engine, EngineConfig};
use events::application::{Application, ApplicationCommand};
use events::node::{Labels, Node, NodeCommand};
use std::sync::Arc;

use edge_node::docker::DockerRuntime;
use edge_node::runtime::NODE_LABEL;
use edge_node::NodeConfig;
use serde_json::{json, Value};
use tests::{docker, eventually, NatsServer};

pub const IMAGE_1_0_0: &str = "127.0.0.1:5000/sample/app:1.0.0";
pub const IMAGE_1_1_0: &str = "127.0.0.1:5000/sample/app:1.1.0";
pub const TIMEOUT: Duration = Duration::from_secs(120);

/// An engine's API as a client reaches it: the in-process engine's, or a cluster's.
pub struct Api {
    pub http: reqwest::Client,
    /// `https://host:port`.
    pub base: String,
}

impl Api {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let response = self.http.post(self.url(path)).json(&body).send().await.unwrap();
        (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
    }

    pub async fn put(&self, path: &str, body: Value) -> (u16, Value) {
        let response = self.http.put(self.url(path)).json(&body).send().await.unwrap();
        (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        let response = self.http.delete(self.url(path)).send().await.unwrap();
        (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let response = self.http.get(self.url(path)).send().await.unwrap();
        (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
    }

    /// Registers `sample` with version 1.0.0 of `image`, published, through the API.
    pub async fn publish_sample(&self, image: &str) {
        let (status, body) = self.post("/v1/applications", serde_json::json!({"id": "sample", "name": "Sample"})).await;
        assert_eq!(status, 201, "{body}");
        let version = serde_json::json!({"version": "1.0.0", "image": image});
        let (status, body) = self.post("/v1/applications/sample/versions", version).await;
        assert_eq!(status, 201, "{body}");
        let (status, body) = self.post("/v1/applications/sample/versions/1.0.0/publish", serde_json::json!({})).await;
        assert_eq!(status, 200, "{body}");
    }

    /// The node's state as the API shows it.
    pub async fn node_state(&self, node: &str) -> Option<String> {
        let (_, body) = self.get(&format!("/v1/nodes/{node}")).await;
        body["state"].as_str().map(str::to_owned)
    }

    /// Polls the deployment until `ready` says yes; returns the view.
    pub async fn wait_deployment(&self, id: &str, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
        tests::eventually(what, TIMEOUT, || async {
            let (status, view) = self.get(&format!("/v1/deployments/{id}")).await;
            (status == 200 && ready(&view)).then_some(view)
        })
        .await
    }
}

pub struct TestEngine {
    pub engine: Engine,
    /// Its API, through [`ADMIN_TOKEN`](tests::ADMIN_TOKEN); the engine derefs to it.
    pub api: Api,
    /// What it was started with, and is started again with.
    config: EngineConfig,
    trust: engine::trust::Trust,
    data: tempfile::TempDir,
}

impl TestEngine {
    pub async fn start(nats: &NatsServer) -> TestEngine {
        TestEngine::start_on(&nats.url(), nats.trust(), 1).await
    }

    /// An engine on `nats_url` (one server or a cluster's list) trusted by `trust`, whose
    /// streams keep `replicas`.
    pub async fn start_on(nats_url: &str, trust: &engine::trust::Trust, replicas: usize) -> TestEngine {
        TestEngine::start_with(nats_url, trust, replicas, |_| {}).await
    }

    /// An engine as [`TestEngine::start_on`] makes it, its configuration changed by `change`.
    pub async fn start_with(
        nats_url: &str,
        trust: &engine::trust::Trust,
        replicas: usize,
        change: impl FnOnce(&mut EngineConfig),
    ) -> TestEngine {
        let data = tempfile::tempdir().unwrap();
        let mut config = Self::config(nats_url, trust, replicas, &data);
        change(&mut config);
        let engine = Engine::start(config.clone()).await.expect("the engine starts");
        let trust = trust.clone();
        let http = tests::admin_client(&engine.commands, &trust.ca()).await;
        let api = Api { http, base: format!("https://{}", engine.api_addr) };
        TestEngine { engine, api, config, trust, data }
    }

    fn config(nats_url: &str, trust: &engine::trust::Trust, replicas: usize, data: &tempfile::TempDir) -> EngineConfig {
        EngineConfig {
            nats_url: nats_url.to_owned(),
            trust_dir: trust.dir().to_owned(),
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: data.path().join("read-models"),
            store: bus::store::StoreConfig { replicas, ..Default::default() },
            tls: Some(engine::trust::Trust::server_tls(trust.dir())),
            ..EngineConfig::default()
        }
    }

    /// Stops the engine and starts it again on the same read models (a new API port).
    pub async fn restart(self) -> TestEngine {
        let TestEngine { engine, api, config, trust, data } = self;
        drop(engine);
        // The stopped engine's tasks let go of the sled directory as they wind down.
        let engine = tests::eventually("the engine to start again", TIMEOUT, || async {
            Engine::start(config.clone()).await.ok()
        })
        .await;
        let api = Api { http: api.http, base: format!("https://{}", engine.api_addr) };
        TestEngine { engine, api, config, trust, data }
    }

    /// The engine's data directory (its read models, and the first admin token's file).
    pub fn data_dir(&self) -> std::path::PathBuf {
        self.data.path().join("read-models")
    }

    /// The trust directory the engine and its servers share.
    pub fn trust(&self) -> &engine::trust::Trust {
        &self.trust
    }

    /// Enrolls `node` of tenant `default` with a key made by the engine: its credentials.
    pub async fn enroll(&self, node: &str) -> bus::Credentials {
        let enrolled = self.engine.issuer.enroll(node, Labels::new(), None, &meta()).await.expect("the node enrolls");
        bus::Credentials::parse(&enrolled.creds, None).expect("the engine's credentials parse")
    }

    /// Checks that a fresh engine, folding the whole log into new read models, comes to show
    /// each of `ids` exactly as this one does (both may still be folding the last events).
    pub async fn matches_a_fresh_rebuild(&self, nats: &NatsServer, ids: &[String]) {
        let fresh = TestEngine::start(nats).await;
        for id in ids {
            let path = format!("/v1/deployments/{id}");
            let deadline = tokio::time::Instant::now() + TIMEOUT;
            loop {
                let ((_, live), (_, rebuilt)) = (self.get(&path).await, fresh.get(&path).await);
                if live == rebuilt {
                    break;
                }
                assert!(tokio::time::Instant::now() < deadline, "{id}: live {live:#}\nrebuilt {rebuilt:#}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

impl std::ops::Deref for TestEngine {
    type Target = Api;

    fn deref(&self) -> &Api {
        &self.api
    }
}

/// A command handler on its own connection, as a second writer would have.
pub async fn handler(nats: &NatsServer) -> CommandHandler {
    let store = EventStore::open(nats.client().await, &StoreConfig::default()).await.unwrap();
    CommandHandler::new(store.signed_by(nats.trust().engine().key().clone()))
}

pub fn meta() -> CommandMeta {
    CommandMeta::new("default", "test")
}

/// `node`'s report of `status` on deployment `id`, recorded on their pair's aggregate as the
/// engine's ingest records it.
pub async fn report(
    commands: &CommandHandler,
    id: &str,
    node: &str,
    status: events::Status,
    error: Option<events::Failure>,
) -> engine::command::Committed {
    use events::deployment_node::{self, DeploymentNode, DeploymentNodeCommand};
    let seen = commands.read::<events::deployment::Deployment, _>("default", id, |d| d.seen(node)).await.unwrap();
    let report = DeploymentNodeCommand::Report {
        node: node.into(),
        seen,
        version: String::new(),
        status,
        error,
        containers: Default::default(),
        reported_at: chrono::Utc::now(),
        order: None,
    };
    commands.execute::<DeploymentNode>(&deployment_node::id(id, node), &report, &meta()).await.unwrap()
}

/// Registers, through the command path, a published `sample` 1.0.0 and the nodes named.
pub async fn seed(handler: &CommandHandler, nodes: &[&str]) {
    let commands = [
        ApplicationCommand::Register { name: "Sample".into() },
        ApplicationCommand::AddVersion {
            version: "1.0.0".into(),
            image: IMAGE_1_0_0.into(),
            settings: Default::default(),
            policy: Default::default(),
        },
        ApplicationCommand::Publish { version: "1.0.0".into(), digests: Default::default() },
    ];
    for command in commands {
        handler.execute::<Application>("sample", &command, &meta()).await.unwrap();
    }
    for node in nodes {
        handler.execute::<Node>(node, &NodeCommand::Register { labels: Labels::new() }, &meta()).await.unwrap();
    }
}

/// How many messages the stream holds.
pub async fn stored(handler: &CommandHandler) -> u64 {
    handler.store().stream().get_info().await.unwrap().state.messages
}

/// An edge node in this process, on its own sled directory; its containers, networks and
/// volumes are removed on drop.
pub struct TestNode {
    pub name: String,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
    data: Option<tempfile::TempDir>,
}

impl TestNode {
    pub async fn start(nats: &NatsServer, engine: &TestEngine) -> TestNode {
        TestNode::start_labelled(nats, engine, "lab").await
    }

    /// A node with the label `site=<site>`.
    pub async fn start_labelled(nats: &NatsServer, engine: &TestEngine, site: &str) -> TestNode {
        let name = format!("t{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
        TestNode::start_on(&nats.url(), engine, name, tempfile::tempdir().unwrap(), site).await
    }

    /// A node that reaches NATS at `url` (a [`tests::Link`], say).
    pub async fn start_via(url: &str, engine: &TestEngine) -> TestNode {
        let name = format!("t{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
        TestNode::start_on(url, engine, name, tempfile::tempdir().unwrap(), "lab").await
    }

    /// Stops the agent as a crash would (its containers stay) and starts it again on the same
    /// local state.
    pub async fn restart(self, nats: &NatsServer, engine: &TestEngine) -> TestNode {
        self.restart_labelled(nats, engine, "lab").await
    }

    /// Restarts it (as `restart`) with new credentials.
    pub async fn restart_with(self, credentials: bus::Credentials, nats: &NatsServer, engine: &TestEngine) -> TestNode {
        let kept = self.data.as_ref().expect("a running node has its data").path().join("node.creds");
        let seed = credentials.key().seed().expect("a seed");
        std::fs::write(kept, bus::Credentials::format(credentials.jwt(), Some(&seed))).unwrap();
        self.restart(nats, engine).await
    }

    /// Restarts it (as `restart`) with the label `site=<site>`.
    pub async fn restart_labelled(mut self, nats: &NatsServer, engine: &TestEngine, site: &str) -> TestNode {
        self.task.abort();
        let _ = (&mut self.task).await;
        let data = self.data.take().unwrap();
        // Handed over: this value's drop leaves the containers to the new one.
        let name = std::mem::take(&mut self.name);
        TestNode::start_on(&nats.url(), engine, name, data, site).await
    }

    pub async fn start_on(
        url: &str,
        engine: &TestEngine,
        name: String,
        data: tempfile::TempDir,
        site: &str,
    ) -> TestNode {
        let config =
            NodeConfig { labels: [("site".to_owned(), site.to_owned())].into(), ..TestNode::config(url, &name, &data) };
        TestNode::start_with(config, engine, data).await
    }

    /// What a test node runs with: beats and looks at its containers every 300 ms.
    pub fn config(url: &str, name: &str, data: &tempfile::TempDir) -> NodeConfig {
        NodeConfig {
            nats_url: url.to_owned(),
            node: name.to_owned(),
            labels: [("site".to_owned(), "lab".to_owned())].into(),
            data_dir: data.path().join("node"),
            heartbeat: std::time::Duration::from_millis(300),
            reconcile: std::time::Duration::from_millis(300),
            ..NodeConfig::default()
        }
    }

    /// A node with `config`, on `data`.
    pub async fn start_with(config: NodeConfig, engine: &TestEngine, data: tempfile::TempDir) -> TestNode {
        TestNode::start_on_docker(config, engine, data, docker().await).await
    }

    /// `config` with the node's credentials: those kept in `data` from an earlier start, or
    /// new ones the engine enrolls it with.
    pub async fn enrolled(config: NodeConfig, engine: &TestEngine, data: &tempfile::TempDir) -> NodeConfig {
        if config.credentials.is_some() {
            return config;
        }
        let kept = data.path().join("node.creds");
        let credentials = match bus::Credentials::read(&kept, None) {
            Ok(credentials) => credentials,
            Err(_) => {
                let credentials = engine.enroll(&config.node).await;
                let text = bus::Credentials::format(credentials.jwt(), Some(&credentials.key().seed().unwrap()));
                std::fs::write(&kept, text).unwrap();
                credentials
            }
        };
        NodeConfig { credentials: Some(credentials), ca: Some(engine.trust().ca()), ..config }
    }

    /// A node with `config`, on `data`, running its containers on the engine `docker`.
    pub async fn start_on_docker(
        config: NodeConfig,
        engine: &TestEngine,
        data: tempfile::TempDir,
        docker: bollard::Docker,
    ) -> TestNode {
        let config = TestNode::enrolled(config, engine, &data).await;
        let name = config.node.clone();
        let runtime = DockerRuntime::with(docker).await.expect("the Docker engine answers");
        let runtime = runtime.confined_to(config.policy.clone());
        let task = tokio::spawn(edge_node::driver::run(config, Arc::new(runtime)));
        eventually("the node to register", TIMEOUT, || async {
            let (status, body) = engine.get(&format!("/v1/nodes/{name}")).await;
            (status == 200 && body["state"] == "online").then_some(())
        })
        .await;
        TestNode { name, task, data: Some(data) }
    }

    /// The credentials the node runs with.
    pub fn credentials(&self) -> bus::Credentials {
        let kept = self.data.as_ref().expect("a running node has its data").path().join("node.creds");
        bus::Credentials::read(&kept, None).expect("the node's credentials")
    }

    /// The node's sled directory, where its command line finds it.
    pub fn data_dir(&self) -> std::path::PathBuf {
        self.data.as_ref().expect("a running node has its data").path().join("node")
    }

    pub async fn stop(self) {
        self.task.abort();
        tests::remove_node_leftovers(&docker().await, NODE_LABEL, &self.name).await.unwrap();
    }
}

impl Drop for TestNode {
    /// Removes the node's containers even when the test failed half-way.
    fn drop(&mut self) {
        self.task.abort();
        if self.name.is_empty() {
            return;
        }
        let name = self.name.clone();
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async { tests::remove_node_leftovers(&docker().await, NODE_LABEL, &name).await })
        });
        let _ = cleanup.join();
    }
}

/// A test's own nats-server and engine, and one edge node on the project's Docker engine.
pub struct Lab {
    pub nats: NatsServer,
    pub engine: TestEngine,
    pub node: TestNode,
}

impl Lab {
    pub async fn start() -> Lab {
        let nats = NatsServer::start().await;
        let engine = TestEngine::start(&nats).await;
        let node = TestNode::start(&nats, &engine).await;
        Lab { nats, engine, node }
    }

    /// A lab whose node runs `sample` 1.0.0, and that deployment's id.
    pub async fn running() -> (Lab, String) {
        let lab = Lab::start().await;
        lab.engine.publish_sample(IMAGE_1_0_0).await;
        let id = launch(&lab.engine, &lab.node.name).await;
        lab.engine.wait_deployment(&id, "the deployment to run", |v| v["status"] == "running").await;
        (lab, id)
    }
}

pub async fn launch(engine: &TestEngine, node: &str) -> String {
    let body = json!({"application": "sample", "version": "1.0.0", "nodes": [node]});
    let (status, body) = engine.post("/v1/deployments", body).await;
    assert_eq!(status, 201, "{body}");
    body["id"].as_str().unwrap().to_owned()
}
