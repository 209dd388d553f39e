//! The HTTP API on a real nats-server: bad input is refused with a 4xx naming the field, and
//! nothing is stored.

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
