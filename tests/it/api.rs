//! The HTTP API on a real nats-server: bad input is refused with a 4xx naming the field, and
//! nothing is stored.

use std::time::Duration;

use serde_json::{json, Value};
use tests::NatsServer;

use crate::harness::{handler, seed, stored, TestEngine};

async fn refused(engine: &TestEngine, path: &str, body: Value) -> (u16, String, String) {
    let (status, answer) = engine.post(path, body).await;
    let field = answer["field"].as_str().unwrap_or_default().to_owned();
    let error = answer["error"].as_str().unwrap_or_default().to_owned();
    (status, field, error)
}

#[tokio::test]
async fn bad_input_is_refused_naming_the_field_and_nothing_is_stored() {
    let nats = NatsServer::start().await;
    let engine = TestEngine::start(&nats).await;
    let commands = handler(&nats).await;
    seed(&commands, &["edge-1"]).await;
    let before = stored(&commands).await;

    let cases = [
        // A missing field.
        (
            "/v1/deployments",
            json!({"application": "sample", "version": "1.0.0"}),
            422,
            "nodes",
            "name the nodes or a selector",
        ),
        (
            "/v1/deployments",
            json!({"application": "sample", "version": "1.0.0", "nodes": ["edge-1"], "selector": {"a": "b"}}),
            422,
            "selector",
            "not both",
        ),
        (
            "/v1/deployments",
            json!({"application": "sample", "version": "1.0.0", "selector": {}}),
            422,
            "selector",
            "at least one label",
        ),
        (
            "/v1/deployments",
            json!({"application": "sample", "version": "1.0.0", "selector": {"a.b": "c"}}),
            422,
            "selector",
            "has `.`",
        ),
        ("/v1/applications", json!({"id": "sample"}), 400, "name", "missing field `name`"),
        // A wrong type.
        (
            "/v1/deployments",
            json!({"application": "sample", "version": "1.0.0", "nodes": "edge-1"}),
            400,
            "nodes",
            "invalid type",
        ),
        (
            "/v1/deployments",
            json!({"application": "sample", "version": "1.0.0", "nodes": [7]}),
            400,
            "nodes[0]",
            "invalid type",
        ),
        // An unknown node.
        (
            "/v1/deployments",
            json!({"application": "sample", "version": "1.0.0", "nodes": ["ghost"]}),
            422,
            "nodes",
            "node `ghost` is not registered",
        ),
        (
            "/v1/deployments",
            json!({"application": "sample", "version": "1.0.0", "nodes": []}),
            422,
            "nodes",
            "at least one node",
        ),
        (
            "/v1/deployments",
            json!({"application": "sample", "version": "1.0.0", "nodes": ["a.b"]}),
            422,
            "nodes",
            "has `.`",
        ),
        // An unknown application or version.
        (
            "/v1/deployments",
            json!({"application": "other", "version": "1.0.0", "nodes": ["edge-1"]}),
            422,
            "application",
            "application `other` does not exist",
        ),
        (
            "/v1/deployments",
            json!({"application": "sample", "version": "9.9.9", "nodes": ["edge-1"]}),
            422,
            "version",
            "has no version 9.9.9",
        ),
        // A mode that would never start.
        (
            "/v1/deployments",
            json!({"application": "sample", "version": "1.0.0", "nodes": ["edge-1"], "instantly_apply": false}),
            422,
            "instantly_apply",
            "would never start",
        ),
        (
            "/v1/deployments",
            json!({"application": "sample", "version": "1.0.0", "nodes": ["edge-1"], "staged": "yes"}),
            400,
            "staged",
            "invalid type",
        ),
        // A field that does not exist.
        (
            "/v1/deployments",
            json!({"application": "sample", "version": "1.0.0", "nodes": ["edge-1"], "mode": "x"}),
            400,
            "mode",
            "unknown field `mode`",
        ),
        // The catalog.
        ("/v1/applications", json!({"id": "bad id", "name": "x"}), 422, "id", "has ` `"),
        ("/v1/applications", json!({"id": "sample", "name": "Again"}), 409, "id", "already registered"),
        (
            "/v1/applications/sample/versions",
            json!({"version": "one", "image": "x:1"}),
            422,
            "version",
            "is not semver",
        ),
        (
            "/v1/applications/sample/versions",
            json!({"version": "1.0.0", "image": "x:1"}),
            409,
            "version",
            "already exists",
        ),
        (
            "/v1/applications/sample/versions",
            json!({"version": "2.0.0", "image": "a b"}),
            422,
            "image",
            "contains whitespace",
        ),
        ("/v1/applications/sample/versions", json!({"version": 2}), 400, "version", "invalid type"),
        ("/v1/applications/sample/versions/1.0.0/publish", json!({}), 409, "version", "already published"),
        ("/v1/applications/nope/versions/1.0.0/publish", json!({}), 404, "id", "not registered"),
    ];
    for (path, body, status, field, message) in cases {
        let (got_status, got_field, got_error) = refused(&engine, path, body.clone()).await;
        assert_eq!((got_status, got_field.as_str()), (status, field), "{path} {body}: {got_error}");
        assert!(got_error.contains(message), "{path} {body}: `{got_error}` should say `{message}`");
    }

    let malformed = engine.http.post(engine.url("/v1/deployments")).header("content-type", "application/json");
    let response = malformed.body("{not json").send().await.unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let response = engine
        .http
        .post(engine.url("/v1/deployments"))
        .header("idempotency-key", "not-a-uuid")
        .json(&json!({"application": "sample", "version": "1.0.0", "nodes": ["edge-1"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["field"], "idempotency-key");
    let v4 = "3b241101-e2bb-4255-8caf-4136c566a962";
    let response = engine
        .http
        .post(engine.url("/v1/deployments"))
        .header("idempotency-key", v4)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400, "a key that is not time-ordered is refused");

    assert_eq!(stored(&commands).await, before, "a refused request stores nothing");
}

#[tokio::test]
async fn a_launch_retried_with_its_idempotency_key_is_stored_once() {
    let nats = NatsServer::start().await;
    let engine = TestEngine::start(&nats).await;
    let commands = handler(&nats).await;
    seed(&commands, &["edge-1"]).await;
    let key = uuid::Uuid::now_v7().to_string();
    let launch = || {
        engine
            .http
            .post(engine.url("/v1/deployments"))
            .header("idempotency-key", &key)
            .json(&json!({"application": "sample", "version": "v1.0.0", "nodes": ["edge-1"]}))
            .send()
    };
    let first = launch().await.unwrap();
    assert_eq!(first.status().as_u16(), 201);
    let first: Value = first.json().await.unwrap();
    // The router writes the node's work after the answer: counted once it is there.
    let work = events::subject::node_desired("default", "edge-1");
    tests::eventually("the launch's work written", Duration::from_secs(30), || async {
        commands.store().load(&work).await.ok().filter(|loaded| !loaded.events.is_empty())
    })
    .await;
    let before = stored(&commands).await;
    let second = launch().await.unwrap();
    assert_eq!(second.status().as_u16(), 200);
    let second: Value = second.json().await.unwrap();
    assert_eq!(first["id"], second["id"]);
    assert_eq!(first["sequence"], second["sequence"]);
    assert_eq!(first["deployment"]["status"], "pending_deploy");
    assert_eq!(stored(&commands).await, before, "the retry stores nothing new");
}

#[tokio::test]
async fn deployments_are_listed_a_page_at_a_time() {
    let nats = NatsServer::start().await;
    let engine = TestEngine::start(&nats).await;
    let commands = handler(&nats).await;
    seed(&commands, &["edge-1"]).await;
    let mut launched = Vec::new();
    for _ in 0..5 {
        let (status, body) = engine
            .post("/v1/deployments", json!({"application": "sample", "version": "1.0.0", "nodes": ["edge-1"]}))
            .await;
        assert_eq!(status, 201, "{body}");
        launched.push(body["id"].as_str().unwrap().to_owned());
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/deployments?limit=2&cursor={c}"),
            None => "/v1/deployments?limit=2".to_owned(),
        };
        let (status, page) = engine.get(&path).await;
        assert_eq!(status, 200, "{page}");
        let items = page["items"].as_array().unwrap();
        assert!(items.len() <= 2);
        seen.extend(items.iter().map(|d| d["id"].as_str().unwrap().to_owned()));
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, launched, "every deployment once, in launch order");
    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=abc", "limit"),
        ("page=2", "page"),
        ("staged=maybe", "staged"),
        ("status=lost", "status"),
    ] {
        let (status, body) = engine.get(&format!("/v1/deployments?{query}")).await;
        assert_eq!((status, body["field"].as_str()), (400, Some(field)), "{query}: {body}");
    }
}

