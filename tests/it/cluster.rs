//! The engine on a three-server JetStream cluster, and two engine processes at once.

use std::collections::BTreeSet;

use bus::store::{EventStore, StoreConfig};
use tests::{NatsCluster, NatsServer};

use crate::harness::{launch, TestEngine, TestNode, IMAGE_1_0_0};

/// The statuses the deployment went through, from the log.
async fn statuses(engine: &TestEngine, id: &str) -> Vec<String> {
    let (_, history) = engine.get(&format!("/v1/deployments/{id}/history")).await;
    history.as_array().unwrap().iter().filter_map(|e| e["status"].as_str().map(str::to_owned)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_on_a_three_server_cluster_completes_with_a_server_killed_midway() {
    let mut cluster = NatsCluster::start(3).await;
    let engine = TestEngine::start_on(&cluster.url(), cluster.trust(), 3).await;
    let node = TestNode::start_via(&cluster.url(), &engine).await;
    engine.publish_sample(IMAGE_1_0_0).await;
    let client = cluster.servers[1].client().await;
    let info = async_nats::jetstream::new(client).get_stream("EVENTS").await.unwrap().info().await.unwrap().clone();
    assert_eq!(info.config.num_replicas, 3, "every event is kept on three servers");

    let id = launch(&engine, &node.name).await;
    // Killed while the deployment is under way, whichever server it was.
    cluster.servers[0].kill();
    engine.wait_deployment(&id, "the deployment to run despite the dead server", |v| v["status"] == "running").await;
    let seen = statuses(&engine, &id).await;
    assert_eq!(seen, ["pending_deploy", "received", "downloading", "deploying", "starting", "running"], "nothing lost");

    // And the two servers left carry on: another launch, then the dead server comes back.
    let second = launch(&engine, &node.name).await;
    engine.wait_deployment(&second, "a launch with a server down", |v| v["status"] == "running").await;
    cluster.servers[0].restart().await;
    let store = EventStore::open(cluster.servers[0].client().await, &StoreConfig { replicas: 3, ..Default::default() })
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
