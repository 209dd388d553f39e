//! Whatever arrives on the bus, no reader stops: what does not fit is set aside as a dead letter,
//! and the engine's view of a node is measured on the engine's clock.

use std::collections::BTreeSet;

use bus::store::Outgoing;
use bytes::Bytes;
use serde_json::json;
use tests::eventually;

use crate::harness::{handler, launch, Lab, IMAGE_1_0_0, TIMEOUT};
use crate::replay::replay;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_bytes_and_misplaced_envelopes_are_set_aside_and_every_reader_goes_on() {
    let Lab { nats, engine, node } = Lab::start().await;
    engine.publish_sample(IMAGE_1_0_0).await;
    let id = launch(&engine, &node.name).await;
    engine.wait_deployment(&id, "the deployment to run", |v| v["status"] == "running").await;

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
        let outgoing = Outgoing { msg_id: format!("poison-{i}"), bytes: bytes.clone() };
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
    let (status, history) = engine.get(&format!("/v1/deployments/{id}/history")).await;
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

    // Liveness goes on: it takes the node's next beat...
    let name = node.name.clone();
    eventually("liveness to take the next real beat", TIMEOUT, || async {
        let (status, beat) = engine.get(&format!("/v1/nodes/{name}/telemetry")).await;
        (status == 200 && beat["interval_ms"] == 300).then_some(())
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
