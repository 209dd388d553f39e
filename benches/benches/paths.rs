//! The command path and the projector beside raw JetStream, on a fresh local nats-server.
//!
//! `cargo bench -p benches` (set `BENCH_SCALE=10` for ten times the work).

#![allow(clippy::print_stdout)]

use std::future::IntoFuture;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use benches::Figures;
use bus::store::{EventStore, StoreConfig};
use engine::command::{CommandHandler, CommandMeta};
use engine::projector::{self, ProjectorConfig};
use events::application::{Application, ApplicationCommand};
use events::deployment::{Deployment, DeploymentCommand, Launch};
use events::node::{Labels, Node, NodeCommand};
use events::Status;
use futures::StreamExt;
use tests::NatsServer;

fn meta() -> CommandMeta {
    CommandMeta::new("bench", "bench")
}

/// A representative event body: a launch envelope as the store writes it.
fn sample_payload() -> bytes::Bytes {
    let meta = events::envelope::Metadata {
        tenant: "bench".into(),
        actor: "bench".into(),
        correlation_id: uuid::Uuid::now_v7(),
        causation_id: uuid::Uuid::now_v7(),
    };
    let event = benches::launched();
    let envelope =
        events::Envelope::new(uuid::Uuid::now_v7(), chrono::Utc::now(), "deployment", "d", &meta, &event, None);
    envelope.encode().into()
}

async fn raw_awaited(js: &jetstream::Context, n: usize) -> Figures {
    let payload = sample_payload();
    let mut latencies = Vec::with_capacity(n);
    let start = Instant::now();
    for i in 0..n {
        let t = Instant::now();
        let message =
            jetstream::message::PublishMessage::build().payload(payload.clone()).message_id(format!("raw-{i}"));
        js.send_publish(format!("ev.raw.deployment.r{i}"), message).await.unwrap().await.unwrap();
        latencies.push(t.elapsed());
    }
    Figures::from(latencies, start.elapsed())
}

async fn raw_pipelined(js: &jetstream::Context, n: usize) -> Figures {
    let payload = sample_payload();
    let start = Instant::now();
    let mut acks = futures::stream::FuturesUnordered::new();
    for i in 0..n {
        let message =
            jetstream::message::PublishMessage::build().payload(payload.clone()).message_id(format!("pipe-{i}"));
        acks.push(js.send_publish(format!("ev.pipe.deployment.p{i}"), message).await.unwrap().into_future());
        while acks.len() >= 1024 {
            acks.next().await.unwrap().unwrap();
        }
    }
    while let Some(ack) = acks.next().await {
        ack.unwrap();
    }
    Figures::rate(n, start.elapsed())
}

/// The raw limit of the command path: `rounds` conditional appends to each of `subjects`
/// subjects, pipelined (1,024 in flight), each expecting the subject's last sequence.
async fn raw_conditional(js: &jetstream::Context, subjects: usize, rounds: usize) -> Figures {
    let payload = sample_payload();
    let names: Vec<String> = (0..subjects).map(|i| format!("ev.cond.deployment.c{i}")).collect();
    let mut last = vec![0u64; subjects];
    let start = Instant::now();
    for round in 0..rounds {
        let mut acks = futures::stream::FuturesUnordered::new();
        for (i, subject) in names.iter().enumerate() {
            let message = jetstream::message::PublishMessage::build()
                .payload(payload.clone())
                .message_id(format!("cond-{round}-{i}"))
                .expected_last_subject_sequence(last[i]);
            let ack = js.send_publish(subject.clone(), message).await.unwrap().into_future();
            acks.push(async move { (i, ack.await) });
            while acks.len() >= 1024 {
                let (i, ack) = acks.next().await.unwrap();
                last[i] = ack.unwrap().sequence;
            }
        }
        while let Some((i, ack)) = acks.next().await {
            last[i] = ack.unwrap().sequence;
        }
    }
    Figures::rate(subjects * rounds, start.elapsed())
}

/// Commands creating new aggregates, one after the other: load (no consumer), decide, append.
async fn command_new(handler: &CommandHandler, n: usize) -> Figures {
    let mut latencies = Vec::with_capacity(n);
    let start = Instant::now();
    for i in 0..n {
        let t = Instant::now();
        let register = ApplicationCommand::Register { name: format!("app {i}") };
        handler.execute::<Application>(&format!("app{i}"), &register, &meta()).await.unwrap();
        latencies.push(t.elapsed());
    }
    Figures::from(latencies, start.elapsed())
}

