//! Whatever arrives on the bus, no reader stops: what does not fit is set aside as a dead letter,
//! work another writer put on a node's subject is chained after, and the engine's view of a
//! node is measured on the engine's clock.

use std::collections::BTreeSet;

use bus::store::Outgoing;
use bytes::Bytes;
use serde_json::json;
use tests::eventually;

use crate::harness::{handler, launch, Lab, IMAGE_1_0_0, TIMEOUT};
use crate::replay::replay;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_bytes_and_misplaced_envelopes_are_set_aside_and_every_reader_goes_on() {
    let (Lab { nats, engine, node }, id) = Lab::running().await;

    // What a bug, an old writer or a stolen credential could put on each kind of subject the
    // engine, the node and `replay` read: bytes that are not an envelope, and a real envelope
    // (the deployment's first event) on subjects not its own.
    let commands = handler(&nats).await;
    let store = commands.store();
    let deployment = events::subject::aggregate("default", "deployment", &id);
    let stranger = store.load(&deployment).await.unwrap().events[0].bytes.clone();
    let application = events::subject::aggregate("default", "application", "sample");
    let applications = store.load(&application).await.unwrap().events[0].bytes.clone();
    let garbage = Bytes::from_static(b"\xc1 not an envelope");
    let pair = events::subject::aggregate("default", "deployment_node", &format!("{id}.{}", node.name));
    let poisoned = [
        (application.clone(), stranger.clone()),
        (events::subject::aggregate("default", "node", &node.name), garbage.clone()),
        (events::subject::aggregate("default", "tenant", "default"), garbage.clone()),
        (pair.clone(), garbage.clone()),
        (pair, stranger.clone()),
        (events::subject::node_reports("default", &node.name), garbage.clone()),
        (events::subject::node_desired("default", &node.name), stranger.clone()),
        (events::subject::node_desired("default", &node.name), garbage.clone()),
        // Last on the aggregate's own subject: its next command must still chain and append.
        (deployment.clone(), applications.clone()),
        (deployment.clone(), garbage.clone()),
    ];
    let mut placed = BTreeSet::new();
    for (i, (subject, bytes)) in poisoned.iter().enumerate() {
        let outgoing = Outgoing { msg_id: format!("poison-{i}"), bytes: bytes.clone(), trace: None };
        placed.insert((subject.clone(), store.publish(subject, outgoing).await.unwrap()));
    }
    let telemetry = events::telemetry::subject("default", &node.name);
    store.client().publish(telemetry.clone(), garbage.clone()).await.unwrap();
    store.client().flush().await.unwrap();

    // The aggregate still takes commands, the router still sends work, the node still takes
    // it, its reports still come back and the read model still folds them.
    let (status, body) = engine.post(&format!("/v1/deployments/{id}/stop"), json!({})).await;
    assert_eq!(status, 202, "{body}");
    engine.wait_deployment(&id, "the deployment to stop", |v| v["nodes"][&node.name]["status"] == "stopped").await;
    let (status, body) = engine.post(&format!("/v1/deployments/{id}/start"), json!({})).await;
    assert_eq!(status, 202, "{body}");
    engine.wait_deployment(&id, "the deployment to run again", |v| v["status"] == "running").await;
    let (status, history) = engine.get(&format!("/v1/deployments/{id}/history?limit=500")).await;
    assert_eq!(status, 200, "the history leaves out what does not fit: {history}");

    // Each is in the dead-letter stream, with where it was found and why.
    let letters = eventually("every message set aside to be a dead letter", TIMEOUT, || async {
        let letters = bus::dead::letters(store.jetstream()).await.ok()?;
        let found: BTreeSet<(String, u64)> =
            letters.iter().filter_map(|l| Some((l.subject.clone(), l.sequence?))).collect();
        let telemetry_found = letters.iter().any(|l| l.subject == telemetry && l.sequence.is_none());
        (placed.is_subset(&found) && telemetry_found).then_some(letters)
    })
    .await;
    for letter in &letters {
        assert!(!letter.reason.is_empty() && !letter.reader.is_empty(), "{letter:?}");
        let poison = [&garbage, &stranger, &applications];
        assert!(poison.contains(&&letter.payload), "the bytes are kept as found: {letter:?}");
    }
    let reason_of = |subject: &str| {
        letters.iter().filter(|l| l.subject == subject).map(|l| l.reason.clone()).collect::<Vec<_>>().join(" / ")
    };
    let reasons = reason_of(&deployment);
    assert!(reasons.contains("not an event envelope") && reasons.contains("misplaced"), "{reasons}");
    assert!(reason_of(&application).contains("misplaced"), "{}", reason_of(&application));
    // The node set aside what came on its work subject, and said so.
    let work = events::subject::node_desired("default", &node.name);
    let poisoned_work: BTreeSet<u64> = placed.iter().filter(|(s, _)| *s == work).map(|(_, q)| *q).collect();
    let reports = events::subject::node_reports("default", &node.name);
    let said = store.load_matching(&reports, 1).await.unwrap();
    let set_aside: BTreeSet<u64> = said
        .iter()
        .filter_map(|e| match e.envelope.event::<events::report::NodeReport>() {
            Ok(events::report::NodeReport::WorkSetAside { sequence, .. }) => Some(sequence),
            _ => None,
        })
        .collect();
    assert_eq!(set_aside, poisoned_work);

    // The auditor reads to the end, names each, and verify fails.
    let (code, out) = replay(&nats, &["verify", "--engine-key", &nats.trust().facts().engine]).await;
    assert_eq!(code, 1, "{out}");
    for (subject, sequence) in &placed {
        let named = out.lines().any(|l| l.starts_with(&format!("{subject}: the message at sequence {sequence} ")));
        assert!(named, "{subject} at {sequence} is named: {out}");
    }
    assert!(out.contains(&format!("{} set aside", placed.len())), "{out}");
    let (code, trail) = replay(&nats, &["audit"]).await;
    assert_eq!(code, 0, "{trail}");
    for (subject, sequence) in &placed {
        let shown = trail.lines().any(|l| l.trim_start().starts_with(&format!("{sequence}  set aside on {subject}: ")));
        assert!(shown, "audit shows {subject} at {sequence} set aside: {trail}");
    }
    let last = trail.lines().last().unwrap_or_default();
    assert!(last.contains("deployment.start_requested") || last.contains("deployment_node"), "read to the end: {last}");
    drop(node);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absurd_heartbeat_neither_stops_liveness_nor_keeps_a_silent_node_online() {
    let Lab { nats: _nats, engine, node } = Lab::start().await;
    let store = engine.engine.commands.store().clone();
    // A heartbeat from the far future saying the next comes in 584 million years.
    let absurd = json!({
        "tenant": "default", "node": node.name, "at": "9999-12-31T23:59:59Z",
        "interval_ms": u64::MAX, "containers": []
    });
    let subject = events::telemetry::subject("default", &node.name);
    store.client().publish(subject, serde_json::to_vec(&absurd).unwrap().into()).await.unwrap();
    store.client().flush().await.unwrap();
    // The server has it: a beat the node makes from now on reaches the engine after it.
    let flushed = chrono::Utc::now();

    // Liveness goes on: it takes the node's next beat...
    let name = node.name.clone();
    eventually("liveness to take the next real beat", TIMEOUT, || async {
        let (status, beat) = engine.get(&format!("/v1/nodes/{name}/telemetry")).await;
        let at = beat["at"].as_str().and_then(|t| t.parse::<chrono::DateTime<chrono::Utc>>().ok());
        (status == 200 && beat["interval_ms"] == 300 && at.is_some_and(|at| at > flushed)).then_some(())
    })
    .await;
    // ...and once the node is gone for good, its silence is noticed.
    node.stop().await;
    eventually("the silent node to turn unreachable", TIMEOUT, || async {
        (engine.node_state(&name).await.as_deref() == Some("unreachable")).then_some(())
    })
    .await;
    let (status, _) = engine.get("/healthz").await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_view_says_when_the_engine_last_heard_the_node_and_how_far_its_clock_is() {
    let Lab { nats: _nats, engine, node } = Lab::start().await;
    let heard = |view: &serde_json::Value| {
        view["last_heartbeat"].as_str().and_then(|t| t.parse::<chrono::DateTime<chrono::Utc>>().ok())
    };
    let (_, first) = engine.get(&format!("/v1/nodes/{}", node.name)).await;
    let first_heard = heard(&first).expect("a last heartbeat");
    let later = eventually("the last-heard time to move on as the node beats", TIMEOUT, || async {
        let (_, view) = engine.get(&format!("/v1/nodes/{}", node.name)).await;
        heard(&view).is_some_and(|t| t > first_heard).then_some(view)
    })
    .await;
    // Both clocks are this machine's: the skew is what a heartbeat takes to arrive.
    let skew = later["clock_skew_ms"].as_i64().expect("the skew is shown");
    assert!(skew.abs() < 60_000, "{later}");
}

/// A report of `node`'s on `deployment`, signed by its `key`, made at `time` by the node's
/// clock and numbered `sequence` by its outbox.
fn numbered_report(
    node: &str,
    deployment: &str,
    status: events::Status,
    key: &nkeys::KeyPair,
    time: chrono::DateTime<chrono::Utc>,
    sequence: u64,
) -> Outgoing {
    let id = uuid::Uuid::now_v7();
    let meta = events::envelope::Metadata {
        tenant: "default".into(),
        actor: format!("node:{node}"),
        correlation_id: id,
        causation_id: id,
    };
    let error = (status == events::Status::Failed)
        .then(|| events::Failure { code: "container_exited".into(), message: "exit 1".into() });
    let report = events::report::NodeReport::DeploymentState {
        deployment: deployment.into(),
        status,
        error,
        containers: Default::default(),
        version: Default::default(),
    };
    let mut envelope = events::Envelope::new(id, time, events::report::AGGREGATE_TYPE, node, &meta, &report, None);
    envelope.order = Some(events::envelope::Order { epoch: 7, sequence });
    Outgoing { msg_id: id.to_string(), bytes: envelope.signed(key).encode().into(), trace: None }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_clock_steps_back_an_hour_mid_deployment_is_never_frozen() {
    use events::deployment::{Deployment, DeploymentCommand, Launch};
    use events::Status;
    let nats = tests::NatsServer::start().await;
    let engine = crate::harness::TestEngine::start(&nats).await;
    let commands = handler(&nats).await;
    crate::harness::seed(&commands, &["edge-1"]).await;
    let application = commands.state("default", "sample").await.unwrap();
    let launch = Launch::new("sample", application, "1.0.0", &["edge-1"]);
    let id = uuid::Uuid::now_v7().to_string();
    commands.execute::<Deployment>(&id, &DeploymentCommand::Launch(launch), &crate::harness::meta()).await.unwrap();
    let credentials = engine.enroll("edge-1").await;
    let key = credentials.key().as_ref();
    let subject = events::subject::node_reports("default", "edge-1");
    let store = commands.store();
    let now = chrono::Utc::now();
    let an_hour_ago = now - chrono::Duration::hours(1);

    // Downloading by a clock a day ahead; then the clock steps back an hour.
    let reports = [
        (Status::Downloading, now + chrono::Duration::days(1), 1),
        (Status::Starting, an_hour_ago, 2),
        (Status::Running, an_hour_ago + chrono::Duration::seconds(1), 4),
        // Made before the last one (its count says so), arriving late: it answers nothing.
        (Status::Failed, now + chrono::Duration::days(2), 3),
    ];
    for (status, time, sequence) in reports {
        store.publish(&subject, numbered_report("edge-1", &id, status, key, time, sequence)).await.unwrap();
    }
    let consumer = store.stream().get_consumer::<async_nats::jetstream::consumer::pull::Config>("ingest");
    let consumer = consumer.await.unwrap();
    eventually("every report to be taken", TIMEOUT, || {
        let mut consumer = consumer.clone();
        async move {
            let info = consumer.info().await.ok()?;
            (info.num_ack_pending == 0 && info.num_pending == 0).then_some(())
        }
    })
    .await;
    let view = engine.wait_deployment(&id, "the node's last report to count", |v| v["status"] == "running").await;
    // Taken at the engine's time: never an hour back, nor a day ahead.
    let updated = view["nodes"]["edge-1"]["updated_at"].as_str().unwrap().parse::<chrono::DateTime<chrono::Utc>>();
    let updated = updated.unwrap();
    assert!(updated >= now - chrono::Duration::minutes(5) && updated <= chrono::Utc::now(), "{view}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_status_past_its_deadline_is_recorded_overdue_and_a_later_report_still_counts() {
    use events::deployment::{Deployment, DeploymentCommand, Launch};
    use events::Status;
    let nats = tests::NatsServer::start().await;
    let deadlines = events::status::Deadlines { pending: std::time::Duration::from_secs(1), ..Default::default() };
    let engine = crate::harness::TestEngine::start_with(&nats.url(), nats.trust(), 1, |config| {
        config.deadlines = deadlines;
    })
    .await;
    let commands = handler(&nats).await;
    // A node that never takes its work: its agent is not running.
    crate::harness::seed(&commands, &["edge-1"]).await;
    let application = commands.state("default", "sample").await.unwrap();
    let launch = Launch::new("sample", application, "1.0.0", &["edge-1"]);
    let id = uuid::Uuid::now_v7().to_string();
    commands.execute::<Deployment>(&id, &DeploymentCommand::Launch(launch), &crate::harness::meta()).await.unwrap();

    let view = engine
        .wait_deployment(&id, "the pending node to be overdue", |v| !v["nodes"]["edge-1"]["overdue"].is_null())
        .await;
    let entry = &view["nodes"]["edge-1"];
    assert_eq!(entry["status"], "pending_deploy", "the status stays, the overdue is beside it: {view}");
    assert_eq!(entry["overdue"]["status"], "pending_deploy", "{view}");
    assert!(entry["overdue"]["waited_ms"].as_u64().unwrap() >= 1000, "{view}");
    let (_, history) = engine.get(&format!("/v1/deployments/{id}/history?limit=500")).await;
    let noted = history["items"].as_array().unwrap().iter().any(|h| {
        h["node"] == "edge-1" && h["note"].as_str().is_some_and(|n| n.starts_with("overdue: pending_deploy for "))
    });
    assert!(noted, "the history names the step and the wait: {history}");

    // The node comes at last: its report counts, and ends the overdue.
    let credentials = engine.enroll("edge-1").await;
    let report = numbered_report("edge-1", &id, Status::Running, credentials.key(), chrono::Utc::now(), 1);
    commands.store().publish(&events::subject::node_reports("default", "edge-1"), report).await.unwrap();
    let view = engine.wait_deployment(&id, "the late report to count", |v| v["status"] == "running").await;
    assert!(view["nodes"]["edge-1"]["overdue"].is_null(), "{view}");
}

/// JSON of any shape, with the keys the API's bodies have, so that the checks behind the
/// parsing are reached too.
fn body_like() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
    use proptest::prelude::*;
    let key = prop_oneof![
        Just("application"),
        Just("version"),
        Just("nodes"),
        Just("image"),
        Just("compose"),
        Just("env"),
        Just("selector"),
        Just("rollout"),
        Just("secrets"),
        Just("name"),
        Just("services"),
        Just("binds"),
        Just("registries"),
        Just("roles"),
        Just("tenant"),
        Just("labels"),
        Just("staged"),
        Just("profile"),
        Just("rollback_within"),
        Just("deployments"),
        Just("subject"),
        Just("waves"),
        Just("id"),
        Just("ports"),
    ];
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(serde_json::Value::Null, Into::into)),
        "\\PC{0,24}".prop_map(serde_json::Value::from),
        prop_oneof![
            Just("1.0.0"),
            Just("sample"),
            Just("edge-1"),
            Just("${A:-b}"),
            Just("services:\n  web:\n    image: x")
        ]
        .prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
            proptest::collection::btree_map(key.clone().prop_map(str::to_owned), inner, 0..6)
                .prop_map(|map| serde_json::Value::Object(map.into_iter().collect())),
        ]
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_body_on_any_call_is_answered_never_with_a_server_error_or_a_dropped_connection() {
    use proptest::strategy::{Strategy, ValueTree};
    let nats = tests::NatsServer::start().await;
    let engine = crate::harness::TestEngine::start(&nats).await;
    crate::harness::seed(&handler(&nats).await, &["edge-1"]).await;
    let calls = [
        (reqwest::Method::POST, "/v1/applications"),
        (reqwest::Method::POST, "/v1/applications/sample/versions"),
        (reqwest::Method::POST, "/v1/applications/sample/versions/1.0.0/publish"),
        (reqwest::Method::POST, "/v1/deployments"),
        (reqwest::Method::POST, "/v1/deployments/apply"),
        (reqwest::Method::POST, "/v1/deployments/d1/update"),
        (reqwest::Method::POST, "/v1/deployments/d1/stop"),
        (reqwest::Method::PUT, "/v1/tenants/default/policy"),
        (reqwest::Method::POST, "/v1/tokens"),
        (reqwest::Method::POST, "/v1/nodes/edge-9/enroll"),
        (reqwest::Method::POST, "/v1/credentials/subscriber"),
    ];
    // The bodies come from a seeded generator: a failure is the same on every run.
    let config =
        proptest::test_runner::Config { rng_seed: proptest::test_runner::RngSeed::Fixed(14), ..Default::default() };
    let mut runner = proptest::test_runner::TestRunner::new(config);
    let strategy = body_like();
    let cases: usize = std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(256).min(2000);
    for case in 0..cases {
        let body = strategy.new_tree(&mut runner).unwrap().current();
        let (method, path) = &calls[case % calls.len()];
        // Now and then not JSON at all.
        let bytes = match case % 7 {
            0 => serde_json::to_vec(&body).unwrap().into_iter().rev().collect(),
            _ => serde_json::to_vec(&body).unwrap(),
        };
        let answer = engine
            .http
            .request(method.clone(), engine.url(path))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(bytes)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path} with {body}: no answer: {e}"));
        let status = answer.status();
        assert!(status.as_u16() < 500, "{method} {path} with {body}: {status} {:?}", answer.text().await);
    }
    let (status, _) = engine.get("/healthz").await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_heartbeat_lists_every_container_the_node_runs() {
    let Lab { nats: _nats, engine, node } = Lab::start().await;
    const SERVICES: usize = 8;
    let services: String = (0..SERVICES).map(|i| format!("  s{i}:\n    image: {IMAGE_1_0_0}\n")).collect();
    crate::compose::publish_compose(&engine, &format!("services:\n{services}")).await;
    let id = crate::compose::launch_shop(&engine, &node.name, json!({})).await;
    engine.wait_deployment(&id, "every service to run", |v| v["status"] == "running").await;

    // Whatever the runtime takes to sample them, each beat names all of them, sampled or not.
    let beats = std::sync::Mutex::new(std::collections::BTreeSet::new());
    let sampled = eventually("several beats, and every container sampled", TIMEOUT, || async {
        let (status, beat) = engine.get(&format!("/v1/nodes/{}/telemetry", node.name)).await;
        assert_eq!(status, 200, "{beat}");
        let containers = beat["containers"].as_array().cloned().unwrap_or_default();
        assert_eq!(containers.len(), SERVICES, "a beat left a container out: {beat}");
        let mut seen = beats.lock().unwrap();
        seen.insert(beat["at"].as_str().unwrap_or_default().to_owned());
        let all_sampled = containers.iter().all(|c| c["not_sampled_yet"].is_null() && c["state"] == "running");
        (seen.len() >= 5 && all_sampled).then_some(beat)
    })
    .await;
    assert!(sampled["containers"].as_array().unwrap().iter().all(|c| c["memory_bytes"].as_u64() > Some(0)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_are_read_a_few_at_a_time_and_the_rest_are_answered_busy_at_once() {
    let nats = tests::NatsServer::start().await;
    let engine = crate::harness::TestEngine::start(&nats).await;
    // The node reaches Docker through a gate that holds every read of logs.
    let sockets = tempfile::tempdir().unwrap();
    let gate = tests::DockerGate::to(&tests::docker_socket(), sockets.path()).await;
    let host = gate.host();
    let docker =
        bollard::Docker::connect_with_unix(host.trim_start_matches("unix://"), 120, bollard::API_DEFAULT_VERSION)
            .unwrap();
    let data = tempfile::tempdir().unwrap();
    let name = format!("t{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
    let config = crate::harness::TestNode::config(&nats.url(), &name, &data);
    let node = crate::harness::TestNode::start_on_docker(config, &engine, data, docker).await;
    engine.publish_sample(IMAGE_1_0_0).await;
    let id = launch(&engine, &node.name).await;
    engine.wait_deployment(&id, "the deployment to run", |v| v["status"] == "running").await;

    gate.hold("GET", "/logs");
    const ASKED: usize = 7;
    let asks: Vec<_> = (0..ASKED)
        .map(|_| {
            let (http, url) = (engine.http.clone(), engine.url(&format!("/v1/deployments/{id}/logs")));
            tokio::spawn(async move {
                let response = http.get(url).send().await.unwrap();
                (response.status().as_u16(), response.json::<serde_json::Value>().await.unwrap_or_default())
            })
        })
        .collect();
    // Four are read (and held at the gate); the others are answered at once, not queued.
    eventually("the readers to be held and the rest answered", TIMEOUT, || async {
        let answered = asks.iter().filter(|a| a.is_finished()).count();
        (gate.held().len() == 4 && answered == ASKED - 4).then_some(())
    })
    .await;
    assert_eq!(gate.held().len(), 4, "no more than four read at once: {:?}", gate.held());
    gate.open();
    let mut answers = Vec::new();
    for ask in asks {
        answers.push(ask.await.unwrap());
    }
    let busy: Vec<_> = answers.iter().filter(|(status, _)| *status == 503).collect();
    assert_eq!(busy.len(), ASKED - 4, "{answers:?}");
    for (_, body) in busy {
        assert!(body["error"].as_str().unwrap().contains("busy"), "{body}");
    }
    let read: Vec<_> = answers.iter().filter(|(status, _)| *status == 200).collect();
    assert_eq!(read.len(), 4, "{answers:?}");
    assert!(read.iter().all(|(_, page)| page["containers"].as_array().is_some_and(|c| c.len() == 1)), "{read:?}");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_keeps_at_most_its_limit_of_beats_per_node() {
    let Lab { nats: _nats, engine, node } = Lab::start().await;
    // A writer flooding one node's subject (the engine's own connection may publish anywhere).
    let client = engine.engine.commands.store().client().clone();
    let subject = events::telemetry::subject("default", &node.name);
    let flood = usize::try_from(engine::liveness::TELEMETRY_MAX_PER_NODE).unwrap() + 100;
    let js = async_nats::jetstream::new(client);
    for i in 0..flood {
        let ack = js.publish(subject.clone(), format!("beat {i}").into_bytes().into()).await.unwrap();
        if i % 100 == 0 {
            ack.await.unwrap();
        }
    }
    js.publish(subject.clone(), "last".into()).await.unwrap().await.unwrap();
    let mut stream = js.get_stream(events::telemetry::STREAM).await.unwrap();
    let info = stream.info().await.unwrap();
    let config = &info.config;
    assert_eq!(config.max_messages_per_subject, engine::liveness::TELEMETRY_MAX_PER_NODE);
    assert_eq!(config.max_bytes, engine::liveness::TELEMETRY_MAX_BYTES);
    assert_eq!(config.max_age, engine::liveness::TELEMETRY_MAX_AGE);
    // Of that node's beats, only the newest are kept.
    use futures::TryStreamExt;
    let counts: Vec<(String, usize)> = stream.info_with_subjects(&subject).await.unwrap().try_collect().await.unwrap();
    let kept = counts.iter().find(|(s, _)| *s == subject).map(|(_, count)| *count as i64);
    assert_eq!(kept, Some(engine::liveness::TELEMETRY_MAX_PER_NODE), "{counts:?}");
    let newest = stream.get_last_raw_message_by_subject(&subject).await.unwrap();
    assert_eq!(&newest.payload[..], b"last");
}

/// The router appends a node's next work after the last it wrote there without reading the
/// subject again; another writer (a second engine) coming between must not break the chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_another_writer_appended_between_two_of_the_routers_is_chained_after_it() {
    use events::envelope::{chain_hash, Metadata};
    use events::work::{self, NodeWork};

    let (Lab { nats, engine, node }, id) = Lab::running().await;

    // Work for a deployment the node does not hold, signed by the engine's key and chained to
    // the subject's last event, as another engine would write it.
    let store = handler(&nats).await.store().clone();
    let subject = events::subject::node_desired("default", &node.name);
    let head = store.head(&subject).await.unwrap();
    let meta = Metadata {
        tenant: "default".to_owned(),
        actor: "engine:router".to_owned(),
        correlation_id: uuid::Uuid::now_v7(),
        causation_id: uuid::Uuid::now_v7(),
    };
    let ghost = NodeWork::Remove { deployment: "ghost".to_owned() };
    let prev_hash = head.last.as_ref().map(|e| chain_hash(&e.bytes));
    let envelope = store.seal(events::Envelope::new(
        uuid::Uuid::now_v7(),
        chrono::Utc::now(),
        work::AGGREGATE_TYPE,
        &node.name,
        &meta,
        &ghost,
        prev_hash,
    ));
    let outgoing = Outgoing { msg_id: "another-engine".to_owned(), bytes: Bytes::from(envelope.encode()), trace: None };
    store.append(&subject, head.last_sequence, vec![outgoing]).await.unwrap();

    // The router's next work for the node reaches it, after the other writer's.
    let (status, body) = engine.post(&format!("/v1/deployments/{id}/stop"), json!({})).await;
    assert_eq!(status, 202, "{body}");
    engine.wait_deployment(&id, "the deployment to stop", |v| v["nodes"][&node.name]["status"] == "stopped").await;
    let loaded = store.load(&subject).await.unwrap();
    let kinds: Vec<NodeWork> = loaded.events.iter().map(|e| e.envelope.event::<NodeWork>().unwrap()).collect();
    let at = kinds.iter().position(|w| *w == ghost).expect("the other writer's work");
    assert!(matches!(&kinds[at + 1..], [NodeWork::Stop { deployment }] if *deployment == id), "{kinds:?}");
    for pair in loaded.events.windows(2) {
        assert_eq!(pair[1].envelope.prev_hash.as_deref(), Some(chain_hash(&pair[0].bytes).as_str()), "{kinds:?}");
    }
    let (code, out) = replay(&nats, &["verify", "--engine-key", &nats.trust().facts().engine]).await;
    assert_eq!(code, 0, "{out}");
}
