//! The engine on a three-server JetStream cluster, and several engines at once.

use std::collections::{BTreeMap, BTreeSet};

use bus::store::{EventStore, StoreConfig};
use events::deployment::DeploymentEvent;
use events::deployment_node::DeploymentNodeEvent;
use events::work::NodeWork;
use events::Status;
use serde_json::json;
use tests::{NatsCluster, NatsServer, SimFleet};

use crate::harness::{launch, TestEngine, TestNode, IMAGE_1_0_0};

/// The statuses the deployment went through, from the log.
async fn statuses(engine: &TestEngine, id: &str) -> Vec<String> {
    let (_, history) = engine.get(&format!("/v1/deployments/{id}/history?limit=500")).await;
    history["items"].as_array().unwrap().iter().filter_map(|e| e["status"].as_str().map(str::to_owned)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_on_a_three_server_cluster_completes_with_the_logs_leader_killed_midway() {
    let mut cluster = NatsCluster::start(3).await;
    let engine = TestEngine::start_on(&cluster.url(), cluster.trust(), 3).await;
    let node = TestNode::start_via(&cluster.url(), &engine).await;
    engine.publish_sample(IMAGE_1_0_0).await;
    let client = cluster.servers[1].client().await;
    let info = async_nats::jetstream::new(client).get_stream("EVENTS").await.unwrap().info().await.unwrap().clone();
    assert_eq!(info.config.num_replicas, 3, "every event is kept on three servers");
    // The server that leads the log, as the servers say: members are named n0, n1, n2.
    let leader = info.cluster.and_then(|c| c.leader).expect("the stream has a leader");
    let killed = leader.trim_start_matches('n').parse::<usize>().expect("a member's name");

    let id = launch(&engine, &node.name).await;
    // The leader of the log is killed while the deployment is under way.
    cluster.servers[killed].kill();
    engine.wait_deployment(&id, "the deployment to run despite the dead leader", |v| v["status"] == "running").await;
    // Nothing lost: every step the node reported is in the log. A report resent after the
    // failover may land behind a later one; the engine then takes it as the stale report it
    // is, so the history shows the steps in order, some perhaps left out.
    let steps = ["received", "downloading", "deploying", "starting", "running"];
    let store = engine.engine.commands.store().clone();
    let reported: BTreeSet<String> = store
        .load_matching(&events::subject::node_reports("default", &node.name), 1)
        .await
        .unwrap()
        .iter()
        .filter_map(|e| match e.envelope.event::<events::report::NodeReport>() {
            Ok(events::report::NodeReport::DeploymentState { deployment, status, .. }) if deployment == id => {
                Some(status.to_string())
            }
            _ => None,
        })
        .collect();
    assert!(steps.iter().all(|s| reported.contains(*s)), "every step reported and stored: {reported:?}");
    let seen = statuses(&engine, &id).await;
    let mut expected = ["pending_deploy"].into_iter().chain(steps).peekable();
    let in_order = seen.iter().all(|s| expected.by_ref().any(|e| e == s));
    assert!(in_order && seen.last().map(String::as_str) == Some("running"), "in order, ending running: {seen:?}");
    // Another server leads the log now.
    let survivor = cluster.servers[(killed + 1) % 3].client().await;
    let info = async_nats::jetstream::new(survivor).get_stream("EVENTS").await.unwrap().info().await.unwrap().clone();
    let now_leading = info.cluster.and_then(|c| c.leader).unwrap_or_default();
    assert!(!now_leading.is_empty() && now_leading != leader, "{leader} was killed, yet leads: {now_leading}");

    // And the two servers left carry on: another launch, then the dead server comes back.
    let second = launch(&engine, &node.name).await;
    engine.wait_deployment(&second, "a launch with a server down", |v| v["status"] == "running").await;
    cluster.servers[killed].restart().await;
    let store =
        EventStore::open(cluster.servers[killed].client().await, &StoreConfig { replicas: 3, ..Default::default() })
            .await
            .unwrap();
    tests::eventually("the restarted server to have caught up", crate::harness::TIMEOUT, || async {
        // The node's five reports, on the pair's subject.
        let pair = events::deployment_node::id(&second, &node.name);
        let loaded = store.load(&events::subject::aggregate("default", "deployment_node", &pair)).await.ok()?;
        (loaded.events.len() >= 5).then_some(())
    })
    .await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_engines_at_once_share_the_work_without_doing_anything_twice() {
    let nats = NatsServer::start().await;
    let first = TestEngine::start(&nats).await;
    let second = TestEngine::start(&nats).await;
    let node = TestNode::start(&nats, &first).await;
    first.publish_sample(IMAGE_1_0_0).await;

    // Launched through one and the other.
    let mut ids = Vec::new();
    for engine in [&first, &second, &first, &second] {
        tests::eventually("the other engine to know the node", crate::harness::TIMEOUT, || async {
            (engine.get(&format!("/v1/nodes/{}", node.name)).await.0 == 200).then_some(())
        })
        .await;
        ids.push(launch(engine, &node.name).await);
    }
    for id in &ids {
        for engine in [&first, &second] {
            engine
                .wait_deployment(id, "every deployment to run, in both read models", |v| v["status"] == "running")
                .await;
        }
        assert_eq!(statuses(&first, id).await, statuses(&second, id).await);
    }
    let (_, a) = first.get("/v1/deployments").await;
    let (_, b) = second.get("/v1/deployments").await;
    assert_eq!(a["items"], b["items"], "both read models are folded from the same log");

    // Each piece of work went to the node once, and the node made one container per deployment.
    let store = EventStore::open(nats.client().await, &StoreConfig::default()).await.unwrap();
    let work = store.load(&events::subject::node_desired("default", &node.name)).await.unwrap();
    let deploys: Vec<String> = work.events.iter().map(|e| e.envelope.event_type.clone()).collect();
    assert_eq!(deploys, ["work.deploy"; 4], "{deploys:?}");
    let causes: BTreeSet<_> = work.events.iter().map(|e| e.envelope.causation_id).collect();
    assert_eq!(causes.len(), 4, "one work per launch");
    let docker = tests::docker().await;
    for id in &ids {
        let found = tests::containers(&docker, edge_node::runtime::DEPLOYMENT_LABEL, id).await.unwrap();
        assert_eq!(found.len(), 1, "{id}");
    }
    node.stop().await;
}

/// How long a rollout on a cluster may take once a server and an engine died under it.
const FAILOVER: std::time::Duration = std::time::Duration::from_secs(300);

/// How many of the deployment's nodes run `version` in `engine`'s read model.
fn running(engine: &TestEngine, id: &str) -> usize {
    let view = engine.engine.deployments.get("default", id).ok().flatten();
    view.map_or(0, |v| v.nodes.values().filter(|n| n.status == Status::Running).count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_engines_finish_a_rollout_to_200_nodes_with_an_engine_and_a_server_killed_midway() {
    const FLEET: usize = 200;
    let mut cluster = NatsCluster::start(3).await;
    let (url, trust) = (cluster.url(), cluster.trust().clone());
    let first = TestEngine::start_on(&url, &trust, 3).await;
    let second = TestEngine::start_on(&url, &trust, 3).await;
    let third = TestEngine::start_on(&url, &trust, 3).await;
    first.publish_sample(&tests::sim_image("1.0.0")).await;
    let mut enrolled = Vec::with_capacity(FLEET);
    for i in 0..FLEET {
        let name = format!("sim-{i:03}");
        enrolled.push((name.clone(), first.enroll(&name).await));
    }
    let labels = [("fleet".to_owned(), "sim".to_owned())].into();
    let fleet = SimFleet::start(&url, &trust.ca(), enrolled, &labels).await;
    tests::eventually("every node to be online", crate::harness::TIMEOUT, || async {
        let nodes = third.engine.nodes.all().ok()?;
        let online = nodes.iter().filter(|n| n.state == Some(events::node::NodeState::Online)).count();
        (online == FLEET).then_some(())
    })
    .await;

    // A rollout in waves of ten nodes, through the first engine.
    let body =
        json!({"application": "sample", "version": "1.0.0", "selector": {"fleet": "sim"}, "rollout": {"batch": 10}});
    let (status, launched) = first.post("/v1/deployments", body).await;
    assert_eq!(status, 201, "{launched}");
    let id = launched["id"].as_str().unwrap().to_owned();
    tests::eventually("the first waves to run", crate::harness::TIMEOUT, || async {
        (running(&first, &id) >= 30).then_some(())
    })
    .await;
    // The second engine and a server die mid-rollout, whatever they were doing.
    drop(second);
    cluster.servers[0].kill();
    let at_kill = running(&first, &id);
    assert!(at_kill < FLEET, "the rollout was still under way: {at_kill} of {FLEET} running");

    // A node whose consumer's leader died with the server pulls again once the server's
    // heartbeats stop coming (10 s), and holds a place in its wave until then.
    for engine in [&first, &third] {
        tests::eventually("every node to run, with an engine and a server gone", FAILOVER, || async {
            (running(engine, &id) == FLEET).then_some(())
        })
        .await;
    }

    // Nothing lost, nothing done twice.
    let store = EventStore::open(cluster.servers[1].client().await, &StoreConfig { replicas: 3, ..Default::default() })
        .await
        .unwrap();
    let log = store.load(&events::subject::aggregate("default", "deployment", &id)).await.unwrap();
    let mut released: BTreeMap<String, usize> = BTreeMap::new();
    for event in &log.events {
        if let Ok(DeploymentEvent::WaveReleased { nodes }) = event.envelope.event::<DeploymentEvent>() {
            for node in nodes {
                *released.entry(node).or_default() += 1;
            }
        }
    }
    assert_eq!(released.len(), FLEET, "every node released");
    assert!(released.values().all(|n| *n == 1), "no node released twice: {released:?}");
    for node in &fleet.nodes {
        let work = store.load(&events::subject::node_desired("default", &node.name)).await.unwrap();
        let deploys = work
            .events
            .iter()
            .filter(|e| matches!(e.envelope.event::<NodeWork>(), Ok(NodeWork::Deploy { deployment, .. }) if deployment == id))
            .count();
        assert_eq!(deploys, 1, "{} got its work once", node.name);
        assert_eq!(node.runtime.containers().len(), 1, "{} made one container", node.name);
        let pair = events::deployment_node::id(&id, &node.name);
        let reports = store.load(&events::subject::aggregate("default", "deployment_node", &pair)).await.unwrap();
        let (mut seen, mut last) = (BTreeSet::new(), None);
        for event in &reports.events {
            let Ok(DeploymentNodeEvent::StateReported { status, reported_at, .. }) = event.envelope.event() else {
                panic!("{}: an event of another kind on the pair", node.name);
            };
            assert!(seen.insert((status, reported_at)), "{}: the report {status:?} recorded twice", node.name);
            last = Some(status);
        }
        assert_eq!(last, Some(Status::Running), "{}: the last report", node.name);
    }
}
