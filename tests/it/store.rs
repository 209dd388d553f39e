//! The event store and the command path on a real nats-server: optimistic concurrency,
//! deduplication and the hash chain.

use bus::store::{AppendError, Loaded, Outgoing};
use engine::command::{CommandError, CommandHandler, CommandMeta};
use events::application::{Application, ApplicationCommand, ApplicationRejection};
use events::envelope::chain_hash;
use events::subject;
use tests::NatsServer;

use crate::harness::{handler, meta, stored};

fn add(version: &str) -> ApplicationCommand {
    let image = format!("127.0.0.1:5000/sample/app:{version}");
    ApplicationCommand::AddVersion {
        version: version.into(),
        image,
        settings: Default::default(),
        policy: Default::default(),
    }
}

/// Two writers on one registered application: B has read it, then A added `version`.
/// Returns A, B and what B read.
async fn race(nats: &NatsServer, version: &str) -> (CommandHandler, CommandHandler, Loaded) {
    let (a, b) = (handler(nats).await, handler(nats).await);
    let register = ApplicationCommand::Register { name: "Sample".into() };
    a.execute::<Application>("sample", &register, &meta()).await.unwrap();
    let stale = b.store().load(&subject::aggregate("default", "application", "sample")).await.unwrap();
    let won = a.execute::<Application>("sample", &add(version), &meta()).await.unwrap();
    assert_eq!(won.attempts, 1);
    (a, b, stale)
}

#[tokio::test]
async fn two_writers_racing_on_one_aggregate_one_wins_the_other_re_decides() {
    let nats = NatsServer::start().await;
    let (a, b, stale) = race(&nats, "1.0.0").await;
    let redecided = b.execute_from::<Application>(stale, "sample", &add("2.0.0"), &meta()).await.unwrap();
    assert_eq!(redecided.attempts, 2, "B's first append must conflict and be decided again");

    let app: Application = a.state("default", "sample").await.unwrap();
    assert_eq!(app.versions.keys().collect::<Vec<_>>(), ["1.0.0", "2.0.0"]);
    assert_eq!(stored(&a).await, 3);
}

#[tokio::test]
async fn a_re_decision_sees_the_winners_event_and_may_reject() {
    let nats = NatsServer::start().await;
    let (a, b, stale) = race(&nats, "1.0.0").await;
    let err = b.execute_from::<Application>(stale, "sample", &add("1.0.0"), &meta()).await.unwrap_err();
    assert!(
        matches!(err, CommandError::Rejected(ApplicationRejection::VersionExists { ref version }) if version == "1.0.0"),
        "{err}"
    );
    assert_eq!(stored(&a).await, 2);
}

/// A and B both hold the application in their caches; then B adds `version`, so A's copy is
/// behind the log.
async fn stale_cache(nats: &NatsServer, version: &str) -> (CommandHandler, CommandHandler) {
    let (a, b) = (handler(nats).await, handler(nats).await);
    let register = ApplicationCommand::Register { name: "Sample".into() };
    a.execute::<Application>("sample", &register, &meta()).await.unwrap();
    let _: Application = b.state("default", "sample").await.unwrap();
    b.execute::<Application>("sample", &add(version), &meta()).await.unwrap();
    (a, b)
}

#[tokio::test]
async fn a_cached_aggregate_behind_the_log_is_decided_again_on_its_conflict() {
    let nats = NatsServer::start().await;
    let (a, _b) = stale_cache(&nats, "1.0.0").await;
    let committed = a.execute::<Application>("sample", &add("2.0.0"), &meta()).await.unwrap();
    assert_eq!(committed.attempts, 2, "A's append from its stale copy must conflict first");
    let app: Application = a.state("default", "sample").await.unwrap();
    assert_eq!(app.versions.keys().collect::<Vec<_>>(), ["1.0.0", "2.0.0"]);
    assert_eq!(stored(&a).await, 3);
}

