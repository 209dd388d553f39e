//! Margo devices at fleet scale, against the engine's Workload Fleet Manager API: how many
//! manifest polls with ETags it answers a second (each signed by its device's key, and each
//! answered 304), and the time from a launch onto every device to every device's next poll
//! seeing it. The devices are the reference device of the tests (`tests::margo`), polling
//! from this process over loopback TLS: their signing shares the machine's cores with the
//! engine's verifying.
//!
//! `cargo bench -p benches --bench margo` (`MARGO_DEVICES` sets how many devices, 10,000 by
//! default; `MARGO_SECONDS` how long the polls are measured, 10 by default; `MARGO_CLIENTS`
//! how many polls are in flight at once, 64 by default).

#![allow(clippy::print_stdout)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use benches::{Api, Figures};
use events::node::{Node, NodeCommand};
use futures::{StreamExt, TryStreamExt};
use serde_json::json;
use tests::margo::{MargoDevice, Polled};
use tests::NatsServer;
use tokio::sync::Mutex;

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[tokio::main]
async fn main() {
    let (size, seconds, clients) =
        (setting("MARGO_DEVICES", 10_000), setting("MARGO_SECONDS", 10), setting("MARGO_CLIENTS", 64));
    let nats = NatsServer::start().await;
    let api = Api::start_with(&nats.url(), nats.trust(), 1, |config| {
        config.margo = Some("127.0.0.1:0".parse().expect("a loopback address"));
        config.margo_poll_interval = Duration::from_secs(60);
    })
    .await;
    let base = format!("https://{}", api.engine.margo_addr.expect("the Margo API listens"));
    let http = engine::api_client(Some(&api.ca)).expect("an HTTPS client");

    // The fleet: each device admitted by its certificate, onboarded, polled once.
    let started = Instant::now();
    let devices: Vec<MargoDevice> =
        (0..size).map(|i| MargoDevice::with_client(&format!("margo-{i}"), &base, http.clone())).collect();
    let meta = engine::command::CommandMeta::new("default", "bench");
    futures::stream::iter(&devices)
        .map(|device| {
            let command = NodeCommand::AdmitMargo {
                fingerprint: device.fingerprint(),
                labels: [("fleet".to_owned(), "margo".to_owned())].into(),
            };
            let (commands, meta) = (&api.engine.commands, &meta);
            async move { commands.execute::<Node>(&device.name, &command, meta).await.map(drop) }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<()>>()
        .await
        .expect("every device is admitted");
    let last = api.engine.commands.store().last_sequence().await.expect("the log's end");
    engine::projector::wait_for(api.engine.nodes.tree(), last, Duration::from_secs(600))
        .await
        .expect("the read models are read");
    let devices: Vec<Arc<Mutex<MargoDevice>>> = futures::stream::iter(devices)
        .map(|mut device| async move {
            assert_eq!(device.onboard().await, 201, "{} onboards", device.name);
            assert!(matches!(device.poll().await.expect("a manifest"), Polled::Changed { .. }));
            Arc::new(Mutex::new(device))
        })
        .buffer_unordered(32)
        .collect()
        .await;
    println!("{size} Margo devices admitted, onboarded and polled once in {:.1} s", started.elapsed().as_secs_f64());

    // Polls with ETags: nothing changed, every answer a 304.
    let next = AtomicUsize::new(0);
    let deadline = Instant::now() + Duration::from_secs(seconds as u64);
    let start = Instant::now();
    let latencies: Vec<Vec<Duration>> = futures::stream::iter(0..clients)
        .map(|_| async {
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let device = &devices[next.fetch_add(1, Ordering::Relaxed) % devices.len()];
                let mut device = device.lock().await;
                let t = Instant::now();
                assert_eq!(device.poll().await.expect("a manifest"), Polled::NotModified);
                latencies.push(t.elapsed());
            }
            latencies
        })
        .buffer_unordered(clients)
        .collect()
        .await;
    let polls = Figures::from(latencies.into_iter().flatten().collect(), start.elapsed());
    println!("manifest polls with ETags (304), {size} devices   {polls}");
    benches::record("margo_manifest_polls_per_s", polls.per_second);
    benches::record("margo_manifest_poll_p99_ms", polls.p99.as_secs_f64() * 1000.0);

    // A launch onto every device, and each device polling in turn until it sees it.
    api.publish_sample("127.0.0.1:5000/sample/app:1.0.0").await;
    let launch = json!({"application": "sample", "version": "1.0.0", "selector": {"fleet": "margo"}});
    let launched_at = Instant::now();
    api.post("/v1/deployments", launch).await;
    let seen = AtomicUsize::new(0);
    let next = AtomicUsize::new(0);
    let waits: Vec<Vec<Duration>> = futures::stream::iter(0..clients)
        .map(|_| async {
            let mut waits = Vec::new();
            while seen.load(Ordering::Relaxed) < devices.len() {
                let device = &devices[next.fetch_add(1, Ordering::Relaxed) % devices.len()];
                let mut device = device.lock().await;
                if !device.held.is_empty() {
                    continue;
                }
                if let Polled::Changed { changed, .. } = device.poll().await.expect("a manifest") {
                    if !changed.is_empty() {
                        waits.push(launched_at.elapsed());
                        seen.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            waits
        })
        .buffer_unordered(clients)
        .collect()
        .await;
    let waits = Figures::from(waits.into_iter().flatten().collect(), launched_at.elapsed());
    let all = launched_at.elapsed();
    println!(
        "launch to a device's poll seeing it        p50 {:>8.3} s   p99 {:>8.3} s",
        waits.p50.as_secs_f64(),
        waits.p99.as_secs_f64()
    );
    println!("launch to every device's poll seeing it    {:>8.3} s", all.as_secs_f64());
    benches::record("margo_launch_to_all_devices_s", all.as_secs_f64());
}
