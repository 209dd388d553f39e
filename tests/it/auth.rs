//! Who may call the API: bearer tokens, roles and tenants, the first admin token, the rate
//! limit and HTTPS, on a real nats-server.

use reqwest::Method;
use serde_json::{json, Value};
use tests::{bearer_client, NatsServer};

use crate::harness::{handler, seed, stored, TestEngine};

/// Makes a token through the API with the tests' admin token; answers the presented token.
async fn token(engine: &TestEngine, subject: &str, tenant: Option<&str>, roles: &[&str]) -> String {
    let (status, body) = engine.post("/v1/tokens", json!({"subject": subject, "tenant": tenant, "roles": roles})).await;
    assert_eq!(status, 201, "{body}");
    body["token"].as_str().expect("the token is shown once").to_owned()
}

async fn call(
    client: &reqwest::Client,
    engine: &TestEngine,
    method: &Method,
    path: &str,
    tenant: &str,
) -> (u16, Value) {
    let mut request = client.request(method.clone(), engine.url(path)).header("x-tenant", tenant);
    if *method == Method::POST || *method == Method::PUT {
        request = request.json(&body_for(path));
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
}

/// A body each command would take, so that only who calls decides the answer.
fn body_for(path: &str) -> Value {
    match path {
        "/v1/applications" => json!({"id": "shop", "name": "Shop"}),
        "/v1/applications/sample/versions" => json!({"version": "2.0.0", "image": "127.0.0.1:5000/sample/app:1.1.0"}),
        "/v1/deployments" => json!({"application": "sample", "version": "1.0.0", "nodes": ["edge-1"]}),
        "/v1/deployments/d1/update" => json!({"version": "1.0.0"}),
        "/v1/deployments/apply" => json!({"deployments": ["d1"]}),
        "/v1/tokens" => json!({"subject": "mallory", "tenant": "acme", "roles": ["admin"]}),
        "/v1/tenants/acme/policy" => json!({"binds": ["/srv/acme"]}),
        _ => json!({}),
    }
}

const ADMIN: &[&str] = &["admin"];
const VENDOR: &[&str] = &["vendor"];
const OPERATOR: &[&str] = &["operator"];
const READER: &[&str] = &["vendor", "operator", "auditor"];
const LOGS: &[&str] = &["operator", "auditor"];

/// Every route but `/healthz`, with the roles that may call it.
fn routes() -> Vec<(Method, &'static str, &'static [&'static str])> {
    vec![
        (Method::POST, "/v1/applications", VENDOR),
        (Method::GET, "/v1/applications/sample", READER),
        (Method::POST, "/v1/applications/sample/versions", VENDOR),
        (Method::POST, "/v1/applications/sample/versions/1.0.0/publish", VENDOR),
        (Method::POST, "/v1/deployments", OPERATOR),
        (Method::GET, "/v1/deployments", READER),
        (Method::GET, "/v1/deployments/d1", READER),
        (Method::DELETE, "/v1/deployments/d1", OPERATOR),
        (Method::POST, "/v1/deployments/d1/stop", OPERATOR),
        (Method::POST, "/v1/deployments/d1/start", OPERATOR),
        (Method::POST, "/v1/deployments/d1/update", OPERATOR),
        (Method::POST, "/v1/deployments/d1/force-update", OPERATOR),
        (Method::POST, "/v1/deployments/apply", OPERATOR),
        (Method::GET, "/v1/deployments/d1/history", READER),
        (Method::GET, "/v1/deployments/d1/logs", LOGS),
        (Method::GET, "/v1/notifications", READER),
        (Method::GET, "/v1/summary", READER),
        (Method::DELETE, "/v1/tenants/acme", ADMIN),
        (Method::GET, "/v1/tenants/acme/policy", READER),
        (Method::PUT, "/v1/tenants/acme/policy", ADMIN),
        (Method::GET, "/v1/nodes", READER),
        (Method::GET, "/v1/nodes/edge-1", READER),
        (Method::GET, "/v1/nodes/edge-1/telemetry", READER),
        (Method::POST, "/v1/nodes/edge-9/enroll", ADMIN),
        (Method::POST, "/v1/nodes/edge-1/revoke", ADMIN),
        (Method::POST, "/v1/credentials/subscriber", LOGS),
        (Method::POST, "/v1/credentials/auditor", ADMIN),
        (Method::POST, "/v1/tokens", ADMIN),
        (Method::POST, "/v1/tokens/tests/revoke", ADMIN),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_without_a_valid_token_of_the_tenant_and_role_is_refused_and_stores_nothing() {
    let nats = NatsServer::start().await;
    let engine = TestEngine::start(&nats).await;
    let commands = handler(&nats).await;
    seed(&commands, &["edge-1"]).await;
    let ca = nats.trust().ca();
    let roles = ["vendor", "operator", "auditor", "admin"];
    let mut of_acme = Vec::new();
    for role in roles {
        of_acme.push((role, bearer_client(&token(&engine, role, Some("acme"), &[role]).await, &ca)));
    }
    let of_other = bearer_client(&token(&engine, "other", Some("other"), &["admin"]).await, &ca);
    let revoked = token(&engine, "gone", Some("acme"), &["admin"]).await;
    let id = revoked.split('.').next().unwrap();
    let (status, body) = engine.post(&format!("/v1/tokens/{id}/revoke"), json!({})).await;
    assert_eq!(status, 200, "{body}");
    let revoked = bearer_client(&revoked, &ca);
    let wrong_secret = bearer_client(&format!("{id}.not-its-secret"), &ca);
    let no_token = engine::api_client(Some(&ca)).unwrap();
    let before = stored(&commands).await;

    for (method, path, allowed) in routes() {
        for (who, client) in [("no token", &no_token), ("a revoked token", &revoked), ("a wrong secret", &wrong_secret)]
        {
            let (status, body) = call(client, &engine, &method, path, "acme").await;
            assert_eq!(status, 401, "{method} {path} with {who}: {body}");
            assert_eq!(body["field"], "authorization", "{method} {path}: {body}");
        }
        let (status, body) = call(&of_other, &engine, &method, path, "acme").await;
        assert_eq!(status, 403, "{method} {path} with another tenant's admin token: {body}");
        for (role, client) in &of_acme {
            if !allowed.contains(role) && *role != "admin" {
                let (status, body) = call(client, &engine, &method, path, "acme").await;
                assert_eq!(status, 403, "{method} {path} with a {role} token: {body}");
                assert!(body["error"].as_str().unwrap().contains("needs the role"), "{body}");
            }
        }
    }
    // A tenant's admin may not make a token of every tenant, nor an auditor's credential.
    let (_, acme_admin) = &of_acme[3];
    let answer = acme_admin
        .post(engine.url("/v1/tokens"))
        .json(&json!({"subject": "x", "tenant": "other", "roles": ["admin"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 403);
    assert_eq!(stored(&commands).await, before, "a refused call stored something");

    // The tokens' own namespace is no tenant, whoever asks.
    let (status, body) = engine.delete("/v1/tenants/_engine").await;
    assert_eq!((status, body["field"].as_str()), (422, Some("id")), "{body}");
    // The scheme is read as the standard says, whatever its case.
    let lower =
        no_token.get(engine.url("/v1/deployments")).header("authorization", format!("bearer {}", tests::ADMIN_TOKEN));
    assert_eq!(lower.send().await.unwrap().status().as_u16(), 200);
    assert_eq!(stored(&commands).await, before, "a refused call stored something");

    // The healthz probe alone needs nothing.
    let response = no_token.get(engine.url("/healthz")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_actor_of_every_event_is_the_tokens_subject_whatever_the_headers_say() {
    let nats = NatsServer::start().await;
    let engine = TestEngine::start(&nats).await;
    let ca = nats.trust().ca();
    let vendor = bearer_client(&token(&engine, "vera@vendor", Some("acme"), &["vendor"]).await, &ca);
    let response = vendor
        .post(engine.url("/v1/applications"))
        .header("x-actor", "mallory")
        .json(&json!({"id": "shop", "name": "Shop"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);
    // Its own tenant, though the caller named none.
    let subject = events::subject::aggregate("acme", "application", "shop");
    let loaded = engine.engine.commands.store().load(&subject).await.unwrap();
    let actors: Vec<&str> = loaded.events.iter().map(|e| e.envelope.actor.as_str()).collect();
    assert_eq!(actors, ["vera@vendor"]);
    // Issuing a token is an event too, by the admin who made it.
    let tokens = engine.engine.commands.store().subjects("ev._engine.token.*").await.unwrap();
    let mut issuers = Vec::new();
    for subject in tokens {
        let loaded = engine.engine.commands.store().load(&subject).await.unwrap();
        issuers.extend(loaded.events.iter().map(|e| (e.envelope.event_type.clone(), e.envelope.actor.clone())));
    }
    assert!(issuers.contains(&("token.issued".to_owned(), tests::ADMIN_SUBJECT.to_owned())), "{issuers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_start_writes_an_admin_token_readable_by_its_owner_alone_and_the_log_keeps_its_hash_only() {
    use std::os::unix::fs::PermissionsExt;
    let nats = NatsServer::start().await;
    let engine = TestEngine::start(&nats).await;
    let file = engine.data_dir().join(engine::auth::ADMIN_TOKEN_FILE);
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{}", file.display());
    let admin = std::fs::read_to_string(&file).unwrap().trim().to_owned();
    let client = bearer_client(&admin, &nats.trust().ca());
    let response = client.get(engine.url("/v1/deployments")).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);

    // Made by the admin token: the secret is shown to its maker, never stored.
    let response = client
        .post(engine.url("/v1/tokens"))
        .json(&json!({"subject": "otto", "tenant": "acme", "roles": ["operator"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);
    let made: Value = response.json().await.unwrap();
    let store = engine.engine.commands.store();
    let last = store.last_sequence().await.unwrap();
    for sequence in 1..=last {
        let message = store.stream().get_raw_message(sequence).await.unwrap();
        for presented in [&admin, made["token"].as_str().unwrap()] {
            let secret = presented.split_once('.').unwrap().1;
            assert!(!message.payload.windows(secret.len()).any(|w| w == secret.as_bytes()), "a secret at {sequence}");
        }
    }
    let issued = store.load("ev._engine.token.admin").await.unwrap();
    let events::token::TokenEvent::Issued { secret_sha256, subject, tenant, .. } =
        issued.events[0].envelope.event().unwrap()
    else {
        panic!("the first event is not an issue")
    };
    assert_eq!(secret_sha256, events::token::secret_hash(admin.split_once('.').unwrap().1));
    assert_eq!((subject.as_str(), tenant), ("admin", None));

    // Started again on the same log, the engine issues no second admin token.
    let again = TestEngine::start(&nats).await;
    assert!(!again.data_dir().join(engine::auth::ADMIN_TOKEN_FILE).exists());
    assert_eq!(store.load("ev._engine.token.admin").await.unwrap().events.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_past_a_tokens_rate_is_answered_429_with_retry_after_and_other_tokens_go_on() {
    let nats = NatsServer::start().await;
    let limit = engine::auth::RateLimit { per_second: 1.try_into().unwrap(), burst: 5.try_into().unwrap() };
    let engine = TestEngine::start_with(&nats.url(), nats.trust(), 1, |c| c.rate_limit = limit).await;
    let ca = nats.trust().ca();
    let busy = bearer_client(&token(&engine, "busy", Some("acme"), &["auditor"]).await, &ca);
    let mut answers = Vec::new();
    for _ in 0..12 {
        let response = busy.get(engine.url("/v1/deployments")).send().await.unwrap();
        let retry_after = response.headers().get("retry-after").map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
        answers.push((response.status().as_u16(), retry_after));
    }
    let limited: Vec<_> = answers.iter().filter(|(status, _)| *status == 429).collect();
    assert!(!limited.is_empty(), "{answers:?}");
    assert!(limited.iter().all(|(_, retry)| retry.is_some_and(|s| s >= 1)), "{answers:?}");
    assert!(answers.iter().all(|(status, _)| matches!(status, 200 | 429)), "{answers:?}");
    // Another token has its own budget.
    let (status, body) = engine.get("/v1/deployments").await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_speaks_https_only_with_the_certificate_it_was_given() {
    let nats = NatsServer::start().await;
    let engine = TestEngine::start(&nats).await;
    let plain = engine::api_client(None).unwrap();
    let http = format!("http://{}/healthz", engine.engine.api_addr);
    let answered = plain.get(&http).send().await.is_ok_and(|r| r.status().is_success());
    assert!(!answered, "the API answered plain HTTP");
    // A client that does not trust the engine's authority refuses the connection.
    let elsewhere = tempfile::tempdir().unwrap();
    let other = engine::trust::Trust::init(elsewhere.path(), &["127.0.0.1"]).unwrap();
    let stranger = engine::api_client(Some(&other.ca())).unwrap();
    assert!(stranger.get(engine.url("/healthz")).send().await.is_err());
    let (status, _) = engine.get("/healthz").await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_installers_token_enrolls_a_new_node_with_the_key_it_made_and_nothing_else() {
    let nats = NatsServer::start().await;
    let engine = TestEngine::start(&nats).await;
    let commands = handler(&nats).await;
    let ca = nats.trust().ca();
    let installer = bearer_client(&token(&engine, "installer@plant-7", Some("default"), &["installer"]).await, &ca);
    let ask = |method: Method, path: &str, body: Value| {
        let request = installer.request(method, engine.url(path)).header("x-tenant", "default").json(&body);
        async move {
            let response = request.send().await.unwrap();
            (response.status().as_u16(), response.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let key = nkeys::KeyPair::new_user().public_key();

    // A node never enrolled, with the key the board made: enrolled.
    let (status, body) = ask(Method::POST, "/v1/nodes/board-1/enroll", json!({"public_key": key})).await;
    assert_eq!(status, 201, "{body}");
    assert!(body["creds"].as_str().is_some_and(|c| c.contains("BEGIN NATS USER JWT")), "{body}");

    // Refused, storing nothing: a node enrolled before (by it or by an admin), a key of the
    // engine's making, and every other call.
    engine.post("/v1/nodes/board-2/enroll", json!({})).await;
    let before = stored(&commands).await;
    let other = nkeys::KeyPair::new_user().public_key();
    for node in ["board-1", "board-2"] {
        let (status, body) = ask(Method::POST, &format!("/v1/nodes/{node}/enroll"), json!({"public_key": other})).await;
        assert_eq!(status, 403, "{node} taken over: {body}");
        assert!(body["error"].as_str().unwrap().contains("only an admin enrolls it again"), "{body}");
    }
    let (status, body) = ask(Method::POST, "/v1/nodes/board-3/enroll", json!({})).await;
    assert_eq!((status, body["field"].as_str()), (403, Some("public_key")), "{body}");
    for (method, path, body) in [
        (Method::GET, "/v1/nodes", Value::Null),
        (Method::POST, "/v1/nodes/board-1/revoke", json!({})),
        (Method::POST, "/v1/deployments", body_for("/v1/deployments")),
        (Method::POST, "/v1/tokens", json!({"subject": "i", "tenant": "default", "roles": ["admin"]})),
    ] {
        assert_eq!(ask(method.clone(), path, body).await.0, 403, "{method} {path}");
    }
    assert_eq!(stored(&commands).await, before, "nothing refused was stored");
}
