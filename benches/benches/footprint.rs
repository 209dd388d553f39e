//! The edge agent's footprint: the size of the binary that ships for x86_64 (static, the edge
//! profile), and the resident memory of that `edge-node` process idle and with ten workloads
//! running on the real Docker engine (the project's, from `scripts/setup.sh`).
//!
//! `cargo bench -p benches --bench footprint`, once `scripts/bench.sh` (or
//! `TARGETS=x86_64-unknown-linux-musl scripts/release.sh`) has built the binary.

#![allow(clippy::print_stdout)]

use std::time::Duration;

use benches::{memory_mb, Api};
use serde_json::json;
use tests::NatsServer;

#[tokio::main]
async fn main() {
    let binary = benches::edge_node_binary();
    let size = std::fs::metadata(&binary).unwrap().len() as f64 / 1024.0 / 1024.0;
    println!(
        "edge-node binary as it ships (x86_64)    {size:.1} MiB ({} bytes)",
        std::fs::metadata(&binary).unwrap().len()
    );
    benches::record("edge_binary_mb", size);

    let nats = NatsServer::start().await;
    let api = Api::start(&nats).await;
    let data = tempfile::tempdir().unwrap();
    let node = format!("footprint-{}", std::process::id());
    let mut child = benches::edge_node_process(&api, &node, data.path(), &["--heartbeat", "1"]).await;
    let pid = child.id().unwrap();
    api.wait_node(&node).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle = memory_mb(pid, "VmRSS");
    let (anonymous, file) = (memory_mb(pid, "RssAnon"), memory_mb(pid, "RssFile"));
    println!("edge-node resident memory, idle          {idle:.1} MB ({anonymous:.1} MB its own, {file:.1} MB mapped from files)");
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
