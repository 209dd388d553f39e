//! Faults on the real parts: a cut link, a killed node, containers changed behind the node's
//! back. After each, the read models must say what Docker really runs, and nothing may have
//! been applied twice.

use std::collections::BTreeSet;

use bollard::models::ContainerSummaryStateEnum;
use edge_node::runtime::DEPLOYMENT_LABEL;
use engine::store::{EventStore, StoreConfig};
use serde_json::json;
use tests::{docker, eventually, Link, NatsServer};

use crate::harness::{launch, Lab, TestEngine, TestNode, IMAGE_1_0_0, TIMEOUT};

/// Every report the node ever published, by envelope id: none may be stored twice.
async fn reports_are_stored_once(nats: &NatsServer, node: &str) -> usize {
    let store = EventStore::open(nats.client().await, &StoreConfig::default()).await.unwrap();
    let loaded = store.load(&events::subject::node_reports("default", node)).await.unwrap();
    let ids: BTreeSet<_> = loaded.events.iter().map(|e| e.envelope.id).collect();
    assert_eq!(ids.len(), loaded.events.len(), "a report was stored twice");
    ids.len()
}

/// The deployment's containers in Docker, with whether each runs.
async fn in_docker(docker: &bollard::Docker, id: &str) -> Vec<(String, bool)> {
    let found = tests::containers(docker, DEPLOYMENT_LABEL, id).await.unwrap();
    found.into_iter().map(|c| (c.id.unwrap(), c.state == Some(ContainerSummaryStateEnum::RUNNING))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_link_loses_nothing_and_applies_nothing_twice() {
    let nats = NatsServer::start().await;
    let engine = TestEngine::start(&nats).await;
    let link = Link::to(&format!("127.0.0.1:{}", nats.port())).await;
    let node = TestNode::start_via(&link.url(), &engine).await;
    let docker = docker().await;
    engine.publish_sample(IMAGE_1_0_0).await;
    let (kept, stopped) = (launch(&engine, &node.name).await, launch(&engine, &node.name).await);
    for id in [&kept, &stopped] {
        engine.wait_deployment(id, "the deployment to run", |v| v["status"] == "running").await;
    }
    let before = in_docker(&docker, &stopped).await;

    // The link goes down; the engine goes on taking commands for the node.
    link.cut();
    let (status, _) = engine.post(&format!("/v1/deployments/{stopped}/stop"), json!({})).await;
    assert_eq!(status, 202);
    let added = launch(&engine, &node.name).await;
    let view = engine.wait_deployment(&stopped, "the stop to be requested", |v| v["status"] == "pending_stop").await;
    assert_eq!(view["desired"], "stopped");
    assert!(in_docker(&docker, &kept).await[0].1, "the node's workloads run on without the link");

    // Healed: the node takes the commands it missed, once, and the engine hears its truth.
    link.heal();
    engine.wait_deployment(&stopped, "the stop to be carried out", |v| v["status"] == "stopped").await;
    engine.wait_deployment(&added, "the launch made offline to run", |v| v["status"] == "running").await;
    engine.wait_deployment(&kept, "the untouched one to be running", |v| v["status"] == "running").await;
    let after = in_docker(&docker, &stopped).await;
    assert_eq!(after.len(), 1, "no second container: {after:?}");
    assert_eq!((after[0].0.as_str(), after[0].1), (before[0].0.as_str(), false), "the same container, stopped");
    assert_eq!(in_docker(&docker, &added).await.len(), 1);
    assert_eq!(in_docker(&docker, &kept).await.len(), 1);
    reports_are_stored_once(&nats, &node.name).await;
    node.stop().await;
}

/// The drift notes in the deployment's history, in order.
async fn drifts(engine: &TestEngine, id: &str) -> Vec<String> {
    let (_, history) = engine.get(&format!("/v1/deployments/{id}/history")).await;
    let notes = history.as_array().unwrap().iter().filter_map(|e| e["note"].as_str());
    notes.filter(|n| n.starts_with("drift")).map(str::to_owned).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_stopped_or_removed_behind_the_nodes_back_is_put_back_and_the_drift_recorded() {
    let Lab { nats: _nats, engine, node } = Lab::start().await;
    let docker = docker().await;
    engine.publish_sample(IMAGE_1_0_0).await;
    let id = launch(&engine, &node.name).await;
    engine.wait_deployment(&id, "the deployment to run", |v| v["status"] == "running").await;
    let name = format!("sample-{id}-{}", node.name);
    let first = in_docker(&docker, &id).await[0].0.clone();

    // Stopped through the Docker API: started again, the same container.
    docker.stop_container(&first, None::<bollard::query_parameters::StopContainerOptions>).await.unwrap();
    eventually("the stop to be seen as drift", TIMEOUT, || async {
        (drifts(&engine, &id).await == [format!("drift: {name} stopped")]).then_some(())
    })
    .await;
    eventually("the container to run again", TIMEOUT, || async {
        (in_docker(&docker, &id).await == [(first.clone(), true)]).then_some(())
    })
    .await;

    // Removed through the Docker API: made again.
    let options = bollard::query_parameters::RemoveContainerOptions { force: true, ..Default::default() };
    docker.remove_container(&first, Some(options)).await.unwrap();
    eventually("the removal to be seen as drift", TIMEOUT, || async {
        (drifts(&engine, &id).await.last() == Some(&format!("drift: {name} removed"))).then_some(())
    })
    .await;
    let second = eventually("a new container to run", TIMEOUT, || async {
        let found = in_docker(&docker, &id).await;
        (found.len() == 1 && found[0].1 && found[0].0 != first).then(|| found[0].0.clone())
    })
    .await;
    let view = engine.wait_deployment(&id, "the read model to say running", |v| v["status"] == "running").await;
    assert_eq!(view["nodes"][&node.name]["last_drift"], format!("{name} removed"));
    assert_eq!(in_docker(&docker, &id).await, [(second, true)]);
    node.stop().await;
}
