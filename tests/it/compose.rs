//! Compose versions on the real Docker engine: several containers per deployment, on a
//! network of their own, each reported, and each restarted only when its own image changed.

use bollard::query_parameters::InspectNetworkOptions;
use edge_node::agent::SERVICE_LABEL;
use edge_node::runtime::DEPLOYMENT_LABEL;
use serde_json::{json, Value};
use tests::{docker, eventually, NatsServer};

use crate::harness::{Lab, TestEngine, IMAGE_1_0_0, IMAGE_1_1_0, TIMEOUT};

/// Registers `shop` with version 1.0.0 made of `compose`, published.
pub(crate) async fn publish_compose(engine: &TestEngine, compose: &str) {
    let (status, body) = engine.post("/v1/applications", json!({"id": "shop", "name": "Shop"})).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) =
        engine.post("/v1/applications/shop/versions", json!({"version": "1.0.0", "compose": compose})).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = engine.post("/v1/applications/shop/versions/1.0.0/publish", json!({})).await;
    assert_eq!(status, 200, "{body}");
}

pub(crate) async fn launch_shop(engine: &TestEngine, node: &str, overrides: Value) -> String {
    let body = json!({"application": "shop", "version": "1.0.0", "nodes": [node], "overrides": overrides});
    let (status, body) = engine.post("/v1/deployments", body).await;
    assert_eq!(status, 201, "{body}");
    body["id"].as_str().unwrap().to_owned()
}

/// The deployment's containers in Docker, by service: (id, image id).
async fn by_service(docker: &bollard::Docker, id: &str) -> std::collections::BTreeMap<String, (String, String)> {
    let found = tests::containers(docker, DEPLOYMENT_LABEL, id).await.unwrap();
    found
        .into_iter()
        .map(|c| {
            let service = c.labels.as_ref().unwrap()[SERVICE_LABEL].clone();
            (service, (c.id.unwrap(), c.image_id.unwrap()))
        })
        .collect()
}

