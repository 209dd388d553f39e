//! The auditors' tool over a long history: a million events (100,000 deployments, each
//! launched and reported on nine times), written pipelined, chained per subject, then read
//! back by `replay`: the rebuild of the deployments read model, and the hash-chain walk.
//!
//! `cargo bench -p benches --bench replay` (set `REPLAY_EVENTS` for another size).

#![allow(clippy::print_stdout)]

use std::future::IntoFuture;
use std::time::Instant;

use async_nats::jetstream::{self, consumer};
use bus::store::{EventStore, StoreConfig};
use engine::projector::{self, ProjectorConfig};
use events::deployment_node::DeploymentNodeEvent;
use events::envelope::{chain_hash, Metadata};
use events::{Envelope, Status};
use futures::StreamExt;
use tests::NatsServer;

/// Peak resident memory of this process since the last reset, in MB.
fn peak_rss_mb() -> f64 {
    benches::memory_mb(std::process::id(), "VmHWM")
}

/// Forgets the peak so far, so that the next reading is of what follows.
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn current_rss_mb() -> f64 {
    benches::memory_mb(std::process::id(), "VmRSS")
}

async fn write_history(js: &jetstream::Context, events: usize) {
    let per_deployment = 10;
    let meta = Metadata {
        tenant: "bench".into(),
        actor: "bench".into(),
        correlation_id: uuid::Uuid::now_v7(),
        causation_id: uuid::Uuid::now_v7(),
    };
    let mut acks = futures::stream::FuturesUnordered::new();
    for d in 0..events / per_deployment {
        let id = format!("d{d:07}");
        let pair = events::deployment_node::id(&id, "edge-1");
        let (mut prev, mut prev_pair): (Option<String>, Option<String>) = (None, None);
        for i in 0..per_deployment {
            let now = chrono::Utc::now();
            // The launch on the deployment, then what the node said on its pair's subject.
            let (subject, envelope, chain) = match i {
                0 => {
                    let event = benches::launched();
                    let envelope =
                        Envelope::new(uuid::Uuid::now_v7(), now, "deployment", &id, &meta, &event, prev.take());
                    (format!("ev.bench.deployment.{id}"), envelope, &mut prev)
                }
                _ => {
                    let event = DeploymentNodeEvent::StateReported {
                        version: "1.0.0".into(),
                        status: [
                            Status::Received,
                            Status::Downloading,
                            Status::Deploying,
                            Status::Starting,
                            Status::Running,
                        ][i % 5],
                        error: None,
                        containers: Default::default(),
                        reported_at: now,
                        requests: 1,
                        order: None,
                    };
                    let envelope = Envelope::new(
                        uuid::Uuid::now_v7(),
                        now,
                        "deployment_node",
                        &pair,
                        &meta,
                        &event,
                        prev_pair.take(),
                    );
                    (format!("ev.bench.deployment_node.{pair}"), envelope, &mut prev_pair)
                }
            };
            let bytes = envelope.encode();
            *chain = Some(chain_hash(&bytes));
            let message = jetstream::message::PublishMessage::build().payload(bytes.into());
            acks.push(js.send_publish(subject, message).await.unwrap().into_future());
            while acks.len() >= 1024 {
                acks.next().await.unwrap().unwrap();
            }
        }
    }
    while let Some(ack) = acks.next().await {
        ack.unwrap();
    }
}

/// Events per second the log's own reader (`bus::tail`: an ordered consumer kept by hand, as
/// the projector and `replay` read) hands out the whole stream at, nothing decoded.
async fn raw_tail(store: &EventStore) -> f64 {
    let last = store.last_sequence().await.unwrap();
    let start = Instant::now();
    let messages = bus::tail::tail(store, 1).await.unwrap();
    let mut messages = std::pin::pin!(messages);
    let mut read = 0u64;
    while let Some(entry) = messages.next().await {
        read += 1;
        if entry.sequence >= last {
            break;
        }
    }
    read as f64 / start.elapsed().as_secs_f64()
}

