//! Phased rollouts on the real parts: a launch and an update reach a fleet a batch at a time,
//! and a rollout whose nodes fail halts, leaving the nodes it did not reach as they were.

use std::collections::BTreeSet;

use edge_node::runtime::NODE_LABEL;
use serde_json::{json, Value};
use tests::{docker, NatsServer};

use crate::harness::{TestEngine, TestNode, IMAGE_1_0_0, TIMEOUT};

/// Walks the history: at each wave, the nodes released and not yet settled, with the new
/// ones, never exceed `batch`. Returns the waves.
fn waves_within(history: &Value, batch: usize) -> Vec<Vec<String>> {
    let settled = ["running", "failed", "stopped", "ready", "staged"];
    let (mut released, mut done, mut waves) = (BTreeSet::new(), BTreeSet::new(), Vec::new());
    for entry in history["items"].as_array().unwrap() {
        if let Some(nodes) = entry["note"].as_str().and_then(|n| n.strip_prefix("rollout reaches ")) {
            let nodes: Vec<String> = nodes.split(", ").map(str::to_owned).collect();
            let under_way = released.difference(&done).count();
            assert!(under_way + nodes.len() <= batch, "{under_way} under way and {nodes:?} released at once");
            released.extend(nodes.iter().cloned());
            waves.push(nodes);
        } else if let (Some(node), Some(status)) = (entry["node"].as_str(), entry["status"].as_str()) {
            if settled.contains(&status) {
                done.insert(node.to_owned());
            } else {
                done.remove(node);
            }
        }
    }
    waves
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phased_rollout_goes_a_batch_at_a_time_and_halts_on_failure() {
    let nats = NatsServer::start().await;
    let engine = TestEngine::start(&nats).await;
    let mut nodes = Vec::new();
    for _ in 0..4 {
        nodes.push(TestNode::start(&nats, &engine).await);
    }
    let names: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
    engine.publish_sample(IMAGE_1_0_0).await;
    // Pinned to a digest the registry does not have: it fails to download.
    let missing = format!("127.0.0.1:5000/sample/missing:1.0.1@sha256:{}", "0".repeat(64));
    let broken = json!({"version": "1.0.1", "image": missing});
    assert_eq!(engine.post("/v1/applications/sample/versions", broken).await.0, 201);
    assert_eq!(engine.post("/v1/applications/sample/versions/1.0.1/publish", json!({})).await.0, 200);

    // Launched two at a time.
    let body = json!({"application": "sample", "version": "1.0.0", "nodes": names, "rollout": {"batch": 2}});
    let (status, launched) = engine.post("/v1/deployments", body).await;
    assert_eq!(status, 201, "{launched}");
    let id = launched["id"].as_str().unwrap().to_owned();
    engine.wait_deployment(&id, "every node to run", |v| v["status"] == "running").await;
    let (_, history) = engine.get(&format!("/v1/deployments/{id}/history?limit=500")).await;
    let waves = waves_within(&history, 2);
    assert_eq!(waves.concat().into_iter().collect::<BTreeSet<_>>().len(), 4, "every node reached once: {waves:?}");
    assert!(waves.len() >= 2, "{waves:?}");

    // Updated one at a time to a version that cannot be downloaded: the first failure halts it.
    let update = json!({"version": "1.0.1", "rollout": {"batch": 1, "max_failures": 0}});
    let (status, body) = engine.post(&format!("/v1/deployments/{id}/update"), update).await;
    assert_eq!(status, 202, "{body}");
    let view = engine.wait_deployment(&id, "the rollout to halt", |v| v["rollout_halted"].is_string()).await;
    let failed: Vec<&String> = names.iter().filter(|n| view["nodes"][n.as_str()]["status"] == "failed").collect();
    assert_eq!(failed.len(), 1, "{view}");
    for node in names.iter().filter(|n| !failed.contains(n)) {
        let seen = &view["nodes"][node];
        assert_eq!(seen["released"], false, "{view}");
        assert!(seen["reason"].as_str().unwrap().contains("halted"), "{view}");
        // Untouched: 1.0.0 runs on there.
        let found = tests::containers(&docker().await, NODE_LABEL, node).await.unwrap();
        assert_eq!(found.len(), 1);
        assert!(tests::is_image(found[0].image.as_deref(), IMAGE_1_0_0), "{found:?}");
        assert_eq!(found[0].state, Some(bollard::models::ContainerSummaryStateEnum::RUNNING));
    }
    for node in nodes {
        node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_batch_that_is_not_a_number_or_a_percent_is_refused() {
    let nats = NatsServer::start().await;
    let engine = TestEngine::start(&nats).await;
    let node = TestNode::start(&nats, &engine).await;
    engine.publish_sample(IMAGE_1_0_0).await;
    for (batch, message) in [(json!("many"), "is not N"), (json!(0), "never start"), (json!("150%"), "over 100%")] {
        let body =
            json!({"application": "sample", "version": "1.0.0", "nodes": [node.name], "rollout": {"batch": batch}});
        let (status, answer) = engine.post("/v1/deployments", body).await;
        assert_eq!((status, answer["field"].as_str()), (422, Some("rollout.batch")), "{answer}");
        assert!(answer["error"].as_str().unwrap().contains(message), "{answer}");
    }
    let (_, page) = engine.get("/v1/deployments").await;
    assert_eq!(page["items"], json!([]), "nothing refused was stored");
    node.stop().await;
}

/// Adds and publishes a version of `sample`.
async fn publish_version(engine: &TestEngine, version: Value) {
    let number = version["version"].as_str().unwrap().to_owned();
    let (status, body) = engine.post("/v1/applications/sample/versions", version).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(engine.post(&format!("/v1/applications/sample/versions/{number}/publish"), json!({})).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_that_fails_to_start_or_to_stay_running_goes_back_by_itself() {
    let nats = NatsServer::start().await;
    let engine = TestEngine::start(&nats).await;
    let node = TestNode::start(&nats, &engine).await;
    let docker = docker().await;
    engine.publish_sample(IMAGE_1_0_0).await;
    // Pinned to a digest the registry does not have: it fails to download.
    let missing = format!("127.0.0.1:5000/sample/missing:1.0.1@sha256:{}", "0".repeat(64));
    publish_version(&engine, json!({"version": "1.0.1", "image": missing})).await;
    // Starts, runs two seconds, and exits.
    let short =
        format!("services:\n  web:\n    image: {IMAGE_1_0_0}\n    command: [\"sh\", \"-c\", \"sleep 2; exit 3\"]\n");
    publish_version(&engine, json!({"version": "1.0.2", "compose": short})).await;
    let body = json!({"application": "sample", "version": "1.0.0", "nodes": [node.name]});
    let (_, launched) = engine.post("/v1/deployments", body).await;
    let id = launched["id"].as_str().unwrap().to_owned();
    engine.wait_deployment(&id, "1.0.0 to run", |v| v["status"] == "running").await;
    let runs_1_0_0 = || async {
        let found = tests::containers(&docker, NODE_LABEL, &node.name).await.unwrap();
        found.len() == 1
            && tests::is_image(found[0].image.as_deref(), IMAGE_1_0_0)
            && found[0].state == Some(bollard::models::ContainerSummaryStateEnum::RUNNING)
    };

    for (version, cause) in [("1.0.1", "did not start"), ("1.0.2", "was stopped")] {
        let since = chrono::Utc::now().timestamp();
        let update = json!({"version": version, "rollback_within": 60});
        let (status, body) = engine.post(&format!("/v1/deployments/{id}/update"), update).await;
        assert_eq!(status, 202, "{body}");
        let view = engine
            .wait_deployment(&id, &format!("{version} to go back to 1.0.0"), |v| {
                v["rolled_back"].is_string() && v["version"] == "1.0.0" && v["status"] == "running"
            })
            .await;
        assert!(view["rolled_back"].as_str().unwrap().contains(cause), "{view}");
        tests::eventually("1.0.0 to run in Docker again", TIMEOUT, || async { runs_1_0_0().await.then_some(()) }).await;
        let (_, history) = engine.get(&format!("/v1/deployments/{id}/history?limit=500")).await;
        let note = history["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["note"].as_str())
            .rfind(|n| n.starts_with("rolled back"));
        assert!(note.is_some_and(|n| n.starts_with("rolled back to 1.0.0")), "{history}");
        // Going back took 1.0.0's image by its digest, which the node still had: nothing was
        // downloaded.
        let pulled = tests::pulls_between(&docker, since, chrono::Utc::now().timestamp() + 1).await;
        assert_eq!(pulled, Vec::<String>::new(), "the rollback from {version} pulled");
    }
    // The newest published version is available again.
    let (_, notes) = engine.get("/v1/notifications").await;
    assert_eq!(notes["items"][0]["available_version"], "1.0.2", "{notes}");
    node.stop().await;
}
