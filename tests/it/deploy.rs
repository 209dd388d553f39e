//! Launches on the real Docker engine: from the API through the node's subject, the agent,
//! Docker and the outbox, back to the read model.

use edge_node::runtime::{DEPLOYMENT_LABEL, NODE_LABEL};
use serde_json::json;
use tests::{docker, eventually, NatsServer};

use crate::harness::{launch, Lab, TestEngine, TestNode, IMAGE_1_0_0, IMAGE_1_1_0, TIMEOUT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_launch_runs_in_docker_and_the_read_model_says_running() {
    let Lab { nats: _nats, engine, node } = Lab::start().await;
    engine.publish_sample(IMAGE_1_0_0).await;
    let id = launch(&engine, &node.name).await;

    let view = engine.wait_deployment(&id, "the deployment to run", |v| v["status"] == "running").await;
    assert_eq!(view["nodes"][&node.name]["status"], "running");
    // Pinned to the digest its tag had when it was published.
    assert!(tests::is_image(view["image"].as_str(), IMAGE_1_0_0) && view["image"] != IMAGE_1_0_0, "{view}");

    // What dockerd actually runs.
    let docker = docker().await;
    let containers = tests::containers(&docker, DEPLOYMENT_LABEL, &id).await.unwrap();
    assert_eq!(containers.len(), 1, "one container for the deployment: {containers:?}");
    let container = &containers[0];
    assert_eq!(container.image.as_deref(), view["image"].as_str(), "it runs by digest");
    assert_eq!(container.state, Some(bollard::models::ContainerSummaryStateEnum::RUNNING));
    assert_eq!(container.labels.as_ref().unwrap()[NODE_LABEL], node.name);
    // Confined: capabilities dropped to a few, no privilege gained by exec, processes bounded,
    // logs rotated.
    let inspected = docker.inspect_container(container.id.as_deref().unwrap(), None).await.unwrap();
    let host = inspected.host_config.unwrap();
    assert_eq!(host.cap_drop, Some(vec!["ALL".to_owned()]));
    let kept: Vec<String> = edge_node::docker::CAPABILITIES.iter().map(|c| c.to_string()).collect();
    assert_eq!(
        host.cap_add.as_ref().map(|c| c.iter().map(|c| c.trim_start_matches("CAP_").to_owned()).collect()),
        Some(kept)
    );
    assert_eq!(host.security_opt, Some(vec!["no-new-privileges:true".to_owned()]));
    assert_eq!(host.pids_limit, Some(edge_node::docker::PIDS_LIMIT));
    let logs = host.log_config.unwrap();
    assert_eq!(logs.typ.as_deref(), Some("json-file"));
    let rotation = logs.config.unwrap_or_default();
    assert_eq!((rotation["max-size"].as_str(), rotation["max-file"].as_str()), ("10m", "3"));

    // Every step was reported, in order, as events of the deployment on that node.
    let store = engine.engine.commands.store();
    let pair = events::deployment_node::id(&id, &node.name);
    let loaded = store.load(&events::subject::aggregate("default", "deployment_node", &pair)).await.unwrap();
    let statuses: Vec<String> = loaded
        .events
        .iter()
        .map(|e| match e.envelope.event().unwrap() {
            events::deployment_node::DeploymentNodeEvent::StateReported { status, .. } => status.to_string(),
            events::deployment_node::DeploymentNodeEvent::Overdue { status, .. } => format!("{status} overdue"),
        })
        .collect();
    assert_eq!(statuses, ["received", "downloading", "deploying", "starting", "running"]);
    assert!(loaded.events.iter().all(|e| e.envelope.actor == format!("node:{}", node.name)));
    let launched = store.load(&events::subject::aggregate("default", "deployment", &id)).await.unwrap();
    let correlation = launched.events[0].envelope.correlation_id;
    assert!(loaded.events.iter().all(|e| e.envelope.correlation_id == correlation));
    node.stop().await;
}

/// Launches `image` and waits for it to fail; returns the failure and the deployment id.
async fn launch_failing(image: &str) -> (serde_json::Value, String) {
    let Lab { nats: _nats, engine, node } = Lab::start().await;
    engine.publish_sample(image).await;
    let id = launch(&engine, &node.name).await;
    let view = engine.wait_deployment(&id, "the deployment to fail", |v| v["status"] == "failed").await;
    let error = view["nodes"][&node.name]["error"].clone();
    node.stop().await;
    (error, id)
}

/// A digest no registry has: an image pinned to it is published as it is, and fails on the node.
const NO_SUCH_DIGEST: &str = "@sha256:0000000000000000000000000000000000000000000000000000000000000000";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_pins_each_tag_to_its_digest_and_refuses_a_tag_the_registry_does_not_have() {
    let nats = NatsServer::start().await;
    let engine = TestEngine::start(&nats).await;
    engine.publish_sample(IMAGE_1_0_0).await;
    // What the registry itself says the tag names.
    let head = reqwest::Client::new()
        .head("http://127.0.0.1:5000/v2/sample/app/manifests/1.0.0")
        .header("accept", "application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json")
        .send()
        .await
        .unwrap();
    let digest = head.headers()["docker-content-digest"].to_str().unwrap().to_owned();
    let (_, app) = engine.get("/v1/applications/sample").await;
    assert_eq!(app["versions"][0]["digests"], json!({ IMAGE_1_0_0: digest }), "{app}");

    let missing = "127.0.0.1:5000/sample/missing:9.9.9";
    let (status, body) =
        engine.post("/v1/applications/sample/versions", json!({"version": "2.0.0", "image": missing})).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = engine.post("/v1/applications/sample/versions/2.0.0/publish", json!({})).await;
    assert_eq!((status, body["field"].as_str()), (422, Some("image")), "{body}");
    assert!(body["error"].as_str().unwrap().contains("is not in its registry"), "{body}");
    let (_, app) = engine.get("/v1/applications/sample").await;
    assert_eq!(app["versions"][1]["published"], false, "{app}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_launch_of_an_image_missing_from_the_registry_fails_with_a_code_and_message() {
    let (error, id) = launch_failing(&format!("127.0.0.1:5000/sample/missing:9.9.9{NO_SUCH_DIGEST}")).await;
    assert_eq!(error["code"], "image_not_found", "{error}");
    assert!(error["message"].as_str().unwrap().contains("sample/missing"), "{error}");
    let docker = docker().await;
    assert!(tests::containers(&docker, DEPLOYMENT_LABEL, &id).await.unwrap().is_empty(), "no container was created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_launch_of_a_malformed_image_reference_fails_with_its_own_code() {
    let (error, _) = launch_failing(&format!("127.0.0.1:5000/Sample/UPPER:1{NO_SUCH_DIGEST}")).await;
    assert_eq!(error["code"], "invalid_image_reference", "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_start_and_uninstall_act_on_the_containers_in_docker() {
    let Lab { nats: _nats, engine, node } = Lab::start().await;
    let docker = docker().await;
    let image = tests::unique_image(&docker, IMAGE_1_0_0, "lifecycle").await.unwrap();
    engine.publish_sample(&image).await;
    let id = launch(&engine, &node.name).await;
    engine.wait_deployment(&id, "the deployment to run", |v| v["status"] == "running").await;
    let container = |state: bollard::models::ContainerSummaryStateEnum| {
        let (docker, id) = (docker.clone(), id.clone());
        async move {
            let found = tests::containers(&docker, DEPLOYMENT_LABEL, &id).await.unwrap();
            (found.len() == 1 && found[0].state == Some(state)).then(|| found[0].id.clone().unwrap())
        }
    };
    use bollard::models::ContainerSummaryStateEnum::{EXITED, RUNNING};
    let first = eventually("the container to run", TIMEOUT, || container(RUNNING)).await;

    let (status, body) = engine.post(&format!("/v1/deployments/{id}/stop"), json!({})).await;
    assert_eq!((status, &body["deployment"]["status"]), (202, &json!("pending_stop")), "{body}");
    let view = engine.wait_deployment(&id, "the deployment to stop", |v| v["status"] == "stopped").await;
    assert_eq!(view["desired"], "stopped");
    let stopped = eventually("the container to exit", TIMEOUT, || container(EXITED)).await;
    assert_eq!(stopped, first, "a stop keeps the container");
    let (status, body) = engine.post(&format!("/v1/deployments/{id}/stop"), json!({})).await;
    assert_eq!((status, body["field"].as_str()), (409, Some("id")), "stopping twice is refused: {body}");

    let (status, _) = engine.post(&format!("/v1/deployments/{id}/start"), json!({})).await;
    assert_eq!(status, 202);
    engine.wait_deployment(&id, "the deployment to run again", |v| v["status"] == "running").await;
    let restarted = eventually("the container to run again", TIMEOUT, || container(RUNNING)).await;
    assert_eq!(restarted, first, "a start reuses the container");

    let response = engine.http.delete(engine.url(&format!("/v1/deployments/{id}"))).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 202);
    let view = engine.wait_deployment(&id, "the deployment to be removed", |v| v["status"] == "removed").await;
    assert_eq!(view["desired"], "removed");
    assert!(tests::containers(&docker, DEPLOYMENT_LABEL, &id).await.unwrap().is_empty(), "the container is gone");
    assert!(!tests::has_image(&docker, &image).await, "the image no one else uses is gone");

    let (_, history) = engine.get(&format!("/v1/deployments/{id}/history?limit=500")).await;
    let statuses: Vec<&str> =
        history["items"].as_array().unwrap().iter().map(|e| e["status"].as_str().unwrap()).collect();
    assert_eq!(
        statuses,
        [
            "pending_deploy",
            "received",
            "downloading",
            "deploying",
            "starting",
            "running",
            "pending_stop",
            "stopping",
            "stopped",
            "pending_start",
            "starting",
            "running",
            "pending_remove",
            "removing",
            "removed",
        ]
    );
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uninstall_keeps_an_image_another_deployment_still_runs() {
    let Lab { nats: _nats, engine, node } = Lab::start().await;
    let docker = docker().await;
    let image = tests::unique_image(&docker, IMAGE_1_0_0, "shared").await.unwrap();
    engine.publish_sample(&image).await;
    let (first, second) = (launch(&engine, &node.name).await, launch(&engine, &node.name).await);
    for id in [&first, &second] {
        engine.wait_deployment(id, "both deployments to run", |v| v["status"] == "running").await;
    }
    let response = engine.http.delete(engine.url(&format!("/v1/deployments/{first}"))).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 202);
    engine.wait_deployment(&first, "the first to be removed", |v| v["status"] == "removed").await;
    // Pulled by digest, the image is known by its pinned reference.
    let (_, view) = engine.get(&format!("/v1/deployments/{second}")).await;
    let pinned = view["image"].as_str().unwrap();
    assert!(tests::is_image(Some(pinned), &image) && pinned != image, "{view}");
    assert!(tests::has_image(&docker, pinned).await, "the second deployment still uses the image");
    assert_eq!(tests::containers(&docker, DEPLOYMENT_LABEL, &second).await.unwrap().len(), 1);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_takes_up_its_deployments_from_its_local_state() {
    let (Lab { nats, engine, node }, id) = Lab::running().await;
    let docker = docker().await;
    let before = tests::containers(&docker, DEPLOYMENT_LABEL, &id).await.unwrap();

    let node = node.restart(&nats, &engine).await;
    let (status, _) = engine.post(&format!("/v1/deployments/{id}/stop"), json!({})).await;
    assert_eq!(status, 202);
    engine.wait_deployment(&id, "the restarted node to stop it", |v| v["status"] == "stopped").await;
    let after = tests::containers(&docker, DEPLOYMENT_LABEL, &id).await.unwrap();
    assert_eq!(after.len(), 1, "no second container: {after:?}");
    assert_eq!(after[0].id, before[0].id);
    assert_eq!(after[0].state, Some(bollard::models::ContainerSummaryStateEnum::EXITED));
    let (_, history) = engine.get(&format!("/v1/deployments/{id}/history?limit=500")).await;
    let downloads = history["items"].as_array().unwrap().iter().filter(|e| e["status"] == "downloading").count();
    assert_eq!(downloads, 1, "the restarted node does not download again: {history}");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_downloads_first_and_switches_after_with_notifications_on_publish() {
    let Lab { nats: _nats, engine, node } = Lab::start().await;
    engine.publish_sample(IMAGE_1_0_0).await;
    let add = |version: &str, image: &str| {
        engine.post("/v1/applications/sample/versions", json!({"version": version, "image": image}))
    };
    assert_eq!(add("1.0.1", &format!("127.0.0.1:5000/sample/missing:1.0.1{NO_SUCH_DIGEST}")).await.0, 201);
    assert_eq!(add("1.1.0", IMAGE_1_1_0).await.0, 201);
    let engine = &engine;
    let publish = |version: &'static str| async move {
        engine.post(&format!("/v1/applications/sample/versions/{version}/publish"), json!({})).await
    };
    let notifications = || async {
        let (status, page) = engine.get("/v1/notifications").await;
        assert_eq!(status, 200, "{page}");
        page["items"].as_array().unwrap().clone()
    };

    let id = launch(engine, &node.name).await;
    engine.wait_deployment(&id, "1.0.0 to run", |v| v["status"] == "running").await;
    let docker = docker().await;
    let running = |image: &'static str| {
        let (docker, id) = (docker.clone(), id.clone());
        async move {
            let found = tests::containers(&docker, DEPLOYMENT_LABEL, &id).await.unwrap();
            let running = bollard::models::ContainerSummaryStateEnum::RUNNING;
            (found.len() == 1 && found[0].state == Some(running) && tests::is_image(found[0].image.as_deref(), image))
                .then(|| found[0].id.clone().unwrap())
        }
    };
    let first = eventually("1.0.0's container to run", TIMEOUT, || running(IMAGE_1_0_0)).await;
    assert!(notifications().await.is_empty(), "nothing newer is published yet");

    // A newer version is published: the deployment shows it.
    assert_eq!(publish("1.0.1").await.0, 200);
    let shown = eventually("a notification for 1.0.1", TIMEOUT, || async {
        let items = notifications().await;
        (items.len() == 1).then(|| items[0].clone())
    })
    .await;
    assert_eq!((shown["deployment"].as_str(), shown["current_version"].as_str()), (Some(id.as_str()), Some("1.0.0")));
    assert_eq!(shown["available_version"], "1.0.1");
    assert_eq!(shown["nodes"], json!([node.name]));

    // Its image cannot be downloaded: the update fails and 1.0.0 runs on, untouched.
    let (status, body) = engine.post(&format!("/v1/deployments/{id}/update"), json!({"version": "1.0.1"})).await;
    assert_eq!(status, 202, "{body}");
    let view = engine.wait_deployment(&id, "the update to fail", |v| v["status"] == "failed").await;
    assert_eq!(view["nodes"][&node.name]["error"]["code"], "image_not_found");
    assert_eq!(running(IMAGE_1_0_0).await, Some(first.clone()), "the old container runs until a new image is present");
    assert!(notifications().await.is_empty(), "the deployment is at the newest version now");

    // 1.1.0 is published and the update goes through: pulled first, switched after.
    assert_eq!(publish("1.1.0").await.0, 200);
    eventually("a notification for 1.1.0", TIMEOUT, || async {
        let items = notifications().await;
        (items.len() == 1 && items[0]["available_version"] == "1.1.0").then_some(())
    })
    .await;
    let (status, _) = engine.post(&format!("/v1/deployments/{id}/update"), json!({"version": "1.1.0"})).await;
    assert_eq!(status, 202);
    let view = engine.wait_deployment(&id, "1.1.0 to run", |v| v["status"] == "running").await;
    assert_eq!(view["version"].as_str(), Some("1.1.0"));
    assert!(tests::is_image(view["image"].as_str(), IMAGE_1_1_0), "{view}");
    let second = eventually("1.1.0's container to run", TIMEOUT, || running(IMAGE_1_1_0)).await;
    assert_ne!(second, first);
    assert!(notifications().await.is_empty(), "the update clears the notification");

    let (_, history) = engine.get(&format!("/v1/deployments/{id}/history?limit=500")).await;
    let tail: Vec<&str> = history["items"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .take(6)
        .rev()
        .map(|e| e["status"].as_str().unwrap())
        .collect();
    assert_eq!(tail, ["pending_deploy", "received", "downloading", "deploying", "starting", "running"]);
    let (status, body) = engine.post(&format!("/v1/deployments/{id}/update"), json!({"version": "1.1.0"})).await;
    assert_eq!((status, body["field"].as_str()), (409, Some("id")), "{body}");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_staged_deployment_downloads_then_waits_for_an_apply() {
    let Lab { nats: _nats, engine, node } = Lab::start().await;
    engine.publish_sample(IMAGE_1_0_0).await;
    let version = json!({"version": "1.1.0", "image": IMAGE_1_1_0});
    assert_eq!(engine.post("/v1/applications/sample/versions", version).await.0, 201);
    assert_eq!(engine.post("/v1/applications/sample/versions/1.1.0/publish", json!({})).await.0, 200);
    let docker = docker().await;

    // Staged, not applied at once: downloaded, then it waits with no container.
    let body = json!({"application": "sample", "version": "1.0.0", "nodes": [node.name], "staged": true, "instantly_apply": false});
    let (status, launched) = engine.post("/v1/deployments", body).await;
    assert_eq!(status, 201, "{launched}");
    let id = launched["id"].as_str().unwrap().to_owned();
    // Nothing of it runs yet: `staged` (Kelvin), where an update of a running one is `ready`.
    let view = engine.wait_deployment(&id, "the download to finish", |v| v["status"] == "staged").await;
    assert_eq!((view["staged"].as_bool(), view["awaiting_apply"].as_bool()), (Some(true), Some(true)));
    assert!(
        tests::containers(&docker, DEPLOYMENT_LABEL, &id).await.unwrap().is_empty(),
        "nothing runs before the apply"
    );
    let (_, page) = engine.get("/v1/deployments?staged=true&status=staged").await;
    assert_eq!(page["items"].as_array().unwrap().len(), 1, "{page}");
    let (_, page) = engine.get("/v1/deployments?staged=false").await;
    assert!(page["items"].as_array().unwrap().is_empty(), "{page}");

    // One apply for several deployments: each answers for itself.
    let apply = json!({"deployments": [id, "01a20000-0000-7000-8000-000000000000"]});
    let (status, answer) = engine.post("/v1/deployments/apply", apply).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["results"][0]["status"], 202, "{answer}");
    assert_eq!(answer["results"][1]["status"], 404, "{answer}");
    engine.wait_deployment(&id, "the applied deployment to run", |v| v["status"] == "running").await;
    let (_, history) = engine.get(&format!("/v1/deployments/{id}/history?limit=500")).await;
    let statuses: Vec<&str> =
        history["items"].as_array().unwrap().iter().map(|e| e["status"].as_str().unwrap()).collect();
    assert_eq!(
        statuses,
        [
            "pending_deploy",
            "received",
            "processing",
            "downloading",
            "staged",
            "pending_apply",
            "deploying",
            "starting",
            "running"
        ]
    );

    // A staged update: the old version runs on, `ready`, until the apply.
    let update = json!({"version": "1.1.0", "staged": true, "instantly_apply": false});
    assert_eq!(engine.post(&format!("/v1/deployments/{id}/update"), update).await.0, 202);
    engine.wait_deployment(&id, "the new version to be downloaded", |v| v["status"] == "ready").await;
    let found = tests::containers(&docker, DEPLOYMENT_LABEL, &id).await.unwrap();
    assert_eq!(found.len(), 1);
    assert!(tests::is_image(found[0].image.as_deref(), IMAGE_1_0_0), "{found:?}");
    assert_eq!(
        found[0].state,
        Some(bollard::models::ContainerSummaryStateEnum::RUNNING),
        "the old version runs until the apply"
    );
    let (status, answer) = engine.post("/v1/deployments/apply", json!({"deployments": [id]})).await;
    assert_eq!((status, &answer["results"][0]["status"]), (200, &json!(202)), "{answer}");
    engine
        .wait_deployment(&id, "the new version to run", |v| v["status"] == "running" && v["version"] == "1.1.0")
        .await;
    eventually("1.1.0 to run in Docker", TIMEOUT, || async {
        let found = tests::containers(&docker, DEPLOYMENT_LABEL, &id).await.unwrap();
        (found.len() == 1 && tests::is_image(found[0].image.as_deref(), IMAGE_1_1_0)).then_some(())
    })
    .await;
    let (status, answer) = engine.post("/v1/deployments/apply", json!({"deployments": [id]})).await;
    assert_eq!((status, &answer["results"][0]["status"]), (200, &json!(409)), "nothing left to apply: {answer}");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_update_recreates_the_container_only_when_its_image_changed() {
    let Lab { nats: _nats, engine, node } = Lab::start().await;
    let docker = docker().await;
    let image = tests::unique_image(&docker, IMAGE_1_0_0, "forced").await.unwrap();
    engine.publish_sample(&image).await;
    let id = launch(&engine, &node.name).await;
    engine.wait_deployment(&id, "the deployment to run", |v| v["status"] == "running").await;
    let container = || async {
        let found = tests::containers(&docker, DEPLOYMENT_LABEL, &id).await.unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        (found[0].id.clone().unwrap(), found[0].image_id.clone().unwrap())
    };
    let (first, first_image) = container().await;
    let force = || async {
        let (status, body) = engine.post(&format!("/v1/deployments/{id}/force-update"), json!({})).await;
        assert_eq!(status, 202, "{body}");
        let sequence = body["sequence"].as_u64().unwrap();
        // Settled again after this request: `running`, reported after the request's event.
        tests::eventually("the node's answer to the forced update", TIMEOUT, || async {
            let (_, history) = engine.get(&format!("/v1/deployments/{id}/history?limit=500")).await;
            let last = history["items"].as_array()?.last()?.clone();
            (last["sequence"].as_u64()? > sequence && last["status"] == "running").then_some(())
        })
        .await;
    };

    // Nothing changed under the tag: the container stays.
    force().await;
    assert_eq!(container().await, (first.clone(), first_image.clone()), "an unchanged image keeps its container");

    // Another image is pushed under the same tag: the container is recreated from it.
    tests::push_as(&docker, IMAGE_1_1_0, &image).await.unwrap();
    force().await;
    let (second, second_image) = container().await;
    assert_ne!(second, first, "a changed image gets a new container");
    assert_ne!(second_image, first_image);
    let expected = docker.inspect_image(IMAGE_1_1_0).await.unwrap().id.unwrap();
    assert_eq!(second_image, expected, "the new container runs the new content");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_read_through_the_engine_a_page_of_200_lines_at_a_time() {
    let Lab { nats: _nats, engine, node } = Lab::start().await;
    engine.publish_sample("127.0.0.1:5000/sample/logger:1.0.0").await;
    let id = launch(&engine, &node.name).await;
    engine.wait_deployment(&id, "the logger to run", |v| v["status"] == "running").await;

    let (engine, id) = (&engine, &id);
    let page = |cursor: Option<String>| {
        let path = match cursor {
            Some(c) => format!("/v1/deployments/{id}/logs?cursor={c}"),
            None => format!("/v1/deployments/{id}/logs"),
        };
        async move { engine.get(&path).await }
    };
    // The container writes its 450 lines as it starts; wait until the last one is there.
    eventually("all 450 lines to be written", TIMEOUT, || async {
        let (status, body) = page(Some(format!("sample-{id}-{}:449", node.name))).await;
        (status == 200 && body["containers"][0]["lines"] == json!(["line 450"])).then_some(())
    })
    .await;

    let mut lines = Vec::new();
    let mut sizes = Vec::new();
    let mut cursor = None;
    loop {
        let (status, body) = page(cursor.clone()).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["node"], node.name.as_str());
        let container = &body["containers"][0];
        assert_eq!(container["container"], format!("sample-{id}-{}", node.name));
        let got: Vec<String> = serde_json::from_value(container["lines"].clone()).unwrap();
        sizes.push(got.len());
        lines.extend(got);
        match body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(sizes, [200, 200, 50]);
    let expected: Vec<String> = (1..=450).map(|i| format!("line {i}")).collect();
    assert_eq!(lines, expected);

    for (query, field) in [("cursor=nonsense", "cursor"), ("node=elsewhere", "node"), ("tail=5", "tail")] {
        let (status, body) = engine.get(&format!("/v1/deployments/{id}/logs?{query}")).await;
        assert_eq!((status, body["field"].as_str()), (400, Some(field)), "{query}: {body}");
    }

    // A node that is gone does not answer: the engine says so instead of hanging.
    node.task.abort();
    let (status, body) = page(None).await;
    assert!(matches!(status, 502 | 504), "{status}: {body}");
    assert_eq!(body["field"], "node");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_node_turns_unreachable_without_touching_its_deployments_state() {
    let (Lab { nats, engine, node }, id) = Lab::running().await;

    // Heartbeats carry the containers' telemetry.
    let telemetry = eventually("a heartbeat with the container", TIMEOUT, || async {
        let (status, beat) = engine.get(&format!("/v1/nodes/{}/telemetry", node.name)).await;
        (status == 200 && beat["containers"][0]["state"] == "running").then_some(beat)
    })
    .await;
    let container = &telemetry["containers"][0];
    assert_eq!(container["deployment"], id.as_str());
    assert!(container["memory_bytes"].as_u64().unwrap() > 0, "{telemetry}");
    assert_eq!(telemetry["interval_ms"], 300);

    // The node goes silent (its process dies; its container runs on).
    node.task.abort();
    eventually("the node to be unreachable", TIMEOUT, || async {
        (engine.node_state(&node.name).await.as_deref() == Some("unreachable")).then_some(())
    })
    .await;
    let (_, view) = engine.get(&format!("/v1/deployments/{id}")).await;
    assert_eq!(view["status"], "running", "the deployment keeps its last known state: {view}");
    assert_eq!(view["nodes"][&node.name]["status"], "running");
    assert_eq!(view["nodes"][&node.name]["unreachable"], true, "and says the node is unreachable beside it: {view}");
    let (_, page) = engine.get("/v1/deployments").await;
    assert_eq!(page["items"][0]["nodes"][&node.name]["unreachable"], true, "{page}");

    // Back: online with its first heartbeat.
    let node = node.restart(&nats, &engine).await;
    assert_eq!(engine.node_state(&node.name).await.as_deref(), Some("online"));
    let loaded =
        engine.engine.commands.store().load(&events::subject::aggregate("default", "node", &node.name)).await.unwrap();
    let states: Vec<String> = loaded
        .events
        .iter()
        .filter_map(|e| match e.envelope.event().unwrap() {
            events::node::NodeEvent::StateChanged { state } => Some(format!("{state:?}")),
            _ => None,
        })
        .collect();
    assert_eq!(states, ["Online", "Unreachable", "Online"], "only the changes are in the event log");
    let telemetry = engine.engine.commands.store().jetstream().get_stream("TELEMETRY").await.unwrap();
    let info = telemetry.get_info().await.unwrap();
    assert!(info.state.messages > 0);
    assert_eq!(info.config.max_age, engine::liveness::TELEMETRY_MAX_AGE);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_selector_launch_follows_nodes_as_they_join_and_change_labels() {
    let nats = NatsServer::start().await;
    let engine = TestEngine::start(&nats).await;
    let first = TestNode::start_labelled(&nats, &engine, "lab").await;
    let other = TestNode::start_labelled(&nats, &engine, "other").await;
    engine.publish_sample(IMAGE_1_0_0).await;
    let docker = docker().await;
    // The nodes read model must know both before the selector is resolved.
    eventually("both nodes in the nodes read model", TIMEOUT, || async {
        let (_, nodes) = engine.get("/v1/nodes").await;
        (nodes["items"].as_array().map_or(0, |n| n.len()) == 2).then_some(())
    })
    .await;

    let body = json!({"application": "sample", "version": "1.0.0", "selector": {"site": "lab"}});
    let (status, launched) = engine.post("/v1/deployments", body).await;
    assert_eq!(status, 201, "{launched}");
    let id = launched["id"].as_str().unwrap().to_owned();
    assert_eq!(launched["deployment"]["nodes"].as_object().unwrap().keys().collect::<Vec<_>>(), [&first.name]);
    let on = |node: String| {
        let (docker, id) = (docker.clone(), id.clone());
        async move {
            let found = tests::containers(&docker, NODE_LABEL, &node).await.unwrap();
            found.iter().filter(|c| c.labels.as_ref().is_some_and(|l| l.get(DEPLOYMENT_LABEL) == Some(&id))).count()
        }
    };
    engine.wait_deployment(&id, "the first node to run it", |v| v["nodes"][&first.name]["status"] == "running").await;
    assert_eq!(on(other.name.clone()).await, 0, "a node that does not match gets nothing");

    // A node that joins with matching labels receives it.
    let joined = TestNode::start_labelled(&nats, &engine, "lab").await;
    engine
        .wait_deployment(&id, "the joining node to run it", |v| v["nodes"][&joined.name]["status"] == "running")
        .await;
    assert_eq!(on(joined.name.clone()).await, 1);

    // A node whose labels stop matching has it removed.
    let first = first.restart_labelled(&nats, &engine, "elsewhere").await;
    engine
        .wait_deployment(&id, "the first node to remove it", |v| v["nodes"][&first.name]["status"] == "removed")
        .await;
    eventually("the first node's container to go", TIMEOUT, || async {
        (on(first.name.clone()).await == 0).then_some(())
    })
    .await;
    let (_, view) = engine.get(&format!("/v1/deployments/{id}")).await;
    assert_eq!(view["status"], "running", "the deployment still runs where it matches: {view}");

    // Each change of membership is an event with its reason.
    let loaded =
        engine.engine.commands.store().load(&events::subject::aggregate("default", "deployment", &id)).await.unwrap();
    let changes: Vec<(String, String, String)> = loaded
        .events
        .iter()
        .filter_map(|e| match e.envelope.event().unwrap() {
            events::deployment::DeploymentEvent::TargetAdded { node, reason } => Some(("added".into(), node, reason)),
            events::deployment::DeploymentEvent::TargetRemoved { node, reason } => {
                Some(("removed".into(), node, reason))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        changes,
        [
            ("added".to_owned(), joined.name.clone(), format!("node `{}` matches site=lab", joined.name)),
            ("removed".to_owned(), first.name.clone(), format!("node `{}` no longer matches site=lab", first.name)),
        ]
    );

    // A newer version published: its notification names the nodes the deployment targets now.
    let version = json!({"version": "1.1.0", "image": IMAGE_1_1_0});
    assert_eq!(engine.post("/v1/applications/sample/versions", version).await.0, 201);
    assert_eq!(engine.post("/v1/applications/sample/versions/1.1.0/publish", json!({})).await.0, 200);
    let shown = eventually("a notification for 1.1.0", TIMEOUT, || async {
        let (_, page) = engine.get("/v1/notifications").await;
        page["items"].as_array().filter(|items| items.len() == 1).map(|items| items[0].clone())
    })
    .await;
    assert_eq!(shown["nodes"], json!([joined.name]), "{shown}");
    for node in [first, other, joined] {
        node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_tenant_removes_its_deployments_from_every_node_and_the_read_models_forget_it() {
    let nats = NatsServer::start().await;
    let engine = TestEngine::start(&nats).await;
    let (one, two) = (TestNode::start(&nats, &engine).await, TestNode::start(&nats, &engine).await);
    engine.publish_sample(IMAGE_1_0_0).await;
    let first = launch(&engine, &one.name).await;
    let body = json!({"application": "sample", "version": "1.0.0", "nodes": [one.name, two.name]});
    let (status, launched) = engine.post("/v1/deployments", body).await;
    assert_eq!(status, 201, "{launched}");
    let second = launched["id"].as_str().unwrap().to_owned();
    for id in [&first, &second] {
        engine.wait_deployment(id, "the deployments to run", |v| v["status"] == "running").await;
    }
    let docker = docker().await;

    let response = engine.http.delete(engine.url("/v1/tenants/default")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 202);
    for id in [&first, &second] {
        eventually("the tenant's containers to go", TIMEOUT, || async {
            tests::containers(&docker, DEPLOYMENT_LABEL, id).await.unwrap().is_empty().then_some(())
        })
        .await;
    }
    eventually("the read models to forget the tenant", TIMEOUT, || async {
        let (_, deployments) = engine.get("/v1/deployments").await;
        let (_, nodes) = engine.get("/v1/nodes").await;
        let forgotten = deployments["items"].as_array()?.is_empty() && nodes["items"].as_array()?.is_empty();
        forgotten.then_some(())
    })
    .await;
    let (status, _) = engine.get(&format!("/v1/deployments/{first}")).await;
    assert_eq!(status, 404);

    let (status, body) =
        engine.post("/v1/deployments", json!({"application": "sample", "version": "1.0.0", "nodes": [one.name]})).await;
    assert_eq!((status, body["field"].as_str()), (410, Some("x-tenant")), "{body}");
    let response = engine.http.delete(engine.url("/v1/tenants/default")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 410);
    for node in [one, two] {
        node.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_launch_with_a_profile_and_overrides_gives_the_container_its_resolved_environment() {
    let Lab { nats: _nats, engine, node } = Lab::start().await;
    assert_eq!(engine.post("/v1/applications", json!({"id": "sample", "name": "Sample"})).await.0, 201);
    let version = json!({
        "version": "1.0.0",
        "image": IMAGE_1_0_0,
        "parameters": {"GREETING": "hello", "MODE": "prod", "PORT": "8080"},
        "profiles": {"test": {"MODE": "test"}},
    });
    let (status, app) = engine.post("/v1/applications/sample/versions", version).await;
    assert_eq!(status, 201, "{app}");
    assert_eq!(app["versions"][0]["profiles"]["test"]["MODE"], "test");
    let bad = json!({"version": "2.0.0", "image": IMAGE_1_0_0, "profiles": {"x": {"COLOR": "red"}}});
    let (status, body) = engine.post("/v1/applications/sample/versions", bad).await;
    assert_eq!((status, body["field"].as_str()), (422, Some("profiles")), "{body}");
    assert_eq!(engine.post("/v1/applications/sample/versions/1.0.0/publish", json!({})).await.0, 200);

    let launch = |profile: &str, overrides: serde_json::Value| {
        let body = json!({"application": "sample", "version": "1.0.0", "nodes": [node.name], "profile": profile, "overrides": overrides});
        engine.post("/v1/deployments", body)
    };
    let (status, body) = launch("nope", json!({})).await;
    assert_eq!((status, body["field"].as_str()), (422, Some("profile")), "{body}");
    let (status, body) = launch("test", json!({"COLOR": "red"})).await;
    assert_eq!((status, body["field"].as_str()), (422, Some("overrides")), "{body}");

    let (status, launched) = launch("test", json!({"GREETING": "hi"})).await;
    assert_eq!(status, 201, "{launched}");
    let id = launched["id"].as_str().unwrap().to_owned();
    assert_eq!(launched["deployment"]["env"], json!({"GREETING": "hi", "MODE": "test", "PORT": "8080"}));
    engine.wait_deployment(&id, "the deployment to run", |v| v["status"] == "running").await;
    let docker = docker().await;
    let found = tests::containers(&docker, DEPLOYMENT_LABEL, &id).await.unwrap();
    let inspected = docker.inspect_container(found[0].id.as_deref().unwrap(), None).await.unwrap();
    let env = inspected.config.unwrap().env.unwrap();
    for pair in ["GREETING=hi", "MODE=test", "PORT=8080"] {
        assert!(env.iter().any(|e| e == pair), "{pair} in {env:?}");
    }
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_never_beats_again_after_an_engine_restart_turns_unreachable() {
    let Lab { nats: _nats, engine, node } = Lab::start().await;
    assert_eq!(engine.node_state(&node.name).await.as_deref(), Some("online"));
    // The nodes read model knows it online: that is what a restarted engine starts from.
    eventually("the nodes read model to show the node online", TIMEOUT, || async {
        let (_, nodes) = engine.get("/v1/nodes").await;
        nodes["items"].as_array()?.iter().any(|n| n["id"] == node.name.as_str() && n["state"] == "online").then_some(())
    })
    .await;
    // The node dies, and the engine restarts before it could notice.
    node.task.abort();
    let engine = engine.restart().await;
    eventually("the silent node to be unreachable", TIMEOUT, || async {
        (engine.node_state(&node.name).await.as_deref() == Some("unreachable")).then_some(())
    })
    .await;
    node.stop().await;
}