/// Commands on aggregates holding one event: the load is one direct get.
async fn command_existing(handler: &CommandHandler, n: usize) -> Figures {
    let mut latencies = Vec::with_capacity(n);
    let start = Instant::now();
    for i in 0..n {
        let t = Instant::now();
        let image = format!("127.0.0.1:5000/a:{i}");
        let add = ApplicationCommand::AddVersion {
            version: "1.0.0".into(),
            image,
            settings: Default::default(),
            policy: Default::default(),
        };
        handler.execute::<Application>(&format!("app{i}"), &add, &meta()).await.unwrap();
        latencies.push(t.elapsed());
    }
    Figures::from(latencies, start.elapsed())
}

/// Launches and status reports, `n` deployments of 5 events each, `writers` at a time.
async fn deployment_history(handler: &CommandHandler, n: usize, writers: usize) -> Figures {
    let app = ApplicationCommand::Register { name: "Sample".into() };
    handler.execute::<Application>("sample", &app, &meta()).await.unwrap();
    let add = ApplicationCommand::AddVersion {
        version: "1.0.0".into(),
        image: "127.0.0.1:5000/sample/app:1.0.0".into(),
        settings: Default::default(),
        policy: Default::default(),
    };
    handler.execute::<Application>("sample", &add, &meta()).await.unwrap();
    let publish = ApplicationCommand::Publish { version: "1.0.0".into(), digests: Default::default() };
    handler.execute::<Application>("sample", &publish, &meta()).await.unwrap();
    handler.execute::<Node>("edge-1", &NodeCommand::Register { labels: Labels::new() }, &meta()).await.unwrap();
    let application: Application = handler.state("bench", "sample").await.unwrap();
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let (handler, application) = (handler.clone(), application.clone());
        tasks.spawn(async move {
            let id = uuid::Uuid::now_v7().to_string();
            let launch = Launch::new("sample", application, "1.0.0", &["edge-1"]);
            handler.execute::<Deployment>(&id, &DeploymentCommand::Launch(launch), &meta()).await.unwrap();
            let pair = events::deployment_node::id(&id, "edge-1");
            let seen = handler.read::<Deployment, _>("bench", &id, |d| d.seen("edge-1")).await.unwrap();
            for status in [Status::Received, Status::Downloading, Status::Starting, Status::Running] {
                let report = events::deployment_node::DeploymentNodeCommand::Report {
                    node: "edge-1".into(),
                    seen: seen.clone(),
                    status,
                    error: None,
                    reported_at: chrono::Utc::now(),
                    containers: Default::default(),
                    version: Default::default(),
                    order: None,
                };
                handler.execute::<events::deployment_node::DeploymentNode>(&pair, &report, &meta()).await.unwrap();
            }
        });
        if tasks.len() >= writers {
            tasks.join_next().await.unwrap().unwrap();
        }
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    Figures::rate(n * 5, start.elapsed())
}

async fn projection(store: &EventStore, events: usize) -> Figures {
    let dir = tempfile::tempdir().unwrap();
    let db = sled::open(dir.path()).unwrap();
    let models = engine::read_model::open(&db).unwrap();
    let last = store.last_sequence().await.unwrap();
    let start = Instant::now();
    let run = tokio::spawn(projector::run(store.clone(), models.clone(), ProjectorConfig::default()));
    assert!(projector::wait_for(&models, last, Duration::from_secs(600)).await.unwrap());
    let wall = start.elapsed();
    run.abort();
    Figures::rate(events, wall)
}