/// The status of each container of the deployment on `node`, as the read model shows it.
fn container_statuses(view: &Value, node: &str) -> Vec<(String, String)> {
    let containers = view["nodes"][node]["containers"].as_object().cloned().unwrap_or_default();
    containers.iter().map(|(name, c)| (name.clone(), c["status"].as_str().unwrap_or_default().to_owned())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compose_application_runs_its_services_on_a_shared_network_and_reports_each_container() {
    let Lab { nats: _nats, engine, node } = Lab::start().await;
    let docker = docker().await;
    let port = tests::free_port();
    // `probe` starts once `web` runs, and fetches web's page by its service name.
    let compose = format!(
        r#"
services:
  probe:
    image: {IMAGE_1_0_0}
    command: ["sh", "-c", "until wget -q -O - http://web:8080/; do sleep 0.2; done; exec httpd -f -p 8080 -h /www"]
    depends_on: [web]
  web:
    image: {IMAGE_1_0_0}
    environment:
      GREETING: "${{GREETING:-hello}}"
      LEVEL: info
    ports: ["127.0.0.1:${{HTTP_PORT:-{port}}}:8080"]
    volumes: ["data:/data"]
    restart: unless-stopped
    mem_limit: 64m
    cpus: 0.5
    pids_limit: 200
volumes:
  data:
"#
    );
    publish_compose(&engine, &compose).await;
    let (_, app) = engine.get("/v1/applications/shop").await;
    let parameters = &app["versions"][0]["parameters"];
    assert_eq!(
        (parameters["GREETING"].as_str(), parameters["HTTP_PORT"].as_str()),
        (Some("hello"), Some(&*port.to_string()))
    );

    let id = launch_shop(&engine, &node.name, json!({"GREETING": "hi"})).await;
    let view = engine.wait_deployment(&id, "both services to run", |v| v["status"] == "running").await;
    let prefix = format!("shop-{id}-{}", node.name);
    assert_eq!(
        container_statuses(&view, &node.name),
        [(format!("{prefix}-probe"), "running".to_owned()), (format!("{prefix}-web"), "running".to_owned())]
    );

    // What Docker runs: the resolved environment, the restart policy, the volume, the port.
    let containers = by_service(&docker, &id).await;
    assert_eq!(containers.keys().collect::<Vec<_>>(), ["probe", "web"]);
    let web = docker.inspect_container(&containers["web"].0, None).await.unwrap();
    let env = web.config.as_ref().unwrap().env.clone().unwrap();
    assert!(env.contains(&"GREETING=hi".to_owned()) && env.contains(&"LEVEL=info".to_owned()), "{env:?}");
    let host = web.host_config.as_ref().unwrap();
    assert_eq!(host.restart_policy.as_ref().unwrap().name.map(|n| n.to_string()).as_deref(), Some("unless-stopped"));
    // Its limits, and probe's, the node's defaults.
    assert_eq!((host.memory, host.nano_cpus, host.pids_limit), (Some(64 << 20), Some(500_000_000), Some(200)));
    let probe = docker.inspect_container(&containers["probe"].0, None).await.unwrap().host_config.unwrap();
    assert_eq!(probe.pids_limit, Some(edge_node::docker::PIDS_LIMIT));
    assert!(probe.memory.unwrap_or(0) == 0 && probe.nano_cpus.unwrap_or(0) == 0, "{probe:?}");
    let mounts = web.mounts.clone().unwrap();
    assert_eq!(mounts[0].name.as_deref(), Some(format!("{prefix}_data").as_str()), "{mounts:?}");
    let page = eventually("web's published port to answer", TIMEOUT, || async {
        let response = reqwest::get(format!("http://127.0.0.1:{port}/")).await.ok()?;
        response.text().await.ok()
    })
    .await;
    assert_eq!(page.trim(), "sample app 1.0.0");
    let network = docker.inspect_network(&prefix, None::<InspectNetworkOptions>).await.unwrap();
    assert_eq!(network.containers.unwrap_or_default().len(), 2, "both services are on the version's network");

    // Logs come per container; probe's show the page it fetched from `web` by name.
    let logs = eventually("probe to have fetched web's page", TIMEOUT, || async {
        let (status, body) = engine.get(&format!("/v1/deployments/{id}/logs")).await;
        let probe =
            body["containers"].as_array()?.iter().find(|c| c["container"] == format!("{prefix}-probe"))?.clone();
        (status == 200 && probe["lines"].as_array()?.contains(&json!("sample app 1.0.0"))).then_some(body)
    })
    .await;
    assert_eq!(logs["containers"].as_array().unwrap().len(), 2, "{logs}");

    // Uninstall takes the containers and the network.
    let response = engine.http.delete(engine.url(&format!("/v1/deployments/{id}"))).send().await.unwrap();
    assert_eq!(response.status(), 202);
    engine.wait_deployment(&id, "the uninstall", |v| v["status"] == "removed").await;
    assert!(tests::containers(&docker, DEPLOYMENT_LABEL, &id).await.unwrap().is_empty());
    assert!(docker.inspect_network(&prefix, None::<InspectNetworkOptions>).await.is_err(), "the network is gone");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_container_fails_the_deployment_while_the_other_runs() {
    let Lab { nats: _nats, engine, node } = Lab::start().await;
    let compose = format!(
        "services:\n  web:\n    image: {IMAGE_1_0_0}\n  broken:\n    image: 127.0.0.1:5000/sample/missing:1.0.0@sha256:{}\n",
        "0".repeat(64)
    );
    publish_compose(&engine, &compose).await;
    let id = launch_shop(&engine, &node.name, json!({})).await;
    let prefix = format!("shop-{id}-{}", node.name);
    let view = engine
        .wait_deployment(&id, "web to run beside the failure", |v| {
            container_statuses(v, &node.name).iter().any(|(_, s)| s == "running")
                && container_statuses(v, &node.name).iter().any(|(_, s)| s == "failed")
        })
        .await;
    assert_eq!(view["status"], "failed", "the deployment's status is its most severe container's");
    let on_node = &view["nodes"][&node.name];
    assert_eq!(on_node["status"], "failed");
    assert_eq!(on_node["error"]["code"], "image_not_found");
    assert_eq!(on_node["containers"][format!("{prefix}-broken")]["error"]["code"], "image_not_found");
    assert_eq!(on_node["containers"][format!("{prefix}-web")]["status"], "running");
    let (_, summary) = engine.get("/v1/summary").await;
    assert_eq!(summary["by_deployment"][&id]["failed"], 1, "{summary}");

    // Logs: the container that could not be made says so in its own entry; web's page is whole.
    let (status, logs) = engine.get(&format!("/v1/deployments/{id}/logs")).await;
    assert_eq!(status, 200, "{logs}");
    let page = |name: String| logs["containers"].as_array().unwrap().iter().find(|c| c["container"] == name).cloned();
    assert!(page(format!("{prefix}-broken")).unwrap()["error"]["code"].is_string(), "{logs}");
    let web = page(format!("{prefix}-web")).unwrap();
    assert!(web["error"].is_null() && web["lines"].is_array(), "{logs}");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_update_restarts_only_the_service_whose_image_changed() {
    let Lab { nats: _nats, engine, node } = Lab::start().await;
    let docker = docker().await;
    let front = tests::unique_image(&docker, IMAGE_1_0_0, "front").await.unwrap();
    let back = tests::unique_image(&docker, IMAGE_1_0_0, "back").await.unwrap();
    publish_compose(&engine, &format!("services:\n  front:\n    image: {front}\n  back:\n    image: {back}\n")).await;
    let id = launch_shop(&engine, &node.name, json!({})).await;
    engine.wait_deployment(&id, "both services to run", |v| v["status"] == "running").await;
    let before = by_service(&docker, &id).await;

    // New content under front's tag only.
    tests::push_as(&docker, IMAGE_1_1_0, &front).await.unwrap();
    let (status, body) = engine.post(&format!("/v1/deployments/{id}/force-update"), json!({})).await;
    assert_eq!(status, 202, "{body}");
    let sequence = body["sequence"].as_u64().unwrap();
    eventually("the node's answer to the forced update", TIMEOUT, || async {
        let (_, history) = engine.get(&format!("/v1/deployments/{id}/history?limit=500")).await;
        let last = history["items"].as_array()?.last()?.clone();
        (last["sequence"].as_u64()? > sequence && last["status"] == "running").then_some(())
    })
    .await;
    let after = by_service(&docker, &id).await;
    assert_ne!(after["front"].0, before["front"].0, "front's image changed: a new container");
    let new_content = docker.inspect_image(IMAGE_1_1_0).await.unwrap().id.unwrap();
    assert_eq!(after["front"].1, new_content);
    assert_eq!(after["back"], before["back"], "back's image did not change: the same container");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compose_file_the_node_cannot_honour_is_refused_naming_the_key() {
    let nats = NatsServer::start().await;
    let engine = TestEngine::start(&nats).await;
    let (status, _) = engine.post("/v1/applications", json!({"id": "shop", "name": "Shop"})).await;
    assert_eq!(status, 201);
    let cases = [
        ("services:\n  web:\n    build: .\n", "services.web.build"),
        ("services:\n  web:\n    image: a:1\n    cap_add: [NET_ADMIN]\n", "services.web.cap_add"),
        ("services:\n  web:\n    image: a:1\n    volumes: [\"./data:/data\"]\n", "services.web.volumes[0]"),
        ("services:\n  web:\n    image: a:1\n    ports: [\"eighty\"]\n", "services.web.ports[0]"),
        // The host itself, and the container engine, which is root on it.
        ("services:\n  web:\n    image: a:1\n    volumes: [\"/:/host\"]\n", "services.web.volumes[0]"),
        ("services:\n  web:\n    image: a:1\n    volumes: [\"/var/run/docker.sock:/s\"]\n", "services.web.volumes[0]"),
        ("services:\n  web:\n    image: a:1\n    volumes: [\"/etc:/e:ro\"]\n", "services.web.volumes[0]"),
    ];
    for (compose, key) in cases {
        let version = json!({"version": "1.0.0", "compose": compose});
        let (status, body) = engine.post("/v1/applications/shop/versions", version).await;
        assert_eq!((status, body["field"].as_str()), (422, Some("compose")), "{compose}: {body}");
        assert!(body["error"].as_str().unwrap().contains(key), "{compose}: {body}");
    }
    let both = json!({"version": "1.0.0", "compose": "services: {}", "image": "a:1"});
    assert_eq!(engine.post("/v1/applications/shop/versions", both).await.0, 422);
    let (_, app) = engine.get("/v1/applications/shop").await;
    assert_eq!(app["versions"], json!([]), "nothing refused was stored");
}