#[tokio::test]
async fn the_summary_counts_per_deployment_node_and_version() {
    use events::deployment::{Deployment, DeploymentCommand, Launch};
    use events::{Failure, Status};
    let nats = NatsServer::start().await;
    let engine = TestEngine::start(&nats).await;
    let commands = handler(&nats).await;
    seed(&commands, &["edge-1", "edge-2"]).await;
    let application: events::application::Application = commands.state("default", "sample").await.unwrap();
    let reports = [[Status::Running, Status::Failed], [Status::Downloading, Status::Running]];
    let mut ids = Vec::new();
    let mut last = 0;
    for [first, second] in reports {
        let id = uuid::Uuid::now_v7().to_string();
        let launch = Launch::new("sample", application.clone(), "1.0.0", &["edge-1", "edge-2"]);
        commands.execute::<Deployment>(&id, &DeploymentCommand::Launch(launch), &crate::harness::meta()).await.unwrap();
        for (node, status) in [("edge-1", first), ("edge-2", second)] {
            let error = (status == Status::Failed).then(|| Failure { code: "x".into(), message: "y".into() });
            let committed = crate::harness::report(&commands, &id, node, status, error).await;
            last = committed.events.last().map_or(last, |e| e.sequence);
        }
        ids.push(id);
    }
    // The last deployment event: the router's work events after it are not the projector's.
    assert!(engine::projector::wait_for(engine.engine.deployments.tree(), last, std::time::Duration::from_secs(30))
        .await
        .unwrap());

    let (status, summary) = engine.get("/v1/summary").await;
    assert_eq!(status, 200, "{summary}");
    let counts = |running: u64, failed: u64, pending: u64| json!({"running": running, "failed": failed, "pending": pending, "stopped": 0, "total": running + failed + pending});
    assert_eq!(summary["by_deployment"][&ids[0]], counts(1, 1, 0));
    assert_eq!(summary["by_deployment"][&ids[1]], counts(1, 0, 1));
    assert_eq!(summary["by_node"]["edge-1"], counts(1, 0, 1));
    assert_eq!(summary["by_node"]["edge-2"], counts(1, 1, 0));
    assert_eq!(summary["by_application_version"]["sample@1.0.0"], counts(2, 1, 1));
}

