//! An engine in this process on a test's own nats-server, and what tests ask of it.

use std::time::Duration;

use engine::command::{CommandHandler, CommandMeta};
use engine::store::{EventStore, StoreConfig};
use engine::{Engine, EngineConfig};
use events::application::{Application, ApplicationCommand};
use events::node::{Labels, Node, NodeCommand};
use serde_json::Value;
use tests::NatsServer;

pub const IMAGE_1_0_0: &str = "127.0.0.1:5000/sample/app:1.0.0";
pub const IMAGE_1_1_0: &str = "127.0.0.1:5000/sample/app:1.1.0";
pub const TIMEOUT: Duration = Duration::from_secs(60);

pub struct TestEngine {
    pub engine: Engine,
    pub http: reqwest::Client,
    nats_url: String,
    data: tempfile::TempDir,
}

impl TestEngine {
    pub async fn start(nats: &NatsServer) -> TestEngine {
        let data = tempfile::tempdir().unwrap();
        let engine = Engine::start(Self::config(&nats.url(), &data)).await.expect("the engine starts");
        TestEngine { engine, http: reqwest::Client::new(), nats_url: nats.url(), data }
    }

    fn config(nats_url: &str, data: &tempfile::TempDir) -> EngineConfig {
        EngineConfig {
            nats_url: nats_url.to_owned(),
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: data.path().join("read-models"),
            ..EngineConfig::default()
        }
    }

    /// Stops the engine and starts it again on the same read models (a new API port).
    pub async fn restart(self) -> TestEngine {
        let TestEngine { engine, http, nats_url, data } = self;
        drop(engine);
        // The stopped engine's tasks let go of the sled directory as they wind down.
        let engine = tests::eventually("the engine to start again", TIMEOUT, || async {
            Engine::start(Self::config(&nats_url, &data)).await.ok()
        })
        .await;
        TestEngine { engine, http, nats_url, data }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.engine.api_addr)
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let response = self.http.post(self.url(path)).json(&body).send().await.unwrap();
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

/// A command handler on its own connection, as a second writer would have.
pub async fn handler(nats: &NatsServer) -> CommandHandler {
    CommandHandler::new(EventStore::open(nats.client().await, &StoreConfig::default()).await.unwrap())
}

pub fn meta() -> CommandMeta {
    CommandMeta::new("default", "test")
}

/// Registers, through the command path, a published `sample` 1.0.0 and the nodes named.
pub async fn seed(handler: &CommandHandler, nodes: &[&str]) {
    let commands = [
        ApplicationCommand::Register { name: "Sample".into() },
        ApplicationCommand::AddVersion {
            version: "1.0.0".into(),
            image: IMAGE_1_0_0.into(),
            settings: Default::default(),
        },
        ApplicationCommand::Publish { version: "1.0.0".into() },
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
