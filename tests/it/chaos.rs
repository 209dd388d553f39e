//! Simulated fleets, on the in-memory runtime.
//!
//! Chaos: many nodes, each behind a link of its own, with links cut and healed, nodes killed
//! and restarted, containers crashing behind the nodes' backs and operators changing their
//! minds, all at random. Once every link is healed, the engine's status must come to equal
//! every node's truth, with nothing left in flight.
//!
//! And nodes in one process sharing a connection and a sled database, as the fleet benchmark
//! runs ten thousand of them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use edge_node::driver::Attachment;
use edge_node::runtime::DEPLOYMENT_LABEL;
use edge_node::sim::SimRuntime;
use edge_node::NodeConfig;
use events::work::NodeWork;
use serde_json::json;
use tests::chaos::ChaosNode;
use tests::NatsServer;

use crate::harness::{launch, TestEngine, TIMEOUT};

/// A simulated node of the test's engine, beating fast.
async fn sim_node(nats: &NatsServer, engine: &TestEngine, i: usize) -> ChaosNode {
    let name = format!("sim{i:02}-{}", &uuid::Uuid::now_v7().simple().to_string()[24..]);
    let (beat, reconcile) = (Duration::from_millis(300), Duration::from_millis(200));
    ChaosNode::start(nats, &name, engine.enroll(&name).await, engine.trust().ca(), beat, reconcile).await
}

