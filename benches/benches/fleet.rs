//! A fleet of simulated nodes ([`tests::SimFleet`]) in a process of their own
//! ([`benches::FleetProcess`]), each enrolled with a credential of its own, on a TLS connection
//! of its own, with its own durable consumer, outbox and work log: the time until all are
//! connected and consuming, with nats-server's memory then; one launch by label selector until
//! every node is `running` in the read model, with the engine's memory then (this process
//! holds the engine alone); then an update across the fleet in a phased rollout until every
//! node runs the new version. The CPU each party used is printed for the launch and the update,
//! and each node's time from the launch call to its `running` (the median and the p99).
//!
//! `cargo bench -p benches --bench fleet` (`FLEET=1000,10000` sets the fleet sizes).

#![allow(clippy::print_stdout)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use benches::Api;
use benches::FleetProcess;
use chrono::{DateTime, Utc};
use events::deployment_node::DeploymentNodeEvent;
use events::Status;
use serde_json::json;
use tests::NatsServer;

/// Nodes a process of simulated nodes holds at most: larger fleets are split over several.
const NODES_PER_PROCESS: usize = 10_000;

/// Simulated nodes in processes of their own.
struct Fleet(Vec<FleetProcess>);

impl Fleet {
    fn pids(&self) -> impl Iterator<Item = u32> + '_ {
        self.0.iter().map(FleetProcess::pid)
    }
}

/// Starts `size` simulated nodes labelled `fleet=sim`, [`NODES_PER_PROCESS`] at most a process,
/// and waits until the engine knows them.
async fn start_fleet(nats: &NatsServer, api: &Api, size: usize) -> Fleet {
    let enrolled = api.enroll_fleet(size).await;
    let started = Instant::now();
    let labels = [("fleet".to_owned(), "sim".to_owned())].into();
    let mut processes = Vec::new();
    for nodes in enrolled.chunks(NODES_PER_PROCESS) {
        processes.push(FleetProcess::start(&nats.url(), &nats.trust().ca(), nodes, &labels).await);
    }
    let fleet = Fleet(processes);
    api.wait_online(size).await;
    let connected = started.elapsed();
    let rss = benches::memory_mb(nats.pid(), "VmRSS");
    println!(
        "  {size} nodes connected with their own credentials and consuming in {connected:.1?}; nats-server RSS {rss:.0} MB, \
         {:.0} kB a node",
        rss * 1024.0 / size as f64
    );
    benches::record(&format!("fleet_{size}_connected_s"), connected.as_secs_f64());
    benches::record(&format!("fleet_{size}_nats_rss_mb"), rss);
    fleet
}

/// Waits until every node of deployment `id` runs `version` (the deployment's status is the
/// most severe of its nodes'); returns how long it took from `since`.
async fn all_running(api: &Api, id: &str, version: &str, since: Instant) -> Duration {
    benches::until(
        "every node to run the version",
        Duration::from_millis(20),
        || matches!(api.engine.deployments.status("default", id), Ok(Some((Status::Running, ref v))) if v == version),
    )
    .await;
    since.elapsed()
}

/// Each node's time from the launch call (`called`) to its `running` recorded on its pair, read
/// from the log from stream sequence `from`: the median and the p99, in seconds, over `size`
/// nodes.
async fn each_node_running(api: &Api, id: &str, from: u64, called: DateTime<Utc>, size: usize) -> (f64, f64) {
    let mut running: HashMap<String, DateTime<Utc>> = HashMap::with_capacity(size);
    replay::each_event(api.engine.commands.store(), from, |_, event| {
        let envelope = &event.envelope;
        let ours = envelope.aggregate_type == events::deployment_node::TYPE
            && events::deployment_node::split(&envelope.aggregate_id).is_some_and(|(deployment, _)| deployment == id);
        if ours
            && matches!(
                envelope.event::<DeploymentNodeEvent>(),
                Ok(DeploymentNodeEvent::StateReported { status: Status::Running, .. })
            )
        {
            running.entry(envelope.aggregate_id.clone()).or_insert(envelope.time);
        }
        Ok(())
    })
    .await
    .expect("the log is read");
    assert_eq!(running.len(), size, "every node's running is in the log");
    let times = running.values().map(|t| (*t - called).to_std().unwrap_or_default()).collect();
    let figures = benches::Figures::from(times, Duration::from_secs(1));
    (figures.p50.as_secs_f64(), figures.p99.as_secs_f64())
}

/// How long the fleet is watched doing nothing before the launch.
const IDLE: Duration = Duration::from_secs(10);

/// The CPU time used so far by the engine (this process), the simulated nodes and nats-server.
struct CpuShares([f64; 3]);