#[tokio::test]
async fn a_cached_aggregate_behind_the_log_does_not_refuse_what_the_log_allows() {
    let nats = NatsServer::start().await;
    let (a, _b) = stale_cache(&nats, "1.0.0").await;
    // A's copy knows no 1.0.0, so it would refuse to publish it: the log is read first.
    let publish = ApplicationCommand::Publish { version: "1.0.0".into(), digests: Default::default() };
    let committed = a.execute::<Application>("sample", &publish, &meta()).await.unwrap();
    assert_eq!(committed.events.len(), 1);
    let app: Application = a.state("default", "sample").await.unwrap();
    assert!(app.versions["1.0.0"].published_at.is_some());
}

#[tokio::test]
async fn a_command_sent_again_through_an_engine_with_a_stale_copy_is_stored_once() {
    let nats = NatsServer::start().await;
    let (a, b) = (handler(&nats).await, handler(&nats).await);
    let register = ApplicationCommand::Register { name: "Sample".into() };
    a.execute::<Application>("sample", &register, &meta()).await.unwrap();
    let _: Application = b.state("default", "sample").await.unwrap();
    let once = meta();
    let first = a.execute::<Application>("sample", &add("1.0.0"), &once).await.unwrap();
    let again = b.execute::<Application>("sample", &add("1.0.0"), &once).await.unwrap();
    assert!(again.duplicate, "B must find the command in the log");
    assert_eq!(again.events[0].sequence, first.events[0].sequence);
    assert_eq!(stored(&a).await, 2);
}

#[tokio::test]
async fn an_engine_that_never_saw_an_aggregate_decides_on_its_history() {
    let nats = NatsServer::start().await;
    let (a, b) = (handler(&nats).await, handler(&nats).await);
    let register = ApplicationCommand::Register { name: "Sample".into() };
    let once = meta();
    let first = a.execute::<Application>("sample", &register, &once).await.unwrap();

    // B takes the aggregate for a new one; its append expecting an empty subject conflicts.
    let err = b.execute::<Application>("sample", &register, &meta()).await.unwrap_err();
    assert!(matches!(err, CommandError::Rejected(ApplicationRejection::AlreadyRegistered)), "{err}");
    let c = handler(&nats).await;
    let again = c.execute::<Application>("sample", &register, &once).await.unwrap();
    assert!(again.duplicate, "the same command through a third engine is recognised");
    assert_eq!(again.events[0].sequence, first.events[0].sequence);
    assert_eq!(stored(&a).await, 1);
}

#[tokio::test]
async fn concurrent_writers_lose_nothing() {
    let nats = NatsServer::start().await;
    let a = handler(&nats).await;
    let register = ApplicationCommand::Register { name: "Sample".into() };
    a.execute::<Application>("sample", &register, &meta()).await.unwrap();
    let mut writers = tokio::task::JoinSet::new();
    for i in 0..6 {
        let writer = handler(&nats).await;
        writers.spawn(async move { writer.execute::<Application>("sample", &add(&format!("1.{i}.0")), &meta()).await });
    }
    while let Some(result) = writers.join_next().await {
        result.unwrap().unwrap();
    }
    let app: Application = a.state("default", "sample").await.unwrap();
    assert_eq!(app.versions.len(), 6);
    assert_eq!(stored(&a).await, 7);
}

#[tokio::test]
async fn a_stale_append_is_refused_and_stores_nothing() {
    let nats = NatsServer::start().await;
    let a = handler(&nats).await;
    let register = ApplicationCommand::Register { name: "Sample".into() };
    let first = a.execute::<Application>("sample", &register, &meta()).await.unwrap();
    let subject = subject::aggregate("default", "application", "sample");
    let bytes = first.events[0].bytes.clone();
    let err =
        a.store().append(&subject, 0, vec![Outgoing { msg_id: "other".into(), bytes, trace: None }]).await.unwrap_err();
    assert!(matches!(err, AppendError::Conflict { .. }), "{err}");
    assert_eq!(stored(&a).await, 1);
}