/// Events per second the client's ordered pull consumer reads the whole stream at, doing
/// nothing else.
async fn raw_read(store: &EventStore) -> f64 {
    let last = store.last_sequence().await.unwrap();
    let config = consumer::pull::OrderedConfig { deliver_policy: consumer::DeliverPolicy::All, ..Default::default() };
    let consumer = store.stream().create_consumer(config).await.unwrap();
    let start = Instant::now();
    let mut messages = consumer.messages().await.unwrap();
    let mut read = 0u64;
    while let Some(message) = messages.next().await {
        read += 1;
        if message.unwrap().info().unwrap().stream_sequence >= last {
            break;
        }
    }
    read as f64 / start.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    let events: usize = std::env::var("REPLAY_EVENTS").ok().and_then(|s| s.parse().ok()).unwrap_or(1_000_000);
    let nats = NatsServer::start().await;
    let store = EventStore::open(nats.client().await, &StoreConfig::default()).await.unwrap();
    let written = Instant::now();
    write_history(store.jetstream(), events).await;
    println!("history of {events} events written in {:.1?}", written.elapsed());

    // The raw limit: the faster of two readers doing nothing, the client's ordered consumer and
    // the log's own, once the server has read the stream from disk (a first read, not counted:
    // every pass after it finds the server's caches as warm).
    raw_tail(&store).await;
    let ordered = raw_read(&store).await;
    println!("raw JetStream, ordered consumer read     {ordered:>9.0} events/s");
    let tailed = raw_tail(&store).await;
    println!("raw JetStream, read by bus::tail         {tailed:>9.0} events/s");
    let raw_rate = ordered.max(tailed);
    let start = Instant::now();
    let decoded = replay::each_event(&store, 1, |_, _| Ok(())).await.unwrap();
    let decoded_rate = decoded as f64 / start.elapsed().as_secs_f64();
    println!("read and decoded by replay               {decoded_rate:>9.0} events/s");

    // The read models' own fold, into memory: what the fold costs alone.
    reset_peak();
    let before = current_rss_mb();
    let start = Instant::now();
    let mut models = events::projection::MemoryStore::default();
    let folded = replay::each_event(&store, 1, |_, event| {
        let fact = events::projection::Fact::of(&event.envelope)?;
        events::projection::fold(&mut models, &event.envelope, &fact)?;
        Ok(())
    })
    .await
    .unwrap();
    let memory_rate = folded as f64 / start.elapsed().as_secs_f64();
    println!(
        "rebuild, read models in memory           {memory_rate:>9.0} events/s over {folded}   peak RSS {:.0} MB (from {before:.0} MB)",
        peak_rss_mb()
    );
    benches::record("rebuild_memory_ratio", memory_rate / raw_rate);
    benches::record("rebuild_memory_peak_rss_mb", peak_rss_mb());
    drop(models);

    // The rebuild of the deployments read model into sled, by the engine's projector.
    let dir = tempfile::tempdir().unwrap();
    // As `replay rebuild` opens it: written out once, at the end.
    let db = sled::Config::new().path(dir.path()).flush_every_ms(None).open().unwrap();
    let models = engine::read_model::open(&db).unwrap();
    let until = store.last_sequence().await.unwrap();
    reset_peak();
    let before = current_rss_mb();
    let start = Instant::now();
    let folded = projector::rebuild(&store, &models, &ProjectorConfig { batch_size: 1000 }, until).await.unwrap();
    db.flush_async().await.unwrap();
    let rate = folded as f64 / start.elapsed().as_secs_f64();
    println!(
        "replay rebuild, read models into sled     {rate:>9.0} events/s over {folded}   peak RSS {:.0} MB (from {before:.0} MB)",
        peak_rss_mb()
    );
    benches::record("rebuild_sled_ratio", rate / raw_rate);
    benches::record("rebuild_sled_peak_rss_mb", peak_rss_mb());
    benches::record("raw_ordered_read_per_s", raw_rate);

    // The hash-chain walk: every subject's chain kept in memory until the end.
    reset_peak();
    let before = current_rss_mb();
    let start = Instant::now();
    let mut chains = replay::verify::Chains::default();
    let walked = replay::each_event(&store, 1, |subject, event| {
        chains.add(
            subject,
            event.sequence,
            event.envelope.id.to_string(),
            &event.bytes,
            event.envelope.prev_hash.clone(),
        );
        Ok(())
    })
    .await
    .unwrap();
    let breaks = chains.breaks();
    let rate = walked as f64 / start.elapsed().as_secs_f64();
    println!(
        "replay verify                            {rate:>9.0} events/s over {walked}, {} broken   peak RSS {:.0} MB (from {before:.0} MB)",
        breaks.len(),
        peak_rss_mb()
    );
}