#[tokio::test]
async fn a_command_that_is_not_json_or_too_large_is_refused_and_nothing_is_stored() {
    let nats = NatsServer::start().await;
    let engine = TestEngine::start(&nats).await;
    let commands = handler(&nats).await;
    seed(&commands, &["edge-1"]).await;
    let before = stored(&commands).await;

    // What a web page may send anywhere without asking first: plain text, a form.
    let body = r#"{"id": "web", "name": "From a web page"}"#;
    for (path, content_type) in [
        ("/v1/applications", "text/plain"),
        ("/v1/applications", "application/x-www-form-urlencoded"),
        ("/v1/nodes/edge-1/revoke", "text/plain"),
    ] {
        let request = engine.http.post(engine.url(path)).header("content-type", content_type).body(body);
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let answer: Value = response.json().await.unwrap();
        assert_eq!(status, 415, "{path} as {content_type}: {answer}");
        assert!(answer["error"].as_str().unwrap().contains("application/json"), "{answer}");
    }
    // A body past the limit.
    let huge = json!({"id": "huge", "name": "x".repeat(engine::api::MAX_BODY + 1)});
    let (status, _, _) = refused(&engine, "/v1/applications", huge).await;
    assert_eq!(status, 413);

    assert_eq!(stored(&commands).await, before, "nothing stored");
    assert_eq!(engine.get("/v1/applications/web").await.0, 404);
}

/// Every page of a listing at `limit` a page.
async fn every_page(engine: &TestEngine, path: &str, limit: usize) -> Vec<Value> {
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    let join = if path.contains('?') { '&' } else { '?' };
    loop {
        let query = cursor.as_ref().map(|c| format!("&cursor={c}")).unwrap_or_default();
        let (status, page) = engine.get(&format!("{path}{join}limit={limit}{query}")).await;
        assert_eq!(status, 200, "{path}: {page}");
        let got = page["items"].as_array().unwrap();
        assert!(got.len() <= limit, "{path}: {page}");
        items.extend(got.iter().cloned());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return items,
        }
    }
}

