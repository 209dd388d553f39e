//! Trust on the bus, tried against the real nats-server with the project's own configuration:
//! who may connect, what each credential may do (enforced by the server), revocation, and
//! signed reports.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use serde_json::Value;
use tests::NatsServer;

use crate::harness::{launch, Lab, TestEngine, TestNode, IMAGE_1_0_0, TIMEOUT};

/// A connection as `credentials` would make it, and the errors the server sends it.
async fn connect_as(nats: &NatsServer, credentials: bus::Credentials) -> (async_nats::Client, Arc<Mutex<Vec<String>>>) {
    let errors = Arc::new(Mutex::new(Vec::new()));
    let seen = errors.clone();
    let connection = bus::Connection {
        credentials: Some(credentials),
        ca: Some(nats.trust().ca()),
        ..bus::Connection::new(nats.url())
    };
    let options = connection.options().event_callback(move |event| {
        let seen = seen.clone();
        async move {
            if let async_nats::Event::ServerError(e) = event {
                seen.lock().unwrap().push(e.to_string());
            }
        }
    });
    (connection.connect_with(options).await.expect("the credential connects"), errors)
}

/// Waits for the server to name a permission violation on `subject`.
async fn violation(errors: &Arc<Mutex<Vec<String>>>, subject: &str) {
    tests::eventually(&format!("a permissions violation on {subject}"), TIMEOUT, || async {
        errors.lock().unwrap().iter().any(|e| e.contains("Permissions Violation") && e.contains(subject)).then_some(())
    })
    .await;
}

/// The JetStream API as an outside party (node, subscriber, auditor) sees it.
fn quick(client: &async_nats::Client) -> jetstream::Context {
    let mut js = jetstream::with_prefix(client.clone(), bus::OUTSIDE_API);
    js.set_timeout(Duration::from_secs(2));
    js
}

/// A test's own server and engine, with an application in tenant `default` and one in `other`.
async fn two_tenants() -> (NatsServer, TestEngine) {
    let nats = NatsServer::start().await;
    let engine = TestEngine::start(&nats).await;
    engine.publish_sample(IMAGE_1_0_0).await;
    let other = engine::command::CommandMeta::new("other", "vendor");
    let register = events::application::ApplicationCommand::Register { name: "Theirs".into() };
    engine.engine.commands.execute::<events::application::Application>("theirs", &register, &other).await.unwrap();
    (nats, engine)
}

/// A test's own server, engine and node, with the sample application running on it.
async fn running() -> (Lab, String) {
    let (lab, id) = Lab::running().await;
    (lab, id)
}

#[tokio::test]
async fn an_anonymous_connection_is_refused() {
    let nats = NatsServer::start().await;
    let anonymous = bus::Connection { ca: Some(nats.trust().ca()), ..bus::Connection::new(nats.url()) };
    let refused = anonymous.connect_with(anonymous.options()).await;
    let err = refused.expect_err("an anonymous connection is refused").to_string();
    assert!(err.contains("authorization violation"), "{err}");
    assert!(nats.engine_connection().connect_with(nats.engine_connection().options()).await.is_ok());
}