#[tokio::main]
async fn main() {
    let scale: usize = std::env::var("BENCH_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    let nats = NatsServer::start().await;
    let client = nats.client().await;
    let engine_key = nats.trust().engine().key().clone();
    let store = EventStore::open(client.clone(), &StoreConfig::default()).await.unwrap().signed_by(engine_key.clone());
    let js = store.jetstream().clone();
    let handler = CommandHandler::new(store.clone());
    trust_costs(&nats, scale);

    println!("raw JetStream, awaiting each ack         {}", raw_awaited(&js, 2000 * scale).await);
    println!("raw JetStream, pipelined (1024 in flight) {}", raw_pipelined(&js, 20000 * scale).await);
    println!("command path, new aggregate             {}", command_new(&handler, 1000 * scale).await);
    println!("command path, aggregate with 1 event    {}", command_existing(&handler, 1000 * scale).await);

    // A fresh server for the deployment history, so the projector folds only that.
    drop(handler);
    let nats = NatsServer::start().await;
    let engine_key = nats.trust().engine().key().clone();
    let store = EventStore::open(nats.client().await, &StoreConfig::default()).await.unwrap().signed_by(engine_key);
    let handler = CommandHandler::new(store.clone());
    let deployments = 2000 * scale;
    let raw = raw_conditional(store.jetstream(), deployments, 5).await;
    println!("raw JetStream, conditional, pipelined    {raw}   ({deployments} subjects, 5 rounds)");
    let commands = deployment_history(&handler, deployments, WRITERS).await;
    println!("command path, {WRITERS} writers, 5 events/deployment {commands}");
    println!("  ratio to the raw conditional appends   {:.2}", commands.per_second / raw.per_second);
    benches::record("command_path_per_s", commands.per_second);
    benches::record("raw_conditional_per_s", raw.per_second);
    benches::record("command_path_ratio", commands.per_second / raw.per_second);
    println!("projector into sled (deployments)       {}", projection(&store, deployments * 5).await);
    // What the signatures cost the command path: the same work, unsigned, on a fresh server.
    let bare = NatsServer::start().await;
    let unsigned = EventStore::open(bare.client().await, &StoreConfig::default()).await.unwrap();
    let figures = deployment_history(&CommandHandler::new(unsigned), deployments, WRITERS).await;
    println!("  the same, events unsigned (comparison) {figures}");
    benches::record("command_path_unsigned_per_s", figures.per_second);

    // What each durability mode costs on the command path (ARCHITECTURE.md, Durability).
    println!("durability modes, command path with {WRITERS} writers:");
    benches::record("durability_default_per_s", commands.per_second);
    let synced = NatsServer::start_always_synced().await;
    let engine_key = synced.trust().engine().key().clone();
    let store = EventStore::open(synced.client().await, &StoreConfig::default()).await.unwrap().signed_by(engine_key);
    let figures = deployment_history(&CommandHandler::new(store), deployments / 4, WRITERS).await;
    println!("  one server, sync_interval: always     {figures}");
    benches::record("durability_sync_always_per_s", figures.per_second);
    let cluster = tests::NatsCluster::start(3).await;
    let client = cluster.servers[0].client().await;
    let store = EventStore::open(client, &StoreConfig { replicas: 3, ..Default::default() })
        .await
        .unwrap()
        .signed_by(cluster.trust().engine().key().clone());
    let figures = deployment_history(&CommandHandler::new(store), deployments / 4, WRITERS).await;
    println!("  three servers, 3 replicas             {figures}");
    benches::record("durability_3_replicas_per_s", figures.per_second);
}

/// What trust costs: signing and verifying an event, and minting a node's credential.
fn trust_costs(nats: &NatsServer, scale: usize) {
    let n = 5000 * scale;
    let key = nats.trust().engine().key().clone();
    let envelope = events::Envelope::decode(&sample_payload()).unwrap();
    let start = Instant::now();
    let signed: Vec<events::Envelope> = (0..n).map(|_| envelope.clone().signed(key.as_ref())).collect();
    let sign = start.elapsed().as_secs_f64() * 1e6 / n as f64;
    let start = Instant::now();
    assert!(signed.iter().all(|e| e.verify().is_ok()));
    let verify = start.elapsed().as_secs_f64() * 1e6 / n as f64;
    println!("an event signed in {sign:.1} µs, verified in {verify:.1} µs (Ed25519, {n} events)");
    benches::record("sign_event_us", sign);
    benches::record("verify_event_us", verify);
    let minted = 2000 * scale;
    let start = Instant::now();
    for i in 0..minted {
        let role = engine::trust::Role::Node { tenant: "bench".into(), node: format!("n{i}") };
        std::hint::black_box(nats.trust().mint_with_key(&role));
    }
    let per_second = minted as f64 / start.elapsed().as_secs_f64();
    println!("node credentials minted (key pair and JWT) {per_second:.0}/s over {minted}");
    benches::record("credentials_per_s", per_second);
}

/// Commands in flight at once on the command path: one per aggregate.
const WRITERS: usize = 256;
