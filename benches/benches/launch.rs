//! Launch to running: from the API call to the read model saying `running`, one node on the
//! simulated runtime (no container engine in the way), launches one after the other.
//!
//! `cargo bench -p benches --bench launch` (`LAUNCHES` sets how many; 200 by default).

#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use benches::{Api, Figures};
use edge_node::sim::SimRuntime;
use edge_node::NodeConfig;
use serde_json::json;
use tests::NatsServer;

#[tokio::main]
async fn main() {
    let launches: usize = std::env::var("LAUNCHES").ok().and_then(|s| s.parse().ok()).unwrap_or(200);
    let nats = NatsServer::start().await;
    let api = Api::start(&nats.url()).await;
    let data = tempfile::tempdir().unwrap();
    let node = NodeConfig {
        nats_url: nats.url(),
        node: "sim-1".into(),
        data_dir: data.path().join("node"),
        ..NodeConfig::default()
    };
    let _node = tokio::spawn(edge_node::driver::run(node, Arc::new(SimRuntime::new(Duration::ZERO))));
    api.wait_node("sim-1").await;
    api.publish_sample("127.0.0.1:5000/sim/app:1.0.0").await;

    let mut latencies = Vec::with_capacity(launches);
    let start = Instant::now();
    for _ in 0..launches {
        let t = Instant::now();
        let launched =
            api.post("/v1/deployments", json!({"application": "sample", "version": "1.0.0", "nodes": ["sim-1"]})).await;
        let path = format!("/v1/deployments/{}", launched["id"].as_str().unwrap());
        while api.get(&path).await["status"] != "running" {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        latencies.push(t.elapsed());
    }
    println!("launch to running, simulated runtime     {}", Figures::from(latencies, start.elapsed()));
}
