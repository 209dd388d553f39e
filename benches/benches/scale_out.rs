//! Scale out: one, two and three engines on a three-server cluster whose streams keep three
//! replicas, and a fleet of simulated nodes ([`tests::SimFleet`]), each with its own credential
//! and TLS connection. For each number of engines, one launch by selector onto every node at
//! once, timed until every node runs it: nodes running per second. Then, with three engines, a
//! rollout in waves of 10 % during which one engine and one server are killed, timed until
//! every node runs it, and checked: every node released once, given its work once, and
//! running one container.
//!
//! The engines, the simulated nodes and the three servers share this machine's two cores:
//! more engines add no cores here, so the figures are indicative only.
//!
//! `cargo bench -p benches --bench scale_out` (`SCALE_OUT_FLEET=1000`, `SCALE_OUT_ENGINES=1,2,3`).

#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use benches::Api;
use events::deployment::DeploymentEvent;
use events::work::NodeWork;
use events::Status;
use serde_json::json;
use tests::{NatsCluster, SimFleet};

/// How many of deployment `id`'s nodes run in `api`'s read model.
fn running(api: &Api, id: &str) -> usize {
    let view = api.engine.deployments.get("default", id).ok().flatten();
    view.map_or(0, |v| v.nodes.values().filter(|n| n.status == Status::Running).count())
}

async fn scale_out(size: usize, engines: usize, kill: bool) {
    let mut cluster = NatsCluster::start(3).await;
    let (url, trust) = (cluster.url(), cluster.trust().clone());
    let mut apis = Vec::with_capacity(engines);
    for _ in 0..engines {
        apis.push(Api::start_on(&url, &trust, 3).await);
    }
    let first = apis.remove(0);
    let api = &first;
    api.publish_sample(&tests::sim_image("1.0.0")).await;
    let began = Instant::now();
    let enrolled = api.enroll_fleet(size).await;
    let store = api.engine.commands.store().clone();
    let labels = [("fleet".to_owned(), "sim".to_owned())].into();
    let fleet = SimFleet::start(&url, &trust.ca(), enrolled, &labels).await;
    api.wait_online(size).await;
    println!("  every node connected and registered after {:.1?}", began.elapsed());

    let start = Instant::now();
    let mut body = json!({"application": "sample", "version": "1.0.0", "selector": {"fleet": "sim"}});
    if kill {
        body["rollout"] = json!({"batch": "10%"});
    }
    let launched = api.post("/v1/deployments", body).await;
    let id = launched["id"].as_str().expect("a deployment id").to_owned();
    if kill {
        benches::until("a third of the fleet to run", Duration::from_millis(10), || running(api, &id) >= size / 3)
            .await;
        let killed_at = start.elapsed();
        drop(apis.pop());
        cluster.servers[0].kill();
        println!("  an engine and a server killed {:.2} s into the rollout", killed_at.as_secs_f64());
    }
    // Every ten seconds, where it stands; when nothing moved, where the engine's consumers are.
    let (mut shown, mut before) = (start.elapsed(), 0);
    let deadline = Instant::now() + Duration::from_secs(1200);
    while running(api, &id) < size {
        assert!(Instant::now() < deadline, "every node did not run within twenty minutes");
        if start.elapsed() >= shown + Duration::from_secs(10) {
            shown = start.elapsed();
            let now = running(api, &id);
            let others: Vec<usize> = apis.iter().map(|other| running(other, &id)).collect();
            println!("  … {:.0} s: {now} nodes running (the other engines: {others:?})", shown.as_secs_f64());
            if now == before {
                for name in ["router", "ingest", "settle"] {
                    match store.stream().clone().consumer_info(name).await {
                        Ok(info) => println!(
                            "    {name}: pending {}, waiting for acks {}, redelivered {}, acked up to {}",
                            info.num_pending,
                            info.num_ack_pending,
                            info.num_redelivered,
                            info.ack_floor.stream_sequence
                        ),
                        Err(e) => println!("    {name}: {e}"),
                    }
                }
            }
            before = now;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = start.elapsed();
    let what = if kill { "rollout in waves of 10 %, an engine and a server killed" } else { "launch to every node" };
    println!(
        "  {engines} engine(s), {size} nodes, {what}: {:.2} s, {:.0} nodes running/s",
        took.as_secs_f64(),
        size as f64 / took.as_secs_f64()
    );
    let key = if kill {
        format!("scale_out_{size}_rollout_killed_s")
    } else {
        format!("scale_out_{size}_{engines}_engines_s")
    };
    benches::record(&key, took.as_secs_f64());

    if kill {
        let log = store.load(&events::subject::aggregate("default", "deployment", &id)).await.expect("the log");
        let mut released: BTreeMap<String, usize> = BTreeMap::new();
        for event in &log.events {
            if let Ok(DeploymentEvent::WaveReleased { nodes }) = event.envelope.event::<DeploymentEvent>() {
                for node in nodes {
                    *released.entry(node).or_default() += 1;
                }
            }
        }
        let twice = released.values().filter(|n| **n > 1).count();
        let mut work_twice = 0;
        let mut containers_off = 0;
        for node in &fleet.nodes {
            let work = store.load(&events::subject::node_desired("default", &node.name)).await.expect("the work");
            let deploys =
                work.events.iter().filter(|e| matches!(e.envelope.event::<NodeWork>(), Ok(NodeWork::Deploy { .. })));
            work_twice += usize::from(deploys.count() != 1);
            containers_off += usize::from(node.runtime.containers().len() != 1);
        }
        println!(
            "  released {} of {size} nodes; released twice {twice}, work sent twice {work_twice}, not one container {containers_off}",
            released.len()
        );
    }
    drop(fleet);
}

#[tokio::main]
async fn main() {
    let size: usize = std::env::var("SCALE_OUT_FLEET").ok().and_then(|s| s.parse().ok()).unwrap_or(1000);
    let engines = std::env::var("SCALE_OUT_ENGINES").unwrap_or_else(|_| "1,2,3".to_owned());
    println!("scale out: {size} simulated nodes on a three-server cluster");
    for engines in engines.split(',').filter_map(|s| s.trim().parse::<usize>().ok()) {
        scale_out(size, engines, false).await;
    }
    scale_out(size, 3, true).await;
}