impl CpuShares {
    fn now(nats: &NatsServer, fleet: &Fleet) -> CpuShares {
        let nodes = fleet.pids().map(benches::cpu_seconds).sum();
        CpuShares([benches::cpu_seconds(std::process::id()), nodes, benches::cpu_seconds(nats.pid())])
    }

    /// What each used since `self`, over `wall` on this machine's cores.
    fn print(&self, nats: &NatsServer, fleet: &Fleet, wall: Duration) {
        let [engine, nodes, server] = CpuShares::now(nats, fleet).0;
        let [e, n, s] = self.0;
        println!(
            "    CPU: engine {:.1} s, simulated nodes {:.1} s, nats-server {:.1} s, of {:.1} s on {} cores",
            engine - e,
            nodes - n,
            server - s,
            wall.as_secs_f64() * std::thread::available_parallelism().map_or(1, |n| n.get()) as f64,
            std::thread::available_parallelism().map_or(1, |n| n.get()),
        );
    }
}

async fn fleet(size: usize) {
    let nats = NatsServer::start().await;
    let api = Api::start(&nats).await;
    // This process holds the engine alone: its memory before the fleet and once the fleet runs.
    let engine_rss = || benches::memory_mb(std::process::id(), "VmRSS");
    let idle = engine_rss();
    api.publish_sample(&tests::sim_image("1.0.0")).await;
    api.post("/v1/applications/sample/versions", json!({"version": "2.0.0", "image": &tests::sim_image("2.0.0")}))
        .await;
    api.post("/v1/applications/sample/versions/2.0.0/publish", json!({})).await;
    let fleet = start_fleet(&nats, &api, size).await;

    // What the fleet costs doing nothing: each node's pull held on the server (the simulated
    // nodes send their heartbeat once an hour).
    let cpu = CpuShares::now(&nats, &fleet);
    tokio::time::sleep(IDLE).await;
    println!("  idle for {} s", IDLE.as_secs());
    cpu.print(&nats, &fleet, IDLE);

    let cpu = CpuShares::now(&nats, &fleet);
    let before = api.engine.commands.store().last_sequence().await.expect("the stream's last sequence");
    let (start, called) = (Instant::now(), Utc::now());
    let launched = api
        .post("/v1/deployments", json!({"application": "sample", "version": "1.0.0", "selector": {"fleet": "sim"}}))
        .await;
    let id = launched["id"].as_str().expect("a deployment id").to_owned();
    let launch = all_running(&api, &id, "1.0.0", start).await;
    println!("  launch by selector to {size} nodes running    {:.2} s", launch.as_secs_f64());
    cpu.print(&nats, &fleet, launch);
    benches::record(&format!("fleet_{size}_s"), launch.as_secs_f64());
    let (p50, p99) = each_node_running(&api, &id, before.saturating_add(1), called, size).await;
    println!("  each node, launch call to running recorded: p50 {p50:.2} s, p99 {p99:.2} s");
    benches::record(&format!("fleet_{size}_node_p50_s"), p50);
    benches::record(&format!("fleet_{size}_node_p99_s"), p99);
    let launched = engine_rss();
    let per_node_kb = (launched - idle) * 1024.0 / size as f64;
    let nodes_mb: f64 = fleet.pids().map(|pid| benches::memory_mb(pid, "VmRSS")).sum();
    println!(
        "  engine RSS {idle:.0} MB before the fleet, {launched:.0} MB with {size} nodes running: {per_node_kb:.1} kB a node \
         (the simulated nodes: {nodes_mb:.0} MB in {} processes of their own, {:.0} kB a node)",
        fleet.0.len(),
        nodes_mb * 1024.0 / size as f64,
    );
    benches::record(&format!("fleet_{size}_sim_kb_per_node"), nodes_mb * 1024.0 / size as f64);
    benches::record(&format!("fleet_{size}_engine_rss_mb"), launched);
    benches::record(&format!("fleet_{size}_engine_kb_per_node"), per_node_kb);

    let cpu = CpuShares::now(&nats, &fleet);
    let start = Instant::now();
    let update = json!({"version": "2.0.0", "rollout": {"batch": "10%", "max_failures": 0}});
    api.post(&format!("/v1/deployments/{id}/update"), update).await;
    let update = all_running(&api, &id, "2.0.0", start).await;
    println!("  update in waves of 10% to {size} nodes running {:.2} s", update.as_secs_f64());
    cpu.print(&nats, &fleet, update);
    benches::record(&format!("fleet_{size}_update_s"), update.as_secs_f64());
    drop(fleet);
}

#[tokio::main]
async fn main() {
    if FleetProcess::serve().await {
        return;
    }
    let sizes = std::env::var("FLEET").unwrap_or_else(|_| "1000,10000".to_owned());
    for size in sizes.split(',').filter_map(|s| s.trim().parse::<usize>().ok()) {
        println!("fleet of {size} simulated nodes");
        fleet(size).await;
    }
}