#[tokio::test]
async fn the_same_command_sent_twice_with_one_id_is_stored_once() {
    let nats = NatsServer::start().await;
    let a = handler(&nats).await;
    let command_meta = CommandMeta::new("default", "vendor");
    let register = ApplicationCommand::Register { name: "Sample".into() };
    let first = a.execute::<Application>("sample", &register, &command_meta).await.unwrap();
    let second = a.execute::<Application>("sample", &register, &command_meta).await.unwrap();
    assert!(!first.duplicate);
    assert!(second.duplicate, "the second send is recognised");
    assert_eq!(second.events[0].sequence, first.events[0].sequence);
    assert_eq!(stored(&a).await, 1);

    // Without the command id, the same command is a new one, and the aggregate refuses it.
    let err = a.execute::<Application>("sample", &register, &meta()).await.unwrap_err();
    assert!(matches!(err, CommandError::Rejected(ApplicationRejection::AlreadyRegistered)), "{err}");
}

#[tokio::test]
async fn a_message_sent_twice_with_one_msg_id_is_stored_once() {
    let nats = NatsServer::start().await;
    let a = handler(&nats).await;
    let register = ApplicationCommand::Register { name: "Sample".into() };
    let first = a.execute::<Application>("sample", &register, &meta()).await.unwrap();
    let outgoing = Outgoing { msg_id: "report-1".into(), bytes: first.events[0].bytes.clone(), trace: None };
    let one = a.store().publish("ev.default.node.n1.state", outgoing.clone()).await.unwrap();
    let two = a.store().publish("ev.default.node.n1.state", outgoing).await.unwrap();
    assert_eq!(one, two, "the duplicate is acknowledged with the first one's sequence");
    assert_eq!(stored(&a).await, 2);
}

#[tokio::test]
async fn each_event_carries_the_hash_of_the_previous_one() {
    let nats = NatsServer::start().await;
    let a = handler(&nats).await;
    let register = ApplicationCommand::Register { name: "Sample".into() };
    a.execute::<Application>("sample", &register, &meta()).await.unwrap();
    a.execute::<Application>("sample", &add("1.0.0"), &meta()).await.unwrap();
    a.execute::<Application>("sample", &add("1.1.0"), &meta()).await.unwrap();
    let loaded = a.store().load(&subject::aggregate("default", "application", "sample")).await.unwrap();
    assert_eq!(loaded.events.len(), 3);
    assert_eq!(loaded.events[0].envelope.prev_hash, None);
    for pair in loaded.events.windows(2) {
        assert_eq!(pair[1].envelope.prev_hash.as_deref(), Some(chain_hash(&pair[0].bytes).as_str()));
    }
}

#[tokio::test]
async fn a_subject_longer_than_one_read_batch_loads_whole_in_order_and_leaves_no_consumer() {
    let nats = NatsServer::start().await;
    let a = handler(&nats).await;
    let register = ApplicationCommand::Register { name: "Sample".into() };
    let first = a.execute::<Application>("sample", &register, &meta()).await.unwrap();
    // 2,500 more events on one subject, appended the way the store chains them.
    let subject = subject::aggregate("default", "application", "sample");
    let mut last = first.events[0].sequence;
    let mut previous = first.events[0].bytes.clone();
    let template = first.events[0].envelope.clone();
    for i in 0..2500 {
        let envelope =
            events::Envelope { id: uuid::Uuid::now_v7(), prev_hash: Some(chain_hash(&previous)), ..template.clone() };
        previous = envelope.encode().into();
        let outgoing = Outgoing { msg_id: format!("long-{i}"), bytes: previous.clone(), trace: None };
        last = a.store().append(&subject, last, vec![outgoing]).await.unwrap()[0];
    }
    // Other subjects interleaved must not leak in.
    a.execute::<Application>("other", &register, &meta()).await.unwrap();

    let loaded = a.store().load(&subject).await.unwrap();
    assert_eq!(loaded.events.len(), 2501);
    assert_eq!(loaded.last_sequence, last);
    assert!(loaded.events.windows(2).all(|w| w[0].sequence < w[1].sequence));
    assert!(loaded.events.iter().all(|e| e.envelope.aggregate_id == "sample"));
    let info = a.store().stream().get_info().await.unwrap();
    assert_eq!(info.state.consumer_count, 0, "a load leaves no consumer on the server");
}

