//! The auditors' tool on a history made by the real command path, the engine and a node.

use async_nats::jetstream;
use bus::store::{EventStore, StoreConfig, StoredEvent};
use serde_json::{json, Value};
use tests::NatsServer;

use crate::harness::{Lab, TestEngine, IMAGE_1_0_0};

/// Runs the `replay` binary against `nats`; its exit code and what it printed.
/// `replay` with `args`, on `nats` with an auditor's credential (kept in the file returned).
fn replay_command(nats: &NatsServer, args: &[&str]) -> (tokio::process::Command, tempfile::NamedTempFile) {
    let creds = tempfile::NamedTempFile::new().unwrap();
    let (_, text) = nats.trust().mint_with_key(&engine::trust::Role::Auditor { id: "tests".into() });
    std::fs::write(creds.path(), text).unwrap();
    let mut command = tokio::process::Command::new(tests::binary("replay"));
    command
        .args(args)
        .args(["--nats", &nats.url()])
        .arg("--creds")
        .arg(creds.path())
        .arg("--ca")
        .arg(nats.trust().ca());
    (command, creds)
}

/// Runs `replay` on `nats` with an auditor's credential.
pub(crate) async fn replay(nats: &NatsServer, args: &[&str]) -> (i32, String) {
    let (mut command, _creds) = replay_command(nats, args);
    let output = command.output().await.unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.stderr.is_empty() || output.status.code() != Some(2), "{}", String::from_utf8_lossy(&output.stderr));
    (output.status.code().unwrap_or(-1), text)
}

/// Every event of the log, with its subject.
async fn history(nats: &NatsServer) -> Vec<(String, StoredEvent)> {
    let store = EventStore::open(nats.client().await, &StoreConfig::default()).await.unwrap();
    let mut all = Vec::new();
    replay::each_event(&store, 1, |subject, event| {
        all.push((subject.to_owned(), event));
        Ok(())
    })
    .await
    .unwrap();
    all
}