#[tokio::test]
async fn nodes_applications_and_history_are_listed_a_page_at_a_time_and_a_selector_previews_its_nodes() {
    use events::node::{Labels, Node, NodeCommand};
    let nats = NatsServer::start().await;
    let engine = TestEngine::start(&nats).await;
    let commands = handler(&nats).await;
    seed(&commands, &["edge-1", "edge-2"]).await;
    let lab = Labels::from([("site".to_owned(), "lab".to_owned())]);
    for node in ["lab-1", "lab-2", "lab-3"] {
        let register = NodeCommand::Register { labels: lab.clone() };
        commands.execute::<Node>(node, &register, &crate::harness::meta()).await.unwrap();
    }
    for id in ["beta", "alpha"] {
        let (status, body) = engine.post("/v1/applications", json!({"id": id, "name": id.to_uppercase()})).await;
        assert_eq!(status, 201, "{body}");
    }
    let (status, body) = engine
        .post(
            "/v1/applications/alpha/versions",
            json!({"version": "2.0.0", "image": "127.0.0.1:5000/sample/app:1.0.0"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");

    let ids = |items: &[Value]| items.iter().map(|i| i["id"].as_str().unwrap().to_owned()).collect::<Vec<_>>();
    tests::eventually("the catalog to list three applications", crate::harness::TIMEOUT, || async {
        (every_page(&engine, "/v1/applications", 2).await.len() == 3).then_some(())
    })
    .await;
    let apps = every_page(&engine, "/v1/applications", 2).await;
    assert_eq!(ids(&apps), ["alpha", "beta", "sample"], "by id, each once");
    assert_eq!(
        apps[0]["versions"],
        json!([{"version": "2.0.0", "image": "127.0.0.1:5000/sample/app:1.0.0"}]),
        "a draft"
    );
    assert!(apps[2]["versions"][0]["published_at"].is_string(), "sample's 1.0.0 is published: {}", apps[2]);

    let nodes = every_page(&engine, "/v1/nodes", 2).await;
    assert_eq!(ids(&nodes), ["edge-1", "edge-2", "lab-1", "lab-2", "lab-3"]);
    let matched = every_page(&engine, "/v1/nodes?selector=site%3Dlab", 2).await;
    assert_eq!(ids(&matched), ["lab-1", "lab-2", "lab-3"], "what a launch with the selector reaches now");
    for (query, field) in [("selector=site", "selector"), ("state=sleeping", "state"), ("limit=501", "limit")] {
        let (status, body) = engine.get(&format!("/v1/nodes?{query}")).await;
        assert_eq!((status, body["field"].as_str()), (400, Some(field)), "{query}: {body}");
    }

    let (status, launched) = engine
        .post("/v1/deployments", json!({"application": "sample", "version": "1.0.0", "selector": {"site": "lab"}}))
        .await;
    assert_eq!(status, 201, "{launched}");
    let id = launched["id"].as_str().unwrap();
    for verb in ["stop", "start", "stop"] {
        let (status, body) = engine.post(&format!("/v1/deployments/{id}/{verb}"), json!({})).await;
        assert_eq!(status, 202, "{verb}: {body}");
    }
    let history = every_page(&engine, &format!("/v1/deployments/{id}/history"), 1).await;
    let sequences: Vec<u64> = history.iter().map(|e| e["sequence"].as_u64().unwrap()).collect();
    assert!(sequences.len() >= 4 && sequences.windows(2).all(|w| w[0] < w[1]), "in order, each once: {sequences:?}");
    let (whole_status, whole) = engine.get(&format!("/v1/deployments/{id}/history?limit=500")).await;
    assert_eq!(whole_status, 200);
    assert_eq!(whole["items"].as_array().unwrap(), &history, "page by page, the same as at once");
}

#[tokio::test]
async fn an_unknown_route_a_wrong_method_and_a_broken_body_answer_the_api_error_shape() {
    let nats = NatsServer::start().await;
    let engine = TestEngine::start(&nats).await;

    let (status, body) = engine.get("/v1/nowhere").await;
    assert_eq!(status, 404, "{body}");
    assert!(body["error"].as_str().unwrap().contains("/v1/nowhere"), "{body}");
    let (status, body) = engine.delete("/v1/applications").await;
    assert_eq!(status, 405, "{body}");
    assert!(body["error"].as_str().unwrap().contains("DELETE"), "{body}");

    let broken = "{\n  \"id\": \"web\",\n  \"name\": oops\n}";
    let request = engine.http.post(engine.url("/v1/applications")).header("content-type", "application/json");
    let response = request.body(broken).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!((body["line"].as_u64(), body["column"].as_u64()), (Some(3), Some(11)), "{body}");
    assert!(body.get("field").is_none(), "no field to name: {body}");
    assert!(body["error"].as_str().unwrap().contains("line 3 column 11"), "{body}");

    let (status, me) = engine.get("/v1/me").await;
    assert_eq!(status, 200, "{me}");
    assert_eq!((me["tenant"].as_str(), me["every_tenant"].as_bool()), (Some("default"), Some(true)), "{me}");
    assert_eq!(me["roles"], json!(["admin"]), "{me}");
}

/// Deserializes `example` into the type whose schema is named `schema`.
fn into_its_type(schema: &str, example: Value) -> Result<(), String> {
    use engine::api::*;
    fn read<T: serde::de::DeserializeOwned>(example: Value) -> Result<(), String> {
        serde_json::from_value::<T>(example).map(drop).map_err(|e| e.to_string())
    }
    match schema {
        "RegisterApplication" => read::<RegisterApplication>(example),
        "AddVersion" => read::<AddVersion>(example),
        "LaunchRequest" => read::<LaunchRequest>(example),
        "UpdateRequest" => read::<UpdateRequest>(example),
        "ApplyRequest" => read::<ApplyRequest>(example),
        "EnrollBody" => read::<EnrollBody>(example),
        "AdmitBody" => read::<AdmitBody>(example),
        "AddMargoVersion" => read::<AddMargoVersion>(example),
        "ReaderBody" => read::<ReaderBody>(example),
        "CreateToken" => read::<engine::auth::CreateToken>(example),
        "WithdrawRequest" => read::<WithdrawRequest>(example),
        "IssuedToken" => read::<engine::auth::IssuedToken>(example),
        "Me" => read::<engine::auth::Me>(example),
        other => Err(format!("schema `{other}` has an example no test reads: add it here")),
    }
}

#[tokio::test]
async fn every_route_is_in_the_openapi_document_and_every_example_reads_as_its_type() {
    let nats = NatsServer::start().await;
    let engine = TestEngine::start(&nats).await;
    let (status, doc) = engine.get("/openapi.json").await;
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"), "{}", doc["openapi"]);
    assert_eq!(doc, serde_json::to_value(engine::api::openapi()).unwrap(), "served as made");

    // Each documented route is one the engine serves: never the answer to an unknown route or
    // a wrong method. The requests name ids no command takes (`no.such`) and bodies no command
    // reads (`null`): they change nothing.
    let paths = doc["paths"].as_object().unwrap();
    let mut routes = Vec::new();
    for (path, item) in paths {
        for method in item.as_object().unwrap().keys() {
            routes.push(format!("{} {path}", method.to_uppercase()));
            let url = engine.url(&path.replace("{id}", "no.such").replace("{version}", "no.such"));
            let request = engine.http.request(method.to_uppercase().parse().unwrap(), url);
            let response = request.header("content-type", "application/json").body("null").send().await.unwrap();
            let status = response.status().as_u16();
            let body = response.text().await.unwrap();
            assert!(
                status != 405 && !body.contains("no such route"),
                "{method} {path}: documented, but the engine answers {status} {body}"
            );
        }
    }
    // And every route the engine serves is documented.
    for route in [
        "GET /healthz",
        "GET /metrics",
        "GET /v1/me",
        "POST /v1/applications",
        "GET /v1/applications",
        "GET /v1/applications/{id}",
        "DELETE /v1/applications/{id}",
        "POST /v1/applications/{id}/versions",
        "DELETE /v1/applications/{id}/versions/{version}",
        "POST /v1/applications/{id}/versions/{version}/withdraw",
        "POST /v1/applications/{id}/versions/{version}/publish",
        "POST /v1/deployments",
        "GET /v1/deployments",
        "GET /v1/deployments/{id}",
        "DELETE /v1/deployments/{id}",
        "POST /v1/deployments/{id}/stop",
        "POST /v1/deployments/{id}/start",
        "POST /v1/deployments/{id}/update",
        "POST /v1/deployments/{id}/force-update",
        "POST /v1/deployments/apply",
        "GET /v1/notifications",
        "GET /v1/summary",
        "GET /v1/deployments/{id}/history",
        "GET /v1/deployments/{id}/logs",
        "DELETE /v1/tenants/{id}",
        "GET /v1/tenants/{id}/policy",
        "PUT /v1/tenants/{id}/policy",
        "GET /v1/nodes",
        "GET /v1/nodes/{id}",
        "GET /v1/nodes/{id}/telemetry",
        "POST /v1/nodes/{id}/enroll",
        "POST /v1/nodes/{id}/revoke",
        "POST /v1/nodes/{id}/margo",
        "DELETE /v1/nodes/{id}/margo",
        "POST /v1/applications/{id}/versions/margo",
        "POST /v1/credentials/subscriber",
        "POST /v1/credentials/auditor",
        "POST /v1/tokens",
        "POST /v1/tokens/{id}/revoke",
    ] {
        assert!(routes.iter().any(|r| r == route), "{route} is not in the document: {routes:?}");
    }

    // Every example in the document reads as the type it documents.
    let mut read = 0;
    for (name, schema) in doc["components"]["schemas"].as_object().unwrap() {
        if let Some(example) = schema.get("example") {
            into_its_type(name, example.clone()).unwrap_or_else(|e| panic!("the example of {name}: {e}"));
            read += 1;
        }
    }
    assert!(read >= 8, "the request bodies have examples: {read}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_catalog_shrinks_a_draft_deleted_a_version_withdrawn_and_an_application_deleted_once_nothing_runs_it() {
    let nats = NatsServer::start().await;
    let engine = TestEngine::start(&nats).await;
    let commands = handler(&nats).await;
    seed(&commands, &["edge-1"]).await;
    let versions = |app: &Value| -> Vec<String> {
        app["versions"].as_array().unwrap().iter().map(|v| v["version"].as_str().unwrap().to_owned()).collect()
    };

    // A draft is deleted; a published version is not.
    let draft = json!({"version": "1.1.0", "image": "127.0.0.1:5000/sample/app:1.1.0"});
    assert_eq!(engine.post("/v1/applications/sample/versions", draft).await.0, 201);
    let (status, app) = engine.delete("/v1/applications/sample/versions/1.1.0").await;
    assert_eq!(status, 200, "{app}");
    assert_eq!(versions(&app), ["1.0.0"]);
    let (status, refused) = engine.delete("/v1/applications/sample/versions/1.0.0").await;
    assert_eq!((status, refused["field"].as_str()), (409, Some("version")), "{refused}");
    assert!(refused["error"].as_str().unwrap().contains("withdraw it instead"), "{refused}");

    // Withdrawn: no launch takes it, and what runs it goes on.
    let launch = json!({"application": "sample", "version": "1.0.0", "nodes": ["edge-1"]});
    let (status, launched) = engine.post("/v1/deployments", launch.clone()).await;
    assert_eq!(status, 201, "{launched}");
    let id = launched["id"].as_str().unwrap().to_owned();
    let (status, app) =
        engine.post("/v1/applications/sample/versions/1.0.0/withdraw", json!({"reason": "broken"})).await;
    assert_eq!(status, 200, "{app}");
    assert!(app["versions"][0]["withdrawn_at"].is_string(), "{app}");
    let (status, refused) = engine.post("/v1/deployments", launch).await;
    assert_eq!((status, refused["field"].as_str()), (422, Some("version")), "{refused}");
    assert!(refused["error"].as_str().unwrap().contains("withdrawn"), "{refused}");
    let (status, view) = engine.get(&format!("/v1/deployments/{id}")).await;
    assert_eq!((status, view["desired"].as_str()), (200, Some("running")), "{view}");
    let (status, again) = engine.post("/v1/applications/sample/versions/1.0.0/withdraw", json!({})).await;
    assert_eq!(status, 409, "{again}");
    assert!(again["error"].as_str().unwrap().contains("already withdrawn"), "{again}");

    // Deleted once nothing runs it, and its id free again.
    let (status, refused) = engine.delete("/v1/applications/sample").await;
    assert_eq!((status, refused["field"].as_str()), (409, Some("id")), "{refused}");
    assert!(refused["error"].as_str().unwrap().contains(&id), "names the live deployment: {refused}");
    assert_eq!(engine.delete(&format!("/v1/deployments/{id}")).await.0, 202);
    tests::eventually("the application to be deleted", crate::harness::TIMEOUT, || async {
        (engine.delete("/v1/applications/sample").await.0 == 200).then_some(())
    })
    .await;
    assert_eq!(engine.get("/v1/applications/sample").await.0, 404);
    tests::eventually("the catalog to forget it", crate::harness::TIMEOUT, || async {
        let (_, page) = engine.get("/v1/applications").await;
        page["items"].as_array()?.is_empty().then_some(())
    })
    .await;
    assert_eq!(engine.post("/v1/applications", json!({"id": "sample", "name": "Again"})).await.0, 201);
}
