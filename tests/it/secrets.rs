//! Secrets: in the container's environment, and nowhere else in clear; gone with their tenant.

use edge_node::runtime::DEPLOYMENT_LABEL;
use serde_json::json;
use tests::{docker, eventually};

use crate::harness::{Lab, IMAGE_1_0_0, TIMEOUT};
use crate::replay::replay;

/// Every file under `dir`, whole.
fn files_under(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(files_under(&path));
        } else if let Ok(bytes) = std::fs::read(&path) {
            found.push((path, bytes));
        }
    }
    found
}

fn holds(bytes: &[u8], text: &str) -> bool {
    bytes.windows(text.len()).any(|w| w == text.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_reaches_the_container_and_nowhere_else_in_clear_and_is_gone_with_its_tenant() {
    let Lab { nats, engine, node } = Lab::start().await;
    engine.publish_sample(IMAGE_1_0_0).await;
    let secret = format!("pw-{}", uuid::Uuid::now_v7().simple());
    let body =
        json!({"application": "sample", "version": "1.0.0", "nodes": [node.name], "secrets": {"DB_PASSWORD": secret}});
    let (status, answer) = engine.post("/v1/deployments", body).await;
    assert_eq!(status, 201, "{answer}");
    let id = answer["id"].as_str().unwrap().to_owned();
    let view = engine.wait_deployment(&id, "the deployment to run", |v| v["status"] == "running").await;

    // The container has it.
    let docker = docker().await;
    let containers = tests::containers(&docker, DEPLOYMENT_LABEL, &id).await.unwrap();
    let inspected = docker.inspect_container(containers[0].id.as_deref().unwrap(), None).await.unwrap();
    let env = inspected.config.unwrap().env.unwrap_or_default();
    assert!(env.contains(&format!("DB_PASSWORD={secret}")), "{env:?}");

    // The API shows its name alone.
    assert_eq!(view["secrets"], json!({"DB_PASSWORD": "***"}), "{view}");
    assert!(!view.to_string().contains(&secret));

    // The log holds it sealed: under the tenant's key, and for the node alone.
    let store = engine.engine.commands.store();
    let (mut for_tenant, mut for_node) = (false, false);
    for sequence in 1..=store.last_sequence().await.unwrap() {
        let message = store.stream().get_raw_message(sequence).await.unwrap();
        assert!(!holds(&message.payload, &secret), "the secret in clear at {sequence} ({})", message.subject);
        for_tenant |= holds(&message.payload, "tenant1.");
        for_node |= holds(&message.payload, "node1.");
    }
    assert!(for_tenant && for_node, "the secret went through sealed");

    // Nor do the engine's or the node's databases, once they are on disk.
    for dir in [engine.data_dir(), node.data_dir()] {
        eventually("the database to reach the disk", TIMEOUT, || async {
            files_under(&dir).iter().any(|(_, bytes)| holds(bytes, &id)).then_some(())
        })
        .await;
        for (path, bytes) in files_under(&dir) {
            assert!(!holds(&bytes, &secret), "the secret in clear in {}", path.display());
        }
    }

    // Nor the audit trail.
    let (code, text) = replay(&nats, &["audit", "--deployment", &id, "--format", "json"]).await;
    assert_eq!(code, 0, "{text}");
    assert!(
        !text.contains(&secret) && !text.contains("tenant1.") && text.contains("\"DB_PASSWORD\":\"***\""),
        "{text}"
    );

    // Deleting the tenant destroys its key: what the log holds under it can never be opened.
    let keys = engine::secrets::TenantKeys::open(store.jetstream(), 1).await.unwrap();
    assert!(keys.get("default").await.unwrap().is_some());
    let (status, body) = engine.delete("/v1/tenants/default").await;
    assert_eq!(status, 202, "{body}");
    eventually("the tenant's key to be destroyed", TIMEOUT, || async {
        keys.get("default").await.unwrap().is_none().then_some(())
    })
    .await;
    eventually("the deleted tenant's container to go", TIMEOUT, || async {
        tests::containers(&docker, DEPLOYMENT_LABEL, &id).await.unwrap().is_empty().then_some(())
    })
    .await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_a_version_declares_is_refused_in_clear_and_required_at_launch() {
    let nats = tests::NatsServer::start().await;
    let engine = crate::harness::TestEngine::start(&nats).await;
    let commands = crate::harness::handler(&nats).await;
    crate::harness::seed(&commands, &["edge-1"]).await;
    let (status, body) = engine.post("/v1/applications", json!({"id": "db", "name": "DB"})).await;
    assert_eq!(status, 201, "{body}");
    let version = |parameters: serde_json::Value| json!({"version": "1.0.0", "image": IMAGE_1_0_0, "secrets": ["DB_PASSWORD"], "parameters": parameters});
    let (status, body) = engine.post("/v1/applications/db/versions", version(json!({"DB_PASSWORD": "x"}))).await;
    assert_eq!((status, body["field"].as_str()), (422, Some("secrets")), "{body}");
    let (status, body) = engine.post("/v1/applications/db/versions", version(json!({"MODE": "prod"}))).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = engine.post("/v1/applications/db/versions/1.0.0/publish", json!({})).await;
    assert_eq!(status, 200, "{body}");

    let launch = |extra: serde_json::Value| {
        let mut body = json!({"application": "db", "version": "1.0.0", "nodes": ["edge-1"]});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        body
    };
    let (status, body) = engine.post("/v1/deployments", launch(json!({}))).await;
    assert_eq!((status, body["field"].as_str()), (422, Some("secrets")), "{body}");
    let (status, body) = engine.post("/v1/deployments", launch(json!({"overrides": {"DB_PASSWORD": "x"}}))).await;
    assert_eq!((status, body["field"].as_str()), (422, Some("overrides")), "{body}");
    let (status, body) = engine.post("/v1/deployments", launch(json!({"secrets": {"DB_PASSWORD": "x"}}))).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["deployment"]["secrets"], json!({"DB_PASSWORD": "***"}), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compose_secret_is_a_file_in_memory_under_run_secrets_and_leaves_with_its_container() {
    let Lab { nats: _nats, engine, node } = Lab::start().await;
    let compose = format!(
        "secrets:\n  db_password:\n    environment: DB_PASSWORD\nservices:\n  db:\n    image: {IMAGE_1_0_0}\n    \
         command: [\"sh\", \"-c\", \"cat /run/secrets/db_password; echo; exec sleep 3600\"]\n    secrets: [db_password]\n"
    );
    crate::compose::publish_compose(&engine, &compose).await;
    let secret = format!("pw-{}", uuid::Uuid::now_v7().simple());
    let body =
        json!({"application": "shop", "version": "1.0.0", "nodes": [node.name], "secrets": {"DB_PASSWORD": secret}});
    let (status, answer) = engine.post("/v1/deployments", body).await;
    assert_eq!(status, 201, "{answer}");
    let id = answer["id"].as_str().unwrap().to_owned();
    engine.wait_deployment(&id, "the deployment to run", |v| v["status"] == "running").await;

    let docker = docker().await;
    let container = tests::containers(&docker, DEPLOYMENT_LABEL, &id).await.unwrap().remove(0);
    let inspected = docker.inspect_container(container.id.as_deref().unwrap(), None).await.unwrap();
    // Not in its environment: a file, bound read-only from shared memory.
    let env = inspected.config.unwrap().env.unwrap_or_default();
    assert!(!env.iter().any(|e| e.contains(&secret)), "{env:?}");
    let binds = inspected.host_config.unwrap().binds.unwrap_or_default();
    let bind = binds.iter().find(|b| b.ends_with(":/run/secrets/db_password:ro")).expect("the secret's bind");
    let source = bind.split(':').next().unwrap();
    assert!(source.starts_with(edge_node::docker::SECRETS_DIR), "{bind}");
    assert_eq!(std::fs::read_to_string(source).unwrap(), secret);
    // The container reads it.
    let logs = eventually("the container to print its secret", TIMEOUT, || async {
        use futures::StreamExt;
        let options = bollard::query_parameters::LogsOptions { stdout: true, ..Default::default() };
        let lines: Vec<_> = docker.logs(container.id.as_deref().unwrap(), Some(options)).collect().await;
        let text: String = lines.into_iter().filter_map(Result::ok).map(|l| l.to_string()).collect();
        text.contains(&secret).then_some(text)
    })
    .await;
    assert!(logs.contains(&secret));

    let (status, _) = engine.delete(&format!("/v1/deployments/{id}")).await;
    assert_eq!(status, 202);
    engine.wait_deployment(&id, "the deployment to be removed", |v| v["status"] == "removed").await;
    assert!(!std::path::Path::new(source).exists(), "the secret file went with its container");
    node.stop().await;
}
