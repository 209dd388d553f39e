//! The edge agent's footprint: the release binary's size, and the resident memory of the
//! `edge-node` process idle and with ten workloads running on the real Docker engine (the
//! project's, from `scripts/setup.sh`).
//!
//! `cargo bench -p benches --bench footprint` (it builds the release binary first).

#![allow(clippy::print_stdout)]

use std::time::Duration;

use benches::{memory_mb, Api};
use serde_json::json;
use tests::NatsServer;

#[tokio::main]
async fn main() {
    let built = std::process::Command::new("cargo")
        .args(["build", "--release", "--locked", "-q", "-p", "edge-node"])
        .current_dir(tests::root())
        .status()
        .expect("cargo builds the edge node");
    assert!(built.success());
    let binary = tests::root().join("target/release/edge-node");
    let size = std::fs::metadata(&binary).unwrap().len() as f64 / 1024.0 / 1024.0;
    println!("edge-node release binary                 {size:.1} MB");
    benches::record("edge_binary_mb", size);

    let nats = NatsServer::start().await;
    let api = Api::start(&nats.url()).await;
    let data = tempfile::tempdir().unwrap();
    let node = format!("footprint-{}", std::process::id());
    let docker_host = tests::docker_host().expect("DOCKER_HOST, from scripts/setup.sh");
    let mut child = tokio::process::Command::new(&binary)
        .args(["run", "--nats", &nats.url(), "--node", &node, "--heartbeat", "1"])
        .arg("--data-dir")
        .arg(data.path().join("node"))
        .env("DOCKER_HOST", docker_host)
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    api.wait_node(&node).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle = memory_mb(pid, "VmRSS");
    println!("edge-node resident memory, idle          {idle:.1} MB");
    benches::record("edge_rss_idle_mb", idle);

    api.publish_sample("127.0.0.1:5000/sample/app:1.0.0").await;
    for _ in 0..10 {
        api.post("/v1/deployments", json!({"application": "sample", "version": "1.0.0", "nodes": [node]})).await;
    }
    tests::eventually("the ten workloads to run", Duration::from_secs(120), || async {
        (api.get("/v1/summary").await["overall"]["running"] == 10).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let busy = memory_mb(pid, "VmRSS");
    println!("edge-node resident memory, 10 workloads  {busy:.1} MB");
    benches::record("edge_rss_10_workloads_mb", busy);
    child.kill().await.unwrap();
    let docker = tests::docker().await;
    tests::remove_node_leftovers(&docker, edge_node::runtime::NODE_LABEL, &node).await.unwrap();
}
