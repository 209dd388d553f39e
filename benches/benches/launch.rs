//! Launch to running: from the API call to the read model saying `running`, launches one
//! after the other on one node: on the simulated runtime (no container engine in the way),
//! then, for reference, on the real Docker engine with the local registry.
//!
//! `cargo bench -p benches --bench launch` (`LAUNCHES` sets how many on the simulated runtime,
//! 200 by default; a tenth of that, at least 10, on Docker).

#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use benches::{Api, Figures};
use serde_json::json;
use tests::NatsServer;

/// Launches `sample` 1.0.0 on `node` `launches` times, one after the other, each timed until
/// the read model says `running`.
async fn launch_to_running(api: &Api, node: &str, launches: usize) -> Figures {
    let mut latencies = Vec::with_capacity(launches);
    let start = Instant::now();
    for _ in 0..launches {
        let t = Instant::now();
        let launched =
            api.post("/v1/deployments", json!({"application": "sample", "version": "1.0.0", "nodes": [node]})).await;
        let id = launched["id"].as_str().expect("a deployment id");
        benches::until("the launch to run", Duration::from_micros(200), || {
            matches!(api.engine.deployments.status("default", id), Ok(Some((events::Status::Running, _))))
        })
        .await;
        latencies.push(t.elapsed());
    }
    Figures::from(latencies, start.elapsed())
}

#[tokio::main]
async fn main() {
    let launches: usize = std::env::var("LAUNCHES").ok().and_then(|s| s.parse().ok()).unwrap_or(200);
    let nats = NatsServer::start().await;
    let api = Api::start(&nats).await;
    let data = tempfile::tempdir().unwrap();
    let _node = benches::sim_node(&api, &nats.url(), "sim-1", data.path()).await;
    api.wait_node("sim-1").await;
    api.publish_sample("127.0.0.1:5000/sample/app:1.0.0").await;
    let sim = launch_to_running(&api, "sim-1", launches).await;
    println!("launch to running, simulated runtime     {sim}");
    benches::record("launch_to_running_p50_ms_sim", sim.p50.as_secs_f64() * 1000.0);
    benches::record("launch_to_running_p99_ms_sim", sim.p99.as_secs_f64() * 1000.0);

    // The same on the real Docker engine, through the edge-node binary.
    let node = format!("launch-{}", std::process::id());
    let mut child = benches::edge_node_process(&api, &node, data.path(), &[]).await;
    api.wait_node(&node).await;
    let docker = launch_to_running(&api, &node, (launches / 10).max(10)).await;
    println!("launch to running, Docker engine         {docker}");
    benches::record("launch_to_running_p50_ms_docker", docker.p50.as_secs_f64() * 1000.0);
    benches::record("launch_to_running_p99_ms_docker", docker.p99.as_secs_f64() * 1000.0);
    child.kill().await.unwrap();
    tests::remove_node_leftovers(&tests::docker().await, edge_node::runtime::NODE_LABEL, &node).await.unwrap();
}