#[tokio::test]
async fn a_credential_of_another_operator_is_refused() {
    let nats = NatsServer::start().await;
    let elsewhere = tempfile::tempdir().unwrap();
    let stranger = tests::trust_in(elsewhere.path());
    let (_, creds) = stranger.mint_with_key(&engine::trust::Role::Auditor { id: "x".into() });
    let connection = bus::Connection {
        credentials: Some(bus::Credentials::parse(&creds, None).unwrap()),
        ca: Some(nats.trust().ca()),
        ..bus::Connection::new(nats.url())
    };
    // The server looks for the stranger's account, finds none, and refuses the connection:
    // the client may see the refusal only after its handshake, so it is asked to do something.
    if let Ok(client) = connection.connect_with(connection.options()).await {
        let asked = tokio::time::timeout(Duration::from_secs(30), client.request("$JS.API.INFO", "".into())).await;
        assert!(!matches!(asked, Ok(Ok(_))), "a stranger's request is answered");
    }
    tests::eventually("the server to refuse the stranger", TIMEOUT, || async {
        std::fs::read_to_string(nats.log_file()).ok()?.contains("authentication error").then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_connection_that_cannot_check_the_servers_certificate_fails() {
    let nats = NatsServer::start().await;
    let connection = bus::Connection {
        credentials: Some(nats.trust().engine().clone()),
        ..bus::Connection::new(nats.url().replace("tls://", "nats://"))
    };
    let attempt = tokio::time::timeout(Duration::from_secs(10), connection.connect_with(connection.options())).await;
    assert!(!matches!(attempt, Ok(Ok(_))), "the server speaks TLS only, with a certificate of its own CA");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_is_confined_to_its_own_subjects_by_the_server() {
    let nats = NatsServer::start().await;
    let engine = TestEngine::start(&nats).await;
    let a = engine.enroll("node-a").await;
    engine.enroll("node-b").await;
    let (client, errors) = connect_as(&nats, a).await;
    let js = quick(&client);

    // Its own report is stored; one in node B's name, or B's telemetry, is refused.
    let own = js.publish(events::subject::node_reports("default", "node-a"), "own".into()).await.unwrap().await;
    assert!(own.is_ok(), "{own:?}");
    let forged = js.publish(events::subject::node_reports("default", "node-b"), "forged".into()).await.unwrap().await;
    assert!(forged.is_err(), "no ack for a report in another node's name");
    violation(&errors, "ev.default.node.node-b.state").await;
    client.publish(events::telemetry::subject("default", "node-b"), "beat".into()).await.unwrap();
    violation(&errors, "tm.default.node-b").await;
    client.publish("ev.default.deployment.d1", "write".into()).await.unwrap();
    violation(&errors, "ev.default.deployment.d1").await;
    let store = crate::harness::handler(&nats).await.store().clone();
    assert!(store.last(&events::subject::node_reports("default", "node-b")).await.unwrap().is_none(), "nothing stored");
    assert!(store.last("ev.default.deployment.d1").await.unwrap().is_none(), "nothing stored");

    // It reads its own work consumer, not node B's, and makes none.
    let stream = js.get_stream_no_info(events::subject::STREAM).await.unwrap();
    stream
        .get_consumer::<jetstream::consumer::pull::Config>(&events::subject::node_consumer("default", "node-a"))
        .await
        .unwrap();
    let theirs = events::subject::node_consumer("default", "node-b");
    assert!(stream.get_consumer::<jetstream::consumer::pull::Config>(&theirs).await.is_err());
    let made = jetstream::consumer::pull::Config {
        durable_name: Some("node-b-work".into()),
        filter_subject: events::subject::node_desired("default", "node-b"),
        ..Default::default()
    };
    assert!(stream.create_consumer(made).await.is_err(), "it may not make a consumer on B's work");
    violation(&errors, "JS.EDGE.API.CONSUMER").await;
    // Nor use direct get, nor touch the stream, through the engine's API or its own account's.
    assert!(stream.direct_get_last_for_subject(events::subject::node_desired("default", "node-b")).await.is_err());
    violation(&errors, "JS.EDGE.API.DIRECT.GET").await;
    assert!(js.delete_stream(events::subject::STREAM).await.is_err());
    violation(&errors, "JS.EDGE.API.STREAM.DELETE").await;
    assert!(jetstream::new(client.clone()).delete_stream(events::subject::STREAM).await.is_err());
    violation(&errors, "$JS.API.STREAM.DELETE").await;
    // Nor snoop on the engine's replies.
    let _ = client.subscribe("_INBOX.>").await;
    violation(&errors, "_INBOX.>").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_reply_subject_a_party_names_makes_the_server_write_into_the_stream() {
    let (nats, engine) = two_tenants().await;
    let node = engine.enroll("node-a").await;
    let auditor = engine.engine.issuer.reader(&engine::trust::Role::Auditor { id: "books".into() }).await.unwrap();
    let auditor = bus::Credentials::parse(&auditor.creds, None).unwrap();
    let subscriber = engine::trust::Role::Subscriber { tenant: "default".into(), id: "feed".into() };
    let subscriber = engine.engine.issuer.reader(&subscriber).await.unwrap();
    let feed = subscriber.consumer.clone().unwrap();
    let subscriber = bus::Credentials::parse(&subscriber.creds, None).unwrap();
    let store = crate::harness::handler(&nats).await.store().clone();
    let last = || async { store.stream().clone().info().await.unwrap().state.last_sequence };
    let before = last().await;

    // Each asks the engine's JetStream API something it may ask, naming as its reply an
    // aggregate's subject, another node's report subject, or its own.
    let api = bus::OUTSIDE_API;
    let stream = events::subject::STREAM;
    let victims = [
        "ev.default.deployment.d1".to_owned(),
        events::subject::node_reports("default", "node-b"),
        events::subject::node_reports("default", "node-a"),
    ];
    let (node, _) = connect_as(&nats, node).await;
    let consumer = events::subject::node_consumer("default", "node-a");
    let (auditor, _) = connect_as(&nats, auditor).await;
    let (subscriber, _) = connect_as(&nats, subscriber).await;
    for victim in &victims {
        let next = r#"{"batch": 5, "no_wait": true}"#;
        node.publish_with_reply(format!("{api}.CONSUMER.MSG.NEXT.{stream}.{consumer}"), victim.clone(), next.into())
            .await
            .unwrap();
        node.publish_with_reply(format!("{api}.CONSUMER.INFO.{stream}.{consumer}"), victim.clone(), "".into())
            .await
            .unwrap();
        node.publish_with_reply(events::subject::node_reports("default", "node-a"), victim.clone(), "{}".into())
            .await
            .unwrap();
        let get = r#"{"seq": 1, "next_by_subj": "ev.>", "batch": 5}"#;
        auditor.publish_with_reply(format!("{api}.DIRECT.GET.{stream}"), victim.clone(), get.into()).await.unwrap();
        subscriber
            .publish_with_reply(format!("{api}.CONSUMER.MSG.NEXT.{stream}.{feed}"), victim.clone(), next.into())
            .await
            .unwrap();
    }
    // Each connection's last request, one it may make, is answered after the ones before it.
    for (client, asked) in [
        (&node, format!("{api}.CONSUMER.INFO.{stream}.{consumer}")),
        (&subscriber, format!("{api}.CONSUMER.INFO.{stream}.{feed}")),
        (&auditor, format!("{api}.STREAM.INFO.{stream}")),
    ] {
        let answer = tokio::time::timeout(TIMEOUT, client.request(asked.clone(), "".into())).await;
        assert!(matches!(answer, Ok(Ok(_))), "{asked} is answered: {answer:?}");
    }

    // What is stored since on those subjects is the node's three reports, as itself (which the
    // engine refuses for want of a signature), and no answer.
    let mut written = Vec::new();
    for sequence in before + 1..=last().await {
        let message = store.stream().get_raw_message(sequence).await.unwrap();
        if victims.contains(&message.subject.to_string()) {
            written.push((message.subject.to_string(), String::from_utf8_lossy(&message.payload).into_owned()));
        }
    }
    let own = (events::subject::node_reports("default", "node-a"), "{}".to_owned());
    assert_eq!(written, vec![own; 3], "no answer landed in the stream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_reads_its_tenant_and_nothing_else() {
    let (nats, engine) = two_tenants().await;

    let subscriber = |tenant: &str| engine::trust::Role::Subscriber { tenant: tenant.into(), id: "feed".into() };
    let credential = engine.engine.issuer.reader(&subscriber("default")).await.unwrap();
    let theirs = engine.engine.issuer.reader(&subscriber("other")).await.unwrap();
    let (client, errors) = connect_as(&nats, bus::Credentials::parse(&credential.creds, None).unwrap()).await;
    let stream = quick(&client).get_stream_no_info(events::subject::STREAM).await.unwrap();

    // It makes no consumer (one of its own could deliver anywhere), and reads no other's.
    let config = jetstream::consumer::pull::Config {
        name: credential.consumer.clone(),
        filter_subject: "ev.other.>".to_owned(),
        ..Default::default()
    };
    assert!(stream.create_consumer(config).await.is_err(), "it may not make a consumer");
    violation(&errors, "JS.EDGE.API.CONSUMER.CREATE").await;
    let other = theirs.consumer.clone().unwrap();
    assert!(stream.get_consumer::<jetstream::consumer::pull::Config>(&other).await.is_err(), "another's consumer");
    violation(&errors, &other).await;

    // Its own, made by the engine, holds its tenant's events.
    let mine: jetstream::consumer::PullConsumer =
        stream.get_consumer(&credential.consumer.clone().unwrap()).await.expect("its own consumer");
    let mut messages = mine.fetch().max_messages(100).expires(Duration::from_secs(2)).messages().await.unwrap();
    let mut subjects = Vec::new();
    while let Some(message) = futures::StreamExt::next(&mut messages).await {
        subjects.push(message.unwrap().subject.to_string());
    }
    assert_eq!(subjects, ["ev.default.application.sample"; 3], "every event of its tenant, and no other");
    client.publish("ev.default.application.sample", "write".into()).await.unwrap();
    violation(&errors, "ev.default.application.sample").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_node_is_cut_off_cannot_come_back_and_its_deployments_say_so() {
    let (Lab { nats, engine, node }, id) = running().await;
    let creds = node.credentials();

    let (status, body) = engine.post(&format!("/v1/nodes/{}/revoke", node.name), Value::Null).await;
    assert_eq!(status, 200, "{body}");
    let revoked_at = std::time::Instant::now();
    tests::eventually("the node to be cut off", TIMEOUT, || async { node.task.is_finished().then_some(()) }).await;
    let cut_after = revoked_at.elapsed();
    assert!(cut_after < Duration::from_secs(5), "cut off after {cut_after:?}");

    // Every reconnect is refused.
    let connection =
        bus::Connection { credentials: Some(creds), ca: Some(nats.trust().ca()), ..bus::Connection::new(nats.url()) };
    let err = connection.connect_with(connection.options()).await.expect_err("a revoked credential is refused");
    assert!(err.to_string().contains("authorization violation"), "{err}");

    let view = engine
        .wait_deployment(&id, "the deployment to say the node is revoked", |v| {
            v["nodes"][&node.name]["revoked"] == true
        })
        .await;
    assert_eq!(view["nodes"][&node.name]["status"], "running", "its last known status stands: {view}");
    assert_eq!(engine.node_state(&node.name).await.as_deref(), Some("revoked"));
    let (status, body) = engine
        .post(
            &format!("/v1/nodes/{}/enroll", node.name),
            serde_json::json!({
                "public_key": creds_key(&node)
            }),
        )
        .await;
    assert_eq!(
        (status, body["field"].as_str()),
        (409, Some("public_key")),
        "a revoked key is never enrolled again: {body}"
    );
    // Nothing is held on the server for it: its work consumer is gone.
    let store = engine.engine.commands.store().clone();
    let consumer = events::subject::node_consumer("default", &node.name);
    tests::eventually("the revoked node's consumer to be removed", TIMEOUT, || async {
        store.consumers().consumer_info(&consumer).await.is_err().then_some(())
    })
    .await;
    node.stop().await;
}

fn creds_key(node: &TestNode) -> String {
    node.credentials().public_key()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_enrolled_with_its_own_key_runs_and_the_seed_never_leaves_it() {
    let nats = NatsServer::start().await;
    let engine = TestEngine::start(&nats).await;
    let key = nkeys::KeyPair::new_user();
    let name = "own-key";
    let (status, body) = engine
        .post(
            &format!("/v1/nodes/{name}/enroll"),
            serde_json::json!({"public_key": key.public_key(), "labels": {"site": "lab"}}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let creds = body["creds"].as_str().unwrap();
    assert!(!creds.contains("SEED"), "the answer holds the JWT alone");
    let credentials = bus::Credentials::parse(creds, Some(&key.seed().unwrap())).unwrap();
    let data = tempfile::tempdir().unwrap();
    let config = edge_node::NodeConfig {
        credentials: Some(credentials),
        ca: Some(nats.trust().ca()),
        ..TestNode::config(&nats.url(), name, &data)
    };
    let node = TestNode::start_with(config, &engine, data).await;
    assert_eq!(engine.node_state(name).await.as_deref(), Some("online"));

    // A bad key is refused by name, and nothing is stored.
    let before = crate::harness::stored(&engine.engine.commands).await;
    let (status, body) = engine.post("/v1/nodes/other/enroll", serde_json::json!({"public_key": "SUAnotakey"})).await;
    assert_eq!((status, body["field"].as_str()), (422, Some("public_key")), "{body}");
    assert_eq!(crate::harness::stored(&engine.engine.commands).await, before);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_report_signed_by_the_wrong_key_is_refused_and_named_by_verify() {
    let (Lab { nats, engine, node }, id) = running().await;
    let name = node.name.clone();
    node.stop().await;

    // A writer that can publish anywhere (a compromised credential) reports in the node's name,
    // signed by a key of its own.
    let forger = nkeys::KeyPair::new_user();
    let report = events::report::NodeReport::DeploymentState {
        deployment: id.clone(),
        version: "1.0.0".into(),
        status: events::Status::Failed,
        error: Some(events::Failure { code: "forged".into(), message: "forged".into() }),
        containers: Default::default(),
    };
    let envelope = events::Envelope::new(
        uuid::Uuid::now_v7(),
        chrono::Utc::now(),
        events::report::AGGREGATE_TYPE,
        &name,
        &events::envelope::Metadata {
            tenant: "default".into(),
            actor: format!("node:{name}"),
            correlation_id: uuid::Uuid::now_v7(),
            causation_id: uuid::Uuid::now_v7(),
        },
        &report,
        None,
    )
    .signed(&forger);
    let subject = events::subject::node_reports("default", &name);
    let store = crate::harness::handler(&nats).await.store().clone();
    let forged = store
        .publish(
            &subject,
            bus::store::Outgoing { msg_id: envelope.id.to_string(), bytes: envelope.encode().into(), trace: None },
        )
        .await
        .unwrap();

    // The ingestor reads past it (a later report is taken) and the deployment stays running.
    tests::eventually("the ingestor to read past the forged report", TIMEOUT, || async {
        let info = store.consumers().consumer_info("ingest").await.ok()?;
        (info.ack_floor.stream_sequence >= forged).then_some(())
    })
    .await;
    let (_, view) = engine.get(&format!("/v1/deployments/{id}")).await;
    assert_eq!(view["status"], "running", "the forged failure was refused: {view}");
    // The refusal is a finding of the node's, an event in the log and in its record.
    let record = tests::eventually("the refusal to be recorded", TIMEOUT, || async {
        let (_, record) = engine.get(&format!("/v1/nodes/{name}")).await;
        (record["refused_reports"] == 1).then_some(record)
    })
    .await;
    assert_eq!(record["last_refused"]["sequence"], forged, "{record}");
    let reason = record["last_refused"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains(&forger.public_key()) && reason.contains("not the key"), "{record}");

    let engine_key = nats.trust().facts().engine.clone();
    let (code, text) = crate::replay::replay(&nats, &["verify", "--engine-key", &engine_key]).await;
    assert_eq!(code, 1, "{text}");
    let findings: Vec<&str> = text.lines().filter(|l| l.contains(": forged:")).collect();
    assert_eq!(findings.len(), 1, "{text}");
    assert!(findings[0].contains(&subject) && findings[0].contains(&forger.public_key()), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_replaces_the_old_one_and_the_whole_history_still_verifies() {
    let (Lab { nats, engine, node }, _) = running().await;
    let old = node.credentials();

    // The node makes a new key pair and is enrolled with it; the old key is revoked.
    let key = nkeys::KeyPair::new_user();
    let path = format!("/v1/nodes/{}/enroll", node.name);
    let (status, body) = engine.post(&path, serde_json::json!({"public_key": key.public_key()})).await;
    assert_eq!(status, 201, "{body}");
    let new = bus::Credentials::parse(body["creds"].as_str().unwrap(), Some(&key.seed().unwrap())).unwrap();
    tests::eventually("the old key to be cut off", TIMEOUT, || async { node.task.is_finished().then_some(()) }).await;
    let data = node.restart_with(new, &nats, &engine).await;
    let second = launch(&engine, &data.name).await;
    engine.wait_deployment(&second, "a deployment under the new key", |v| v["status"] == "running").await;

    let connection =
        bus::Connection { credentials: Some(old), ca: Some(nats.trust().ca()), ..bus::Connection::new(nats.url()) };
    assert!(connection.connect_with(connection.options()).await.is_err(), "the old key is refused");
    let engine_key = nats.trust().facts().engine.clone();
    let (code, text) = crate::replay::replay(&nats, &["verify", "--engine-key", &engine_key]).await;
    assert_eq!(code, 0, "reports under the old key verify as they were signed then: {text}");
    data.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auditor_reads_every_tenant_and_writes_nothing() {
    let (nats, engine) = two_tenants().await;

    let credential = engine.engine.issuer.reader(&engine::trust::Role::Auditor { id: "books".into() }).await.unwrap();
    let (client, errors) = connect_as(&nats, bus::Credentials::parse(&credential.creds, None).unwrap()).await;
    let store = bus::store::EventStore::open_existing(client.clone(), bus::OUTSIDE_API, &Default::default())
        .await
        .unwrap()
        .reading_by_direct_get();
    let mut subjects = Vec::new();
    replay::each_event(&store, 1, |subject, _| {
        subjects.push(subject.to_owned());
        Ok(())
    })
    .await
    .unwrap();
    assert!(subjects.contains(&"ev.other.application.theirs".to_owned()), "{subjects:?}");
    assert!(subjects.contains(&"ev.default.application.sample".to_owned()), "{subjects:?}");

    let js = quick(&client);
    let written = js.publish("ev.default.application.sample", "write".into()).await.unwrap().await;
    assert!(written.is_err(), "an auditor writes nothing");
    violation(&errors, "ev.default.application.sample").await;
    let stream = js.get_stream_no_info(events::subject::STREAM).await.unwrap();
    assert!(stream.create_consumer(jetstream::consumer::pull::Config::default()).await.is_err());
    violation(&errors, "JS.EDGE.API.CONSUMER.CREATE").await;
    let sample = crate::harness::handler(&nats).await.store().load("ev.default.application.sample").await.unwrap();
    assert_eq!(sample.events.len(), 3, "nothing stored: registered, version added, published");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_is_one_nodes_ever_and_a_revocation_outlives_its_tenant() {
    let nats = NatsServer::start().await;
    let engine = TestEngine::start(&nats).await;
    let theirs = engine.enroll("node-a").await;
    // Enrolling `node` of `tenant` with node-a's key is refused, naming the key.
    let taken = |tenant: &'static str, node: &'static str| {
        let body = serde_json::json!({"public_key": theirs.public_key()});
        let url = engine.url(&format!("/v1/nodes/{node}/enroll"));
        let request = engine.http.post(url).header("x-tenant", tenant).json(&body);
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap();
            assert_eq!((status, body["field"].as_str()), (409, Some("public_key")), "{tenant}/{node}: {body}");
        }
    };
    // Another node, of this tenant or another, may not take node-a's key.
    for tenant in ["default", "other"] {
        taken(tenant, "node-b").await;
    }

    // A subscriber of each tenant with the same name: two consumers, two inboxes.
    let role = |tenant: &str| engine::trust::Role::Subscriber { tenant: tenant.into(), id: "feed".into() };
    assert_ne!(role("default").consumer(), role("other").consumer());
    assert_ne!(role("default").inbox_prefix(), role("other").inbox_prefix());

    // node-a is revoked, then its tenant deleted; a later revocation sends the whole list again,
    // and node-a's key is still on it.
    let (status, body) = engine.post("/v1/nodes/node-a/revoke", Value::Null).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = engine.delete("/v1/tenants/default").await;
    assert_eq!(status, 202, "{body}");
    let other = || engine::command::CommandMeta::new("other", "admin");
    let node_c = engine.engine.issuer.enroll("node-c", Default::default(), None, &other()).await.unwrap();
    let node_c = bus::Credentials::parse(&node_c.creds, None).unwrap();
    engine.engine.issuer.revoke("node-c", &other()).await.unwrap();
    let refused = |credentials: bus::Credentials| {
        let connection = bus::Connection {
            credentials: Some(credentials),
            ca: Some(nats.trust().ca()),
            ..bus::Connection::new(nats.url())
        };
        async move { connection.connect_with(connection.options()).await.is_err() }
    };
    // Once node-c's revocation is in, the list sent with it still holds node-a's key.
    tests::eventually("node-c's revocation to reach the server", TIMEOUT, || async {
        refused(node_c.clone()).await.then_some(())
    })
    .await;
    assert!(refused(theirs.clone()).await, "a revoked key stays refused after its tenant is deleted");
    // Nor is node-a's key ever enrolled for another node, its tenant gone.
    taken("other", "node-d").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_server_certificate_is_trusted_through_the_same_authority_by_nats_and_api_clients() {
    use std::os::unix::fs::PermissionsExt;
    let mut nats = NatsServer::start().await;
    let dir = nats.trust().dir().to_owned();
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
    let (cert, key, ca) = (read("server.pem"), read("server-key.pem"), read("ca.pem"));
    nats.trust().renew_server_certificate(&["127.0.0.1", "localhost"]).unwrap();
    assert!(read("server.pem") != cert && read("server-key.pem") != key, "a new certificate with a new key");
    assert_eq!(read("ca.pem"), ca, "the same authority");
    let mode = std::fs::metadata(dir.join("server-key.pem")).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "the new key is private");

    // Started again, the server presents the new certificate, which clients trusting ca.pem
    // accept; so does the engine's API, presenting it too.
    nats.restart().await;
    let client = nats.client().await;
    assert!(jetstream::new(client).query_account().await.is_ok(), "a client trusting the authority connects");
    let engine = TestEngine::start(&nats).await;
    assert_eq!(engine.get("/v1/nodes").await.0, 200, "the API's certificate is trusted through the same authority");
}
