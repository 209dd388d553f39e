//! The edge agent's footprint: the release binary's size, and the resident memory of the
//! `edge-node` process idle and with ten workloads running on the real Docker engine (the
//! project's, from `scripts/setup.sh`).
//!
//! `cargo bench -p benches --bench footprint` (it builds the release binary first).

#![allow(clippy::print_stdout)]

use std::time::Duration;

use engine::{Engine, EngineConfig};
use serde_json::json;
use tests::NatsServer;

/// Resident memory of process `pid`, in MB.
fn rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse::<f64>().ok());
    kb.unwrap_or(0.0) / 1024.0
}

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
    let http = reqwest::Client::new();
    let post = |path: &str, body: serde_json::Value| http.post(format!("{api}{path}")).json(&body).send();
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
    let registered = tests::eventually("the node to register", Duration::from_secs(60), || async {
        let response = http.get(format!("{api}/v1/nodes/{node}")).send().await.ok()?;
        response.status().is_success().then_some(())
    });
    registered.await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    println!("edge-node resident memory, idle          {:.1} MB", rss_mb(pid));

    post("/v1/applications", json!({"id": "sample", "name": "Sample"})).await.unwrap();
    post("/v1/applications/sample/versions", json!({"version": "1.0.0", "image": "127.0.0.1:5000/sample/app:1.0.0"}))
        .await
        .unwrap();
    post("/v1/applications/sample/versions/1.0.0/publish", json!({})).await.unwrap();
    let mut ids = Vec::new();
    for _ in 0..10 {
        let launched = post("/v1/deployments", json!({"application": "sample", "version": "1.0.0", "nodes": [node]}))
            .await
            .unwrap()
            .json::<serde_json::Value>()
            .await
            .unwrap();
        ids.push(launched["id"].as_str().unwrap().to_owned());
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let summary =
            http.get(format!("{api}/v1/summary")).send().await.unwrap().json::<serde_json::Value>().await.unwrap();
        if summary["overall"]["running"] == 10 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the ten workloads did not run: {summary}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    println!("edge-node resident memory, 10 workloads  {:.1} MB", rss_mb(pid));
    child.kill().await.unwrap();
    let docker = tests::docker().await;
    tests::remove_node_leftovers(&docker, edge_node::runtime::NODE_LABEL, &node).await.unwrap();
}
