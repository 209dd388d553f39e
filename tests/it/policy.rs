//! The workload policy: what a tenant's versions may use of an edge host, checked when a
//! version is added, and checked again by each node against its own host's policy.

use edge_node::runtime::DEPLOYMENT_LABEL;
use edge_node::NodeConfig;
use serde_json::{json, Value};
use tests::{docker, NatsServer};

use crate::compose::{launch_shop, publish_compose};
use crate::harness::{handler, stored, TestEngine, TestNode, IMAGE_1_0_0};

fn with_bind(image: &str, source: &str) -> String {
    format!("services:\n  web:\n    image: {image}\n    volumes: [\"{source}:/data\"]\n")
}

async fn add_version(engine: &TestEngine, version: &str, body: Value) -> (u16, Value) {
    let mut body = body;
    body["version"] = json!(version);
    engine.post("/v1/applications/shop/versions", body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_outside_the_tenants_policy_is_refused_naming_the_key_until_the_policy_allows_it() {
    let nats = NatsServer::start().await;
    let engine = TestEngine::start(&nats).await;
    let commands = handler(&nats).await;
    let (status, body) = engine.post("/v1/applications", json!({"id": "shop", "name": "Shop"})).await;
    assert_eq!(status, 201, "{body}");
    let (status, policy) = engine.get("/v1/tenants/default/policy").await;
    assert_eq!((status, policy), (200, json!({"binds": [], "registries": ["127.0.0.1:5000"]})));
    let before = stored(&commands).await;

    let refusals = [
        (json!({"compose": with_bind(IMAGE_1_0_0, "/srv/acme/data")}), "compose", "no host path is allowed"),
        (json!({"compose": with_bind(IMAGE_1_0_0, "/")}), "compose", "never mounted"),
        (json!({"compose": with_bind(IMAGE_1_0_0, "/var/run/docker.sock")}), "compose", "never mounted"),
        (json!({"image": "127.0.0.1:5001/x:1"}), "image", "comes from `127.0.0.1:5001`"),
        (
            json!({"compose": "services:\n  web:\n    image: localhost:5002/x/web:1\n"}),
            "compose",
            "comes from `localhost:5002`",
        ),
    ];
    for (body, field, rule) in &refusals {
        let (status, answer) = add_version(&engine, "1.0.0", body.clone()).await;
        assert_eq!((status, answer["field"].as_str()), (422, Some(*field)), "{body}: {answer}");
        assert!(answer["error"].as_str().unwrap().contains(rule), "{body}: {answer}");
    }
    let (status, answer) = add_version(&engine, "1.0.0", refusals[0].0.clone()).await;
    assert!(answer["error"].as_str().unwrap().contains("services.web.volumes[0]"), "{status} {answer}");
    // A policy that would let everything in is refused, naming the entry.
    let (status, answer) = engine.put("/v1/tenants/default/policy", json!({"binds": ["/"]})).await;
    assert_eq!((status, answer["field"].as_str()), (422, Some("binds[0]")), "{answer}");
    assert_eq!(stored(&commands).await, before, "a refusal stored something");

    let (status, policy) = engine.put("/v1/tenants/default/policy", json!({"binds": ["/srv/acme"]})).await;
    assert_eq!((status, &policy), (200, &json!({"binds": ["/srv/acme"], "registries": ["127.0.0.1:5000"]})));
    let (status, answer) = add_version(&engine, "1.0.0", refusals[0].0.clone()).await;
    assert_eq!(status, 201, "{answer}");
    // The forbidden paths stay forbidden, whatever the policy.
    let (status, _) = add_version(&engine, "1.0.1", refusals[2].0.clone()).await;
    assert_eq!(status, 422);
}

/// A node of the default policy (no bind, the local registry) under an engine whose tenant
/// allows more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_refuses_what_its_host_does_not_allow_whatever_the_engine_let_through() {
    let nats = NatsServer::start().await;
    let engine = TestEngine::start(&nats).await;
    let node = TestNode::start(&nats, &engine).await;
    let dir = tempfile::tempdir().unwrap();
    let policy = json!({"binds": [dir.path()], "registries": ["127.0.0.1:5000", "127.0.0.1:5003"]});
    let (status, body) = engine.put("/v1/tenants/default/policy", policy).await;
    assert_eq!(status, 200, "{body}");

    publish_compose(&engine, &with_bind(IMAGE_1_0_0, &dir.path().join("data").display().to_string())).await;
    let id = launch_shop(&engine, &node.name, json!({})).await;
    let view = engine.wait_deployment(&id, "the bind to be refused", |v| v["status"] == "failed").await;
    let error = &view["nodes"][&node.name]["error"];
    assert_eq!(error["code"], "policy_denied", "{view}");
    assert!(error["message"].as_str().unwrap().contains("no host path is allowed"), "{error}");
    assert!(tests::containers(&docker().await, DEPLOYMENT_LABEL, &id).await.unwrap().is_empty());

    // Pinned already: the engine asks no registry, and the node refuses before it would.
    let image = &format!("127.0.0.1:5003/sample/app:1.0.0@sha256:{}", "0".repeat(64));
    let (status, body) = engine.post("/v1/applications", json!({"id": "far", "name": "Far"})).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) =
        engine.post("/v1/applications/far/versions", json!({"version": "1.0.0", "image": image})).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = engine.post("/v1/applications/far/versions/1.0.0/publish", json!({})).await;
    assert_eq!(status, 200, "{body}");
    let launch = json!({"application": "far", "version": "1.0.0", "nodes": [node.name]});
    let (status, body) = engine.post("/v1/deployments", launch).await;
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_str().unwrap();
    let view = engine.wait_deployment(id, "the registry to be refused", |v| v["status"] == "failed").await;
    let error = &view["nodes"][&node.name]["error"];
    assert_eq!(error["code"], "policy_denied", "{view}");
    assert!(error["message"].as_str().unwrap().contains("comes from `127.0.0.1:5003`"), "{error}");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bind_the_host_allows_is_made_and_the_hosts_default_limits_apply_where_the_version_sets_none() {
    let nats = NatsServer::start().await;
    let engine = TestEngine::start(&nats).await;
    let dir = tempfile::tempdir().unwrap();
    let allowed = std::fs::canonicalize(dir.path()).unwrap().display().to_string();
    let policy = events::policy::Policy { binds: vec![allowed.clone()], ..Default::default() };
    let defaults = events::compose::Limits { memory: Some(96 << 20), nano_cpus: Some(250_000_000), pids: None };
    let data = tempfile::tempdir().unwrap();
    let config = NodeConfig { policy, default_limits: defaults, ..TestNode::config(&nats.url(), "edge-bind", &data) };
    let node = TestNode::start_with(config, &engine, data).await;
    let (status, body) = engine.put("/v1/tenants/default/policy", json!({"binds": [allowed]})).await;
    assert_eq!(status, 200, "{body}");

    let source = format!("{allowed}/data");
    publish_compose(&engine, &with_bind(IMAGE_1_0_0, &source)).await;
    let id = launch_shop(&engine, &node.name, json!({})).await;
    engine.wait_deployment(&id, "the deployment to run", |v| v["status"] == "running").await;
    let docker = docker().await;
    let containers = tests::containers(&docker, DEPLOYMENT_LABEL, &id).await.unwrap();
    let inspected = docker.inspect_container(containers[0].id.as_deref().unwrap(), None).await.unwrap();
    let host = inspected.host_config.unwrap();
    assert_eq!(host.binds, Some(vec![format!("{source}:/data")]));
    assert_eq!((host.memory, host.nano_cpus), (Some(96 << 20), Some(250_000_000)));
    node.stop().await;
}