#[tokio::test]
async fn the_stream_takes_a_durable_consumer_for_each_node_of_a_fleet_past_a_thousand() {
    let nats = NatsServer::start().await;
    // A stream made with the server's default limit, as an older engine made it.
    let js = async_nats::jetstream::new(nats.client().await);
    let config = async_nats::jetstream::stream::Config {
        name: subject::STREAM.into(),
        subjects: vec![subject::ALL.into()],
        ..Default::default()
    };
    js.create_stream(config).await.unwrap();
    let store = handler(&nats).await.store().clone();
    let nodes = 1_100;
    let created = futures::stream::iter((0..nodes).map(|i| {
        let stream = store.stream().clone();
        async move {
            let name = format!("node-default-edge-{i}");
            let config = async_nats::jetstream::consumer::pull::Config {
                durable_name: Some(name.clone()),
                filter_subject: subject::node_desired("default", &format!("edge-{i}")),
                ..Default::default()
            };
            stream.create_consumer(config).await.map(|_| ()).map_err(|e| format!("{name}: {e}"))
        }
    }));
    let mut created = futures::StreamExt::buffer_unordered(created, 64);
    while let Some(made) = futures::StreamExt::next(&mut created).await {
        made.unwrap();
    }
    assert_eq!(store.stream().clone().info().await.unwrap().state.consumer_count, nodes);
}

/// The stream sequences of the next `count` messages `log` hands out.
async fn sequences_of(log: &mut (impl futures::Stream<Item = bus::tail::Entry> + Unpin), count: usize) -> Vec<u64> {
    let mut sequences = Vec::new();
    while sequences.len() < count {
        let next = tokio::time::timeout(crate::harness::TIMEOUT, futures::StreamExt::next(log)).await;
        let message = next.expect("the log goes on").expect("the log never ends");
        sequences.push(message.sequence);
    }
    sequences
}

#[tokio::test]
async fn the_log_read_in_order_goes_on_through_a_server_restart_skipping_and_repeating_nothing() {
    reads_in_order_through_a_restart(false).await;
}

#[tokio::test]
async fn the_log_read_by_direct_gets_goes_on_through_a_server_restart_skipping_and_repeating_nothing() {
    reads_in_order_through_a_restart(true).await;
}

async fn reads_in_order_through_a_restart(direct: bool) {
    let mut nats = NatsServer::start().await;
    let store = handler(&nats).await.store().clone();
    let reader = if direct { store.clone().reading_by_direct_get() } else { store.clone() };
    let publish = |store: bus::store::EventStore, from: usize, to: usize| async move {
        for i in from..to {
            let subject = subject::aggregate("default", "application", &format!("app-{}", i % 7));
            store.jetstream().publish(subject, format!("event {i}").into()).await.unwrap().await.unwrap();
        }
    };
    publish(store.clone(), 0, 100).await;

    let mut log = Box::pin(bus::tail::tail(&reader, 11).await.unwrap());
    let mut read = sequences_of(&mut log, 40).await;
    // The server dies with the reader's consumer (kept in memory) and comes back empty of it.
    nats.restart().await;
    publish(store.clone(), 100, 150).await;
    read.extend(sequences_of(&mut log, 100).await);
    assert_eq!(read, (11..=150).collect::<Vec<u64>>(), "every event from 11 on, once, in order");
}
