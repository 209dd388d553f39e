//! Launch to running: from the API call to the read model saying `running`, one node on the
//! simulated runtime (no container engine in the way), launches one after the other.
//!
//! `cargo bench -p benches --bench launch` (`LAUNCHES` sets how many; 200 by default).

#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use benches::Figures;
use edge_node::sim::SimRuntime;
use edge_node::NodeConfig;
use engine::{Engine, EngineConfig};
use serde_json::json;
use tests::NatsServer;

#[tokio::main]
async fn main() {
    let launches: usize = std::env::var("LAUNCHES").ok().and_then(|s| s.parse().ok()).unwrap_or(200);
    let nats = NatsServer::start().await;
    let data = tempfile::tempdir().unwrap();
    let config = EngineConfig {
        nats_url: nats.url(),
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: data.path().join("engine"),
        ..EngineConfig::default()
    };
    let engine = Engine::start(config).await.unwrap();
    let api = format!("http://{}", engine.api_addr);
    let node = NodeConfig {
        nats_url: nats.url(),
        node: "sim-1".into(),
        data_dir: data.path().join("node"),
        ..NodeConfig::default()
    };
    let _node = tokio::spawn(edge_node::driver::run(node, Arc::new(SimRuntime::new(Duration::ZERO))));
    let http = reqwest::Client::new();
    let post = |path: &str, body: serde_json::Value| http.post(format!("{api}{path}")).json(&body).send();
    tests::eventually("the simulated node to register", Duration::from_secs(30), || async {
        let response = http.get(format!("{api}/v1/nodes/sim-1")).send().await.ok()?;
        response.status().is_success().then_some(())
    })
    .await;
    post("/v1/applications", json!({"id": "sample", "name": "Sample"})).await.unwrap();
    post("/v1/applications/sample/versions", json!({"version": "1.0.0", "image": "127.0.0.1:5000/sim/app:1.0.0"}))
        .await
        .unwrap();
    post("/v1/applications/sample/versions/1.0.0/publish", json!({})).await.unwrap();

    let mut latencies = Vec::with_capacity(launches);
    let start = Instant::now();
    for _ in 0..launches {
        let t = Instant::now();
        let launched =
            post("/v1/deployments", json!({"application": "sample", "version": "1.0.0", "nodes": ["sim-1"]}))
                .await
                .unwrap()
                .json::<serde_json::Value>()
                .await
                .unwrap();
        let id = launched["id"].as_str().unwrap().to_owned();
        loop {
            let view = http.get(format!("{api}/v1/deployments/{id}")).send().await.unwrap();
            if view.json::<serde_json::Value>().await.unwrap()["status"] == "running" {
                break;
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        latencies.push(t.elapsed());
    }
    println!("launch to running, simulated runtime     {}", Figures::from(latencies, start.elapsed()));
}