/// A new server holding `events` as its log, byte for byte, in that order.
async fn copy_of(events: &[(String, bytes::Bytes)]) -> NatsServer {
    let copy = NatsServer::start().await;
    let store = EventStore::open(copy.client().await, &StoreConfig::default()).await.unwrap();
    let js: &jetstream::Context = store.jetstream();
    for (subject, bytes) in events {
        js.publish(subject.clone(), bytes.clone()).await.unwrap().await.unwrap();
    }
    copy
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_alone_gives_the_audit_trail_and_the_read_models_and_names_what_was_tampered_with() {
    let (Lab { nats, engine, node }, id) = Lab::running().await;
    let engine_key = nats.trust().facts().engine.clone();

    // The trail of the deployment, as JSON lines: the operator launched, the node answered.
    let (code, text) = replay(&nats, &["audit", "--deployment", &id, "--format", "json"]).await;
    assert_eq!(code, 0, "{text}");
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(
        (lines[0]["type"].as_str(), lines[0]["actor"].as_str()),
        (Some("deployment.launched"), Some(tests::ADMIN_SUBJECT))
    );
    assert_eq!(lines[0]["payload"]["launched"]["application"], "sample");
    let by_node = format!("node:{}", node.name);
    assert!(lines.iter().any(|l| l["actor"] == by_node.as_str() && l["type"] == "deployment_node.state_reported"));
    let (_, text) = replay(&nats, &["audit", "--actor", &by_node, "--type", "report.", "--format", "json"]).await;
    let reports: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(!reports.is_empty() && reports.iter().all(|r| r["actor"] == by_node.as_str()), "{text}");
    let (_, text) = replay(&nats, &["audit", "--node", &node.name]).await;
    assert!(text.contains("work.deploy") && text.contains("report.deployment_state"), "{text}");
    let (_, none) = replay(&nats, &["audit", "--since", "2999-01-01T00:00:00Z"]).await;
    assert_eq!(none, "");

    // The log as it is: every chain whole.
    let (code, text) = replay(&nats, &["verify", "--engine-key", &engine_key]).await;
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("0 broken chain(s)"), "{text}");

    // Copies of the log, each with one thing done to the chain of what the node said.
    let all = history(&nats).await;
    let positions = |subject: String| -> Vec<usize> {
        all.iter().enumerate().filter(|(_, (s, _))| *s == subject).map(|(i, _)| i).collect()
    };
    let launch_at = positions(events::subject::aggregate("default", "deployment", &id))[0];
    let pair = events::deployment_node::id(&id, &node.name);
    let on_chain = positions(events::subject::aggregate("default", "deployment_node", &pair));
    assert!(on_chain.len() >= 4, "{} events on the deployment's node", on_chain.len());
    let raw = |events: &[(String, StoredEvent)]| -> Vec<(String, bytes::Bytes)> {
        events.iter().map(|(s, e)| (s.clone(), e.bytes.clone())).collect()
    };
    let id_of = |i: usize| all[i].1.envelope.id.to_string();

    let mut altered = raw(&all);
    let mut changed = all[on_chain[1]].1.envelope.clone();
    changed.actor = "mallory".into();
    altered[on_chain[1]].1 = changed.encode().into();
    let (code, text) = replay(&copy_of(&altered).await, &["verify", "--engine-key", &engine_key]).await;
    assert_eq!(code, 1, "{text}");
    assert!(text.contains(&id_of(on_chain[2])) && text.contains("was altered, or an event between"), "{text}");

    let mut removed = raw(&all);
    removed.remove(on_chain[2]);
    let (code, text) = replay(&copy_of(&removed).await, &["verify", "--engine-key", &engine_key]).await;
    assert_eq!(code, 1, "{text}");
    assert!(text.contains(&id_of(on_chain[3])) && text.contains("removed"), "{text}");

    let mut swapped = raw(&all);
    swapped.swap(on_chain[1], on_chain[2]);
    let (code, text) = replay(&copy_of(&swapped).await, &["verify", "--engine-key", &engine_key]).await;
    assert_eq!(code, 1, "{text}");
    assert!(text.contains(&id_of(on_chain[2])) && text.contains("reordered"), "{text}");

    // Point in time: just after the launch, then now, then before anything.
    let launched = &all[launch_at].1;
    let at = |args: Vec<String>| {
        let nats = &nats;
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let (code, text) = replay(nats, &args).await;
            assert_eq!(code, 0, "{text}");
            serde_json::from_str::<Value>(&text).unwrap()
        }
    };
    let then = at(vec!["at".into(), "--seq".into(), launched.sequence.to_string()]).await;
    assert_eq!(then["deployments"][0]["status"], "pending_deploy", "{then}");
    assert_eq!(then["applications"][0]["versions"]["1.0.0"], true);
    let now = at(vec!["at".into(), "--seq".into(), all.last().unwrap().1.sequence.to_string()]).await;
    assert_eq!(now["deployments"][0]["status"], "running", "{now}");
    assert_eq!(now["nodes"][0]["id"], node.name.as_str());
    let before = launched.envelope.time - chrono::Duration::milliseconds(1);
    let earlier = at(vec!["at".into(), "--time".into(), before.to_rfc3339()]).await;
    assert_eq!(earlier["deployments"], serde_json::json!([]), "{earlier}");

    // Rebuilt from the log by the engine's projection code, the read models are the live ones.
    let api = engine.url("");
    let ca = nats.trust().ca().display().to_string();
    let (code, text) =
        replay(&nats, &["check", "--engine-api", &api, "--engine-token", tests::ADMIN_TOKEN, "--engine-ca", &ca]).await;
    assert_eq!(
        (code, text.trim_end().lines().last()),
        (0, Some(format!("0 difference(s) between the log and the engine at {api}").as_str())),
        "{text}"
    );
    let out = tempfile::tempdir().unwrap();
    let (code, text) = replay(&nats, &["rebuild", "--out", &out.path().join("models").display().to_string()]).await;
    assert!(code == 0 && text.contains("events folded into"), "{text}");
    // A log without the launch does not make the deployment the engine shows.
    let mut without = raw(&all);
    without.remove(launch_at);
    let (code, text) = replay(
        &copy_of(&without).await,
        &["check", "--engine-api", &api, "--engine-token", tests::ADMIN_TOKEN, "--engine-ca", &ca],
    )
    .await;
    assert_eq!(code, 1, "{text}");
    assert!(text.contains(&format!("deployment {id}: live, but not in the log")), "{text}");
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_prints_the_live_stream_as_json_lines() {
    use tokio::io::AsyncBufReadExt;
    let nats = NatsServer::start().await;
    let engine = crate::harness::TestEngine::start(&nats).await;
    let (mut command, _creds) = replay_command(&nats, &["tail", "--from", "1"]);
    let mut tail = command.stdout(std::process::Stdio::piped()).kill_on_drop(true).spawn().unwrap();
    let mut lines = tokio::io::BufReader::new(tail.stdout.take().unwrap()).lines();
    engine.publish_sample(IMAGE_1_0_0).await;
    // Read line by line until the publication comes, within the tests' deadline.
    let seen = tokio::time::timeout(crate::harness::TIMEOUT, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let event: Value = serde_json::from_str(&line).unwrap();
            if event["type"] == "application.version_published" {
                return event;
            }
        }
        panic!("the tail ended")
    })
    .await
    .expect("the tail to print the publication");
    assert_eq!(
        (seen["aggregate_id"].as_str(), seen["payload"]["version_published"]["version"].as_str()),
        (Some("sample"), Some("1.0.0"))
    );
    tail.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_stored_at_an_older_version_is_lifted_when_read_by_the_engine_and_by_replay() {
    use events::envelope::{chain_hash, Metadata};
    let nats = NatsServer::start().await;
    let engine_key = nats.trust().facts().engine.clone();
    let store = EventStore::open(nats.client().await, &StoreConfig::default()).await.unwrap();
    // An application as a store of version 1 of `version_added` holds it: the image whole.
    let fixture = tests::root().join("events/tests/fixtures/application.version_added@1.hex");
    let v1 = hex::decode(std::fs::read_to_string(fixture).unwrap().trim()).unwrap();
    let meta = Metadata {
        tenant: "default".into(),
        actor: "vendor".into(),
        correlation_id: uuid::Uuid::now_v7(),
        causation_id: uuid::Uuid::now_v7(),
    };
    let registered = events::application::ApplicationEvent::Registered { name: "Legacy".into() };
    let first = events::Envelope::new(
        uuid::Uuid::now_v7(),
        chrono::Utc::now(),
        "application",
        "legacy",
        &meta,
        &registered,
        None,
    );
    let mut second = events::Envelope::new(
        uuid::Uuid::now_v7(),
        chrono::Utc::now(),
        "application",
        "legacy",
        &meta,
        &registered,
        Some(chain_hash(&first.encode())),
    );
    (second.event_type, second.schema_version, second.payload) = ("application.version_added".into(), 1, v1);
    let subject = events::subject::aggregate("default", "application", "legacy");
    for envelope in [&first, &second] {
        store.jetstream().publish(subject.clone(), envelope.encode().into()).await.unwrap().await.unwrap();
    }

    let engine = crate::harness::TestEngine::start(&nats).await;
    let (status, app) = engine.get("/v1/applications/legacy").await;
    assert_eq!(status, 200, "{app}");
    assert_eq!(app["versions"][0]["image"], "127.0.0.1:5000/sample/app:1.0.0", "{app}");
    let (code, text) = replay(&nats, &["at", "--seq", "2"]).await;
    assert_eq!(code, 0, "{text}");
    let state: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(state["applications"][0]["versions"]["1.0.0"], false, "{state}");
    // Written before events were signed: verify names both, and finds the chain whole.
    let (code, text) = replay(&nats, &["verify", "--engine-key", &engine_key]).await;
    assert_eq!(code, 1, "{text}");
    assert_eq!(text.lines().filter(|l| l.ends_with("it is not signed")).count(), 2, "{text}");
    assert!(text.contains("0 broken chain(s), 2 unsigned or forged event(s), 0 set aside"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tail_whose_reader_stops_reading_ends_quietly() {
    use tokio::io::AsyncBufReadExt;
    let nats = NatsServer::start().await;
    let engine = crate::harness::TestEngine::start(&nats).await;
    engine.publish_sample(IMAGE_1_0_0).await;
    let (mut command, _creds) = replay_command(&nats, &["tail", "--from", "1"]);
    let mut tail = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Read one line, as `replay tail | head -n 1` does, and stop reading.
    let mut lines = tokio::io::BufReader::new(tail.stdout.take().unwrap()).lines();
    let first = lines.next_line().await.unwrap().expect("a first line");
    serde_json::from_str::<Value>(&first).unwrap();
    drop(lines);
    // The next line it writes finds no reader: it ends, without an error. (What the log held
    // may all be in the pipe already: new events make it write again.)
    for id in ["after-1", "after-2"] {
        let (status, body) = engine.post("/v1/applications", json!({"id": id, "name": id})).await;
        assert_eq!(status, 201, "{body}");
    }
    let (status, stderr) = tokio::time::timeout(crate::harness::TIMEOUT, async {
        let mut stderr = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut tail.stderr.take().unwrap(), &mut stderr).await.unwrap();
        (tail.wait().await.unwrap(), stderr)
    })
    .await
    .expect("the tail to end once nobody reads it");
    assert!(status.success(), "{status}: {stderr}");
    assert!(!stderr.contains("error"), "{stderr}");
}

/// Runs `replay` on `nats` with the engine's own credential: its exit code, stdout and stderr.
async fn replay_as_engine(nats: &NatsServer, args: &[&str]) -> (i32, String, String) {
    let output = tokio::process::Command::new(tests::binary("replay"))
        .args(args)
        .args(["--nats", &nats.url()])
        .arg("--creds")
        .arg(nats.trust().dir().join("engine.creds"))
        .arg("--ca")
        .arg(nats.trust().ca())
        .output()
        .await
        .unwrap();
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (output.status.code().unwrap_or(-1), text(&output.stdout), text(&output.stderr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_put_back_into_an_empty_stream_verifies_and_an_engine_on_it_shows_the_same() {
    use std::os::unix::fs::PermissionsExt;
    let Lab { nats, engine, node } = Lab::start().await;
    engine.publish_sample(IMAGE_1_0_0).await;
    // A secret, sealed under the tenant's key: the backup keeps the key, or it never opens again.
    let body = json!({"application": "sample", "version": "1.0.0", "nodes": [&node.name], "secrets": {"DB_PASSWORD": "s3cret"}});
    let (status, launched) = engine.post("/v1/deployments", body).await;
    assert_eq!(status, 201, "{launched}");
    let id = launched["id"].as_str().unwrap().to_owned();
    let running = engine.wait_deployment(&id, "the deployment to run", |v| v["status"] == "running").await;
    let stored = history(&nats).await.len();

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("events.backup");
    let path = file.display().to_string();
    let (code, said, errors) = replay_as_engine(&nats, &["backup", "--out", &path, "--keys"]).await;
    assert_eq!(code, 0, "{said}{errors}");
    assert!(said.contains(&format!("backed up {stored} messages and 1 tenants' keys")), "{said}");
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600, "the keys are secrets");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(!text.contains("s3cret"), "the secret is sealed in the backup as in the log");

    // A backup cut short, or altered, is refused whole: nothing is written, so the whole one
    // goes in after it.
    let target = NatsServer::beside(&nats).await;
    let lines: Vec<&str> = text.lines().collect();
    let cut = dir.path().join("cut.backup");
    std::fs::write(&cut, lines[..lines.len() - 1].join("\n")).unwrap();
    let (code, _, errors) = replay_as_engine(&target, &["restore", "--from", &cut.display().to_string()]).await;
    assert!(code == 2 && errors.contains("no `end` line: it was cut short"), "{errors}");
    let mut reordered = lines.clone();
    reordered.swap(2, 3);
    let swapped = dir.path().join("swapped.backup");
    std::fs::write(&swapped, reordered.join("\n")).unwrap();
    let (code, _, errors) = replay_as_engine(&target, &["restore", "--from", &swapped.display().to_string()]).await;
    assert!(code == 2 && errors.contains("line 4: sequence 2 does not follow 3"), "{errors}");

    let (code, said, errors) = replay_as_engine(&target, &["restore", "--from", &path]).await;
    assert_eq!(code, 0, "{said}{errors}");
    assert!(said.contains(&format!("restored {stored} messages of EVENTS and 1 tenants' keys")), "{said}");
    let (code, _, errors) = replay_as_engine(&target, &["restore", "--from", &path]).await;
    assert!(code == 2 && errors.contains("holds messages"), "a second restore is refused: {errors}");

    // Every chain and signature holds on the copy, and an engine on it folds what the first
    // one showed; the tenant's key came along.
    let engine_key = nats.trust().facts().engine.clone();
    let (code, text) = replay(&target, &["verify", "--engine-key", &engine_key]).await;
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains(&format!("{stored} messages on")) && text.contains(" 0 broken chain(s), 0 unsigned"),
        "{text}"
    );
    let restored = TestEngine::start(&target).await;
    restored.wait_deployment(&id, "the restored engine to show the deployment", |v| v == &running).await;
    let ca = nats.trust().ca().display().to_string();
    let api = restored.url("");
    let (code, text) =
        replay(&target, &["check", "--engine-api", &api, "--engine-token", tests::ADMIN_TOKEN, "--engine-ca", &ca])
            .await;
    assert_eq!(code, 0, "{text}");
    let mut keys = Vec::new();
    for server in [&nats, &target] {
        let js = async_nats::jetstream::new(server.client().await);
        keys.push(engine::secrets::TenantKeys::open(&js, 1).await.unwrap().export().await.unwrap());
    }
    assert!(keys[0].len() == 1 && keys[0] == keys[1], "the tenant's key came along");
    node.stop().await;
}
