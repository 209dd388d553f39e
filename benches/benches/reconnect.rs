//! Reconnect: a node cut off while the engine sends it 1,000 pieces of work (ten deployments,
//! each stopped and started again fifty times, ending stopped) catches up once its link heals.
//! Timed from the heal until the read model shows what the node really runs: every deployment
//! stopped there; and from the first delivery on the node's new connection (the reconnection
//! itself waits up to a second, the node's pause between attempts). Simulated runtime, so the
//! figure is the engine's and the node's alone.
//!
//! `cargo bench -p benches --bench reconnect` (`RECONNECT_RUNS` repeats it in one run).

#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use benches::Api;
use events::deployment::Desired;
use events::Status;
use serde_json::json;
use tests::{Link, NatsServer};

const DEPLOYMENTS: usize = 10;
/// Stops and starts of each deployment while the node is cut off: 10 x 100 = 1,000 pieces of
/// work, the last of each a stop.
const REQUESTS_EACH: usize = 100;

/// True when the read model shows every one of `ids` as `desired` and `status` on the node.
fn shows(api: &Api, ids: &[String], desired: Desired, status: Status) -> bool {
    ids.iter().all(|id| {
        api.engine.deployments.get("default", id).ok().flatten().is_some_and(|view| {
            view.desired == desired && view.nodes.values().all(|n| n.status == status) && !view.nodes.is_empty()
        })
    })
}

async fn until_shown(api: &Api, ids: &[String], desired: Desired, status: Status) {
    benches::until("the read model to show the node's truth", Duration::from_millis(1), || {
        shows(api, ids, desired, status)
    })
    .await;
}

#[tokio::main]
async fn main() {
    let nats = NatsServer::start().await;
    let api = Api::start(&nats).await;
    let link = Link::to(&format!("127.0.0.1:{}", nats.port())).await;
    let data = tempfile::tempdir().unwrap();
    let _node = benches::sim_node(&api, &link.url(), "sim-1", data.path()).await;
    api.wait_node("sim-1").await;
    api.publish_sample(&tests::sim_image("1.0.0")).await;
    let mut ids = Vec::new();
    for _ in 0..DEPLOYMENTS {
        let launched =
            api.post("/v1/deployments", json!({"application": "sample", "version": "1.0.0", "nodes": ["sim-1"]})).await;
        ids.push(launched["id"].as_str().expect("a deployment id").to_owned());
    }
    until_shown(&api, &ids, Desired::Running, Status::Running).await;

    let runs: usize = std::env::var("RECONNECT_RUNS").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    for _ in 0..runs {
        link.cut();
        for _ in 0..REQUESTS_EACH / 2 {
            for id in &ids {
                api.post(&format!("/v1/deployments/{id}/stop"), json!({})).await;
                api.post(&format!("/v1/deployments/{id}/start"), json!({})).await;
            }
        }
        // The last request of each is a stop: what the node must end up doing.
        for id in &ids {
            api.post(&format!("/v1/deployments/{id}/stop"), json!({})).await;
        }
        let sent = work_waiting(&api).await;
        let stream = api.engine.commands.store().stream().clone();
        let delivered = deliveries(&stream).await;
        let healed = Instant::now();
        link.heal();
        let reconnected = tokio::spawn(first_delivery_after(stream, delivered));
        until_shown(&api, &ids, Desired::Stopped, Status::Stopped).await;
        let caught_up = healed.elapsed();
        let reconnected = reconnected.await.expect("the watch of the node's consumer");
        let catching_up = caught_up.saturating_sub(reconnected.duration_since(healed));
        println!(
            "reconnect: {sent} pieces of work missed, shown caught up {:.3} s after the heal, {:.3} s after the \
             first delivery on the new connection",
            caught_up.as_secs_f64(),
            catching_up.as_secs_f64()
        );
        benches::record("reconnect_1000_s", caught_up.as_secs_f64());
        benches::record("catch_up_1000_s", catching_up.as_secs_f64());
        // Back to running for the next run.
        for id in &ids {
            api.post(&format!("/v1/deployments/{id}/start"), json!({})).await;
        }
        until_shown(&api, &ids, Desired::Running, Status::Running).await;
    }
}

/// How many deliveries the node's consumer has made.
async fn deliveries(stream: &async_nats::jetstream::stream::Stream) -> u64 {
    let name = events::subject::node_consumer("default", "sim-1");
    stream.clone().consumer_info(&name).await.expect("the node's consumer").delivered.consumer_sequence
}

/// When the node's consumer first delivers after `delivered` deliveries (counted at the heal):
/// the node is connected and pulling again. Looked at every 10 ms, lest the looking slow the
/// catching up.
async fn first_delivery_after(stream: async_nats::jetstream::stream::Stream, delivered: u64) -> Instant {
    loop {
        if deliveries(&stream).await > delivered {
            return Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The work waiting on the node's consumer, once the router has written every piece of it.
async fn work_waiting(api: &Api) -> u64 {
    let stream = api.engine.commands.store().stream().clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let routed =
            stream.clone().consumer_info("router").await.is_ok_and(|r| r.num_pending == 0 && r.num_ack_pending == 0);
        if routed {
            let name = events::subject::node_consumer("default", "sim-1");
            let info = stream.clone().consumer_info(name).await.expect("the node's consumer");
            return info.num_pending + info.num_ack_pending as u64;
        }
        assert!(Instant::now() < deadline, "the router did not write the work within a minute");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
