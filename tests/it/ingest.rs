//! The report ingestor on a real nats-server: what a node says becomes events of the
//! deployment, attributed to the node whose subject it arrived on; a report that cannot be
//! applied, is not signed by the node's enrolled key, or claims another node, is refused
//! without holding up the ones after it.

use std::time::Duration;

use bus::store::Outgoing;
use bytes::Bytes;
use events::deployment::{Deployment, DeploymentCommand, Launch};
use events::envelope::Metadata;
use events::report::NodeReport;
use events::{Envelope, Status};
use tests::{eventually, NatsServer};

use crate::harness::{handler, meta, seed, TestEngine};

/// A report of `claimed_node`'s, signed by `key` (unsigned without one).
fn report(claimed_node: &str, deployment: &str, status: Status, key: Option<&nkeys::KeyPair>) -> Outgoing {
    let id = uuid::Uuid::now_v7();
    let meta = Metadata {
        tenant: "default".into(),
        actor: format!("node:{claimed_node}"),
        correlation_id: id,
        causation_id: id,
    };
    let report = NodeReport::DeploymentState {
        deployment: deployment.into(),
        status,
        error: None,
        containers: Default::default(),
        version: Default::default(),
    };
    let mut envelope =
        Envelope::new(id, chrono::Utc::now(), events::report::AGGREGATE_TYPE, claimed_node, &meta, &report, None);
    if let Some(key) = key {
        envelope = envelope.signed(key);
    }
    Outgoing { msg_id: id.to_string(), bytes: Bytes::from(envelope.encode()), trace: None }
}

#[tokio::test]
async fn reports_that_cannot_be_applied_are_refused_and_the_rest_go_through() {
    let nats = NatsServer::start().await;
    let engine = TestEngine::start(&nats).await;
    let commands = handler(&nats).await;
    seed(&commands, &["edge-1", "edge-2"]).await;
    let application = commands.state("default", "sample").await.unwrap();
    let launch = Launch::new("sample", application, "1.0.0", &["edge-1", "edge-2"]);
    let id = uuid::Uuid::now_v7().to_string();
    commands.execute::<Deployment>(&id, &DeploymentCommand::Launch(launch), &meta()).await.unwrap();

    let (one, two) = (engine.enroll("edge-1").await, engine.enroll("edge-2").await);
    let (one, two) = (one.key().as_ref(), two.key().as_ref());

    let store = commands.store();
    let subject = events::subject::node_reports("default", "edge-1");
    let garbage =
        Outgoing { msg_id: "garbage".into(), bytes: Bytes::from_static(b"\xc1 not messagepack"), trace: None };
    let garbage = store.publish(&subject, garbage).await.unwrap();
    store.publish(&subject, report("edge-1", "no-such-deployment", Status::Running, Some(one))).await.unwrap();
    store.publish(&subject, report("edge-1", "bad.id", Status::Running, Some(one))).await.unwrap();
    // Arrives on edge-1's subject but claims to be edge-2: misplaced, set aside.
    let misplaced = store.publish(&subject, report("edge-2", &id, Status::Failed, Some(two))).await.unwrap();
    // Unsigned, or signed by another node's key: refused.
    store.publish(&subject, report("edge-1", &id, Status::Failed, None)).await.unwrap();
    store.publish(&subject, report("edge-1", &id, Status::Failed, Some(two))).await.unwrap();
    store.publish(&subject, report("edge-1", &id, Status::Running, Some(one))).await.unwrap();

    let view = engine
        .wait_deployment(&id, "edge-1's report to be applied", |v| v["nodes"]["edge-1"]["status"] == "running")
        .await;
    assert_eq!(view["nodes"]["edge-2"]["status"], "pending_deploy", "edge-2 said nothing: {view}");
    let pair = |node: &str| events::subject::aggregate("default", "deployment_node", &format!("{id}.{node}"));
    let loaded = store.load(&pair("edge-1")).await.unwrap();
    assert_eq!(loaded.events.last().unwrap().envelope.actor, "node:edge-1");
    let failed = loaded.events.iter().any(|e| {
        matches!(
            e.envelope.event::<events::deployment_node::DeploymentNodeEvent>(),
            Ok(events::deployment_node::DeploymentNodeEvent::StateReported { status: Status::Failed, .. })
        )
    });
    assert!(!failed, "no refused report reached the deployment");
    assert!(store.load(&pair("edge-2")).await.unwrap().events.is_empty(), "edge-2 said nothing");

    let consumer =
        store.stream().get_consumer::<async_nats::jetstream::consumer::pull::Config>("ingest").await.unwrap();
    eventually("the ingestor to have acked every report", Duration::from_secs(30), || {
        let mut consumer = consumer.clone();
        async move {
            let info = consumer.info().await.ok()?;
            (info.num_ack_pending == 0 && info.num_pending == 0).then_some(())
        }
    })
    .await;
    // What could not be a report on that subject is a dead letter, with its reason.
    let letters = bus::dead::letters(store.jetstream()).await.unwrap();
    let reason = |sequence: u64| {
        letters.iter().find(|l| l.sequence == Some(sequence) && l.subject == subject).map(|l| l.reason.clone())
    };
    assert!(reason(garbage).is_some_and(|r| r.contains("not an event envelope")), "{letters:?}");
    assert!(reason(misplaced).is_some_and(|r| r.contains("misplaced")), "{letters:?}");
}

#[tokio::test]
async fn a_selector_launch_resolved_without_a_node_still_gets_it_from_the_membership() {
    use events::node::{Node, NodeCommand};
    let nats = NatsServer::start().await;
    let engine = TestEngine::start(&nats).await;
    let commands = handler(&nats).await;
    seed(&commands, &[]).await;
    let labels: events::node::Labels = [("site".to_owned(), "lab".to_owned())].into();
    commands.execute::<Node>("edge-7", &NodeCommand::Register { labels: labels.clone() }, &meta()).await.unwrap();
    // As a launch that read the nodes read model before it knew edge-7 would write it.
    let application = commands.state("default", "sample").await.unwrap();
    let mut launch = Launch::new("sample", application, "1.0.0", &[]);
    launch.selector = Some(labels);
    let id = uuid::Uuid::now_v7().to_string();
    commands.execute::<Deployment>(&id, &DeploymentCommand::Launch(launch), &meta()).await.unwrap();

    let view = engine.wait_deployment(&id, "edge-7 to be added", |v| v["nodes"]["edge-7"].is_object()).await;
    assert_eq!(view["nodes"]["edge-7"]["reason"], "node `edge-7` matches site=lab", "{view}");
}