/// Where the engine's view and a node's truth differ, if they do.
fn disagreement(engine: &TestEngine, id: &str, node: &ChaosNode) -> Option<String> {
    let view = engine.engine.deployments.get("default", id).ok().flatten()?;
    tests::chaos::disagreement(&view, &node.name, &node.runtime)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulated_fleet_under_chaos_ends_with_the_engine_saying_what_every_node_runs() {
    const NODES: usize = 10;
    let seed = 0x0005_eedc_4a05_u64;
    let mut dice = tests::chaos::Dice(seed);
    let nats = NatsServer::start().await;
    let engine = TestEngine::start(&nats).await;
    let mut nodes = Vec::new();
    for i in 0..NODES {
        nodes.push(sim_node(&nats, &engine, i).await);
    }
    engine.publish_sample(&tests::sim_image("1.0.0")).await;
    let second = json!({"version": "1.1.0", "image": &tests::sim_image("1.1.0")});
    assert_eq!(engine.post("/v1/applications/sample/versions", second).await.0, 201);
    assert_eq!(engine.post("/v1/applications/sample/versions/1.1.0/publish", json!({})).await.0, 200);
    tests::eventually("every simulated node to register", TIMEOUT, || async {
        let (_, listed) = engine.get("/v1/nodes").await;
        (listed["items"].as_array()?.len() >= NODES).then_some(())
    })
    .await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let body = json!({"application": "sample", "version": "1.0.0", "selector": {"site": "chaos"}});
        let (status, launched) = engine.post("/v1/deployments", body).await;
        assert_eq!(status, 201, "{launched}");
        ids.push(launched["id"].as_str().unwrap().to_owned());
    }

    let mut stopped = [false, false];
    let mut version = ["1.0.0", "1.0.0"];
    for _ in 0..60 {
        let node = dice.roll(NODES);
        let which = dice.roll(ids.len());
        match dice.roll(6) {
            0 => nodes[node].link.cut(),
            1 => nodes[node].link.heal(),
            2 => nodes[node].restart().await,
            3 => {
                let containers = nodes[node].runtime.containers();
                if let Some(c) = containers.get(dice.roll(containers.len().max(1))) {
                    nodes[node].runtime.stop_behind_its_back(&c.id);
                }
            }
            4 => {
                let verb = if stopped[which] { "start" } else { "stop" };
                if engine.post(&format!("/v1/deployments/{}/{verb}", ids[which]), json!({})).await.0 == 202 {
                    stopped[which] = !stopped[which];
                }
            }
            _ => {
                let next = if version[which] == "1.0.0" { "1.1.0" } else { "1.0.0" };
                let update = json!({"version": next});
                if engine.post(&format!("/v1/deployments/{}/update", ids[which]), update).await.0 == 202 {
                    version[which] = next;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50 + dice.roll(100) as u64)).await;
    }

    // Healed: measured from here until the engine says what every node runs.
    for node in &nodes {
        node.link.heal();
    }
    let healed = Instant::now();
    let deadline = healed + Duration::from_secs(120);
    let views = loop {
        let mut views = Vec::new();
        let mut differences = Vec::new();
        for id in &ids {
            let (_, view) = engine.get(&format!("/v1/deployments/{id}")).await;
            differences.extend(nodes.iter().filter_map(|n| disagreement(&engine, id, n)));
            views.push(view);
        }
        // Agreed, and settled: a node may say the truth while a step is under way.
        let settled = views.iter().all(|view| {
            nodes
                .iter()
                .all(|n| ["running", "stopped"].contains(&view["nodes"][&n.name]["status"].as_str().unwrap_or("")))
        });
        if differences.is_empty() && settled {
            break views;
        }
        if Instant::now() > deadline {
            let ended: Vec<&String> = nodes.iter().filter(|n| n.task.is_finished()).map(|n| &n.name).collect();
            // Where each node's work stands on the server.
            let store = crate::harness::handler(&nats).await.store().clone();
            let mut consumers = Vec::new();
            for node in &nodes {
                let name = events::subject::node_consumer("default", &node.name);
                let mut consumer: async_nats::jetstream::consumer::PullConsumer =
                    store.consumers().get_consumer(&name).await.unwrap();
                let info = consumer.info().await.unwrap();
                consumers.push(format!(
                    "{}: pending {} ack pending {} redelivered {} waiting {} delivered {} acked {}",
                    node.name,
                    info.num_pending,
                    info.num_ack_pending,
                    info.num_redelivered,
                    info.num_waiting,
                    info.delivered.stream_sequence,
                    info.ack_floor.stream_sequence
                ));
            }
            panic!(
                "still different after 120 s (nodes whose agent ended: {ended:?}):\n{}\n{}",
                differences.join("\n"),
                consumers.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let converged = healed.elapsed();
    eprintln!("chaos (seed {seed:#x}): {NODES} nodes, engine equal to every node's truth {converged:?} after the heal");
    // The read models are what a fresh fold of the log gives: a new engine rebuilds them.
    engine.matches_a_fresh_rebuild(&nats, &ids).await;
    for view in &views {
        for node in &nodes {
            let status = view["nodes"][&node.name]["status"].as_str().unwrap();
            assert!(["running", "stopped"].contains(&status), "left in flight: {status}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_sharing_a_connection_and_a_database_each_run_their_own_work() {
    let nats = NatsServer::start().await;
    let engine = TestEngine::start(&nats).await;
    engine.publish_sample(&tests::sim_image("1.0.0")).await;
    let data = tempfile::tempdir().unwrap();
    let db = sled::open(data.path().join("fleet")).unwrap();
    let client = nats.client().await;
    let mut nodes = Vec::new();
    for name in ["shared-a", "shared-b"] {
        let runtime = SimRuntime::new(Duration::from_millis(5));
        let config = NodeConfig {
            nats_url: nats.url(),
            node: name.to_owned(),
            data_dir: data.path().join(name),
            credentials: Some(engine.enroll(name).await),
            ..NodeConfig::default()
        };
        let (_, links) = tokio::sync::mpsc::unbounded_channel();
        let trees = format!("{name}/");
        // The engine's connection, in the account of the streams.
        let js = async_nats::jetstream::new(client.clone());
        let attachment = Attachment { js, links, db: db.clone(), trees, control: None };
        let task = tokio::spawn(edge_node::driver::run_on(config, Arc::new(runtime.clone()), attachment));
        nodes.push((name, runtime, task));
    }
    for (name, _, _) in &nodes {
        tests::eventually("the node to register", TIMEOUT, || async {
            (engine.get(&format!("/v1/nodes/{name}")).await.0 == 200).then_some(())
        })
        .await;
    }

    let mut ids = Vec::new();
    for (name, _, _) in &nodes {
        let id = launch(&engine, name).await;
        engine.wait_deployment(&id, "the deployment to run", |v| v["status"] == "running").await;
        ids.push(id);
    }
    for ((name, runtime, _), id) in nodes.iter().zip(&ids) {
        let containers = runtime.containers();
        assert_eq!(containers.len(), 1, "{name} runs its own deployment alone: {containers:?}");
        assert_eq!(containers[0].labels.get(DEPLOYMENT_LABEL), Some(id));
        // Its work log, in trees of its own, holds its deployment alone.
        let kept = edge_node::desired::Desired::open(&db, &format!("{name}/")).unwrap().all().unwrap();
        let kept: Vec<String> =
            kept.iter().flatten().map(|e| e.event::<NodeWork>().unwrap().deployment().to_owned()).collect();
        assert_eq!(kept, std::slice::from_ref(id), "{name}'s work log");
        let outbox = edge_node::outbox::Outbox::open(&db, &format!("{name}/"), None).unwrap();
        assert!(outbox.is_empty(), "{name} has sent every report");
    }
    for (_, _, task) in nodes {
        task.abort();
    }
}
