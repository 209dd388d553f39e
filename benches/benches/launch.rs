//! Launch to running: from the API call to the read model saying `running`, launches one
//! after the other on one node: on the simulated runtime (no container engine in the way),
//! then, for reference, on the real Docker engine with the local registry.
//!
//! `cargo bench -p benches --bench launch` (`LAUNCHES` sets how many on the simulated runtime,
//! 200 by default; a tenth of that, at least 10, on Docker).

#![allow(clippy::print_stdout)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use benches::{Api, Figures};
use chrono::{DateTime, Utc};
use events::deployment_node::DeploymentNodeEvent;
use events::report::NodeReport;
use events::work::NodeWork;
use serde_json::json;
use tests::NatsServer;

/// One launch, timed: its deployment, when the call began, how long the call took to answer
/// (with the deployment as the read model shows it), and when the read model said `running`.
struct Timed {
    id: String,
    called: DateTime<Utc>,
    answered: Duration,
    shown: DateTime<Utc>,
}

/// Launches `sample` 1.0.0 on `node` `launches` times, one after the other, each timed until
/// the read model says `running`.
async fn launch_to_running(api: &Api, node: &str, launches: usize) -> (Figures, Vec<Timed>) {
    let mut latencies = Vec::with_capacity(launches);
    let mut timed = Vec::with_capacity(launches);
    let start = Instant::now();
    for _ in 0..launches {
        // Told of every change to a deployment's header as the projector commits it, so the
        // time is the read model's own, not that of a poll's timer (a millisecond or two).
        let mut changes = api.engine.deployments.tree().watch_prefix(b"d/default/");
        let (t, called) = (Instant::now(), Utc::now());
        let launched =
            api.post("/v1/deployments", json!({"application": "sample", "version": "1.0.0", "nodes": [node]})).await;
        let answered = t.elapsed();
        let id = launched["id"].as_str().expect("a deployment id");
        while !matches!(api.engine.deployments.status("default", id), Ok(Some((events::Status::Running, _)))) {
            tokio::time::timeout(Duration::from_secs(60), &mut changes)
                .await
                .expect("the launch runs within a minute")
                .expect("the read models are open");
        }
        latencies.push(t.elapsed());
        timed.push(Timed { id: id.to_owned(), called, answered, shown: Utc::now() });
    }
    (Figures::from(latencies, start.elapsed()), timed)
}

/// Where the time of each launch went, hop by hop, from the times the log holds (the engine's
/// and the node's clocks are this machine's): the median and p99 of each hop.
async fn hops(api: &Api, node: &str, launches: &[Timed]) {
    let store = api.engine.commands.store();
    let work = store.load(&events::subject::node_desired("default", node)).await.expect("the node's work");
    // When the node wrote each report into its outbox, by its clock (this machine's), and when
    // the server stored it.
    let mut written: HashMap<(String, events::Status), (DateTime<Utc>, DateTime<Utc>)> = HashMap::new();
    let reports = store.load_matching(&events::subject::node_reports("default", node), 1).await.expect("the reports");
    for report in reports {
        if let Ok(NodeReport::DeploymentState { deployment, status, .. }) = report.envelope.event::<NodeReport>() {
            let Ok(raw) = store.stream().direct_get(report.sequence).await else { continue };
            let stored = DateTime::<Utc>::from_timestamp_nanos(raw.time.unix_timestamp_nanos() as i64);
            written.entry((deployment, status)).or_insert((report.envelope.time, stored));
        }
    }
    let mut spans: Vec<(&str, Vec<f64>)> = [
        "API call to launched",
        "launched to work written",
        "work written to the first report written",
        "the first report written to stored",
        "the first report stored to taken in",
        "the first report taken in to running written",
        "running written to stored",
        "running stored to taken in",
        "running taken in to recorded on the pair",
        "recorded to shown by the read model",
    ]
    .into_iter()
    .map(|name| (name, Vec::new()))
    .collect();
    for launch in launches {
        let deployment = events::subject::aggregate("default", "deployment", &launch.id);
        let Some(launched) = store.load(&deployment).await.ok().and_then(|l| l.events.first().map(|e| e.envelope.time))
        else {
            continue;
        };
        let sent = work.events.iter().find(|e| {
            matches!(e.envelope.event::<NodeWork>(), Ok(NodeWork::Deploy { deployment, .. }) if deployment == launch.id)
        });
        let pair =
            events::subject::aggregate("default", "deployment_node", &events::deployment_node::id(&launch.id, node));
        let reports: Vec<(DateTime<Utc>, DateTime<Utc>, events::Status)> = store
            .load(&pair)
            .await
            .map(|l| l.events)
            .unwrap_or_default()
            .iter()
            .filter_map(|e| match e.envelope.event::<DeploymentNodeEvent>() {
                Ok(DeploymentNodeEvent::StateReported { reported_at, status, .. }) => {
                    Some((reported_at, e.envelope.time, status))
                }
                _ => None,
            })
            .collect();
        let (Some(sent), Some(first), Some(running)) =
            (sent.map(|e| e.envelope.time), reports.first(), reports.iter().find(|r| r.2 == events::Status::Running))
        else {
            continue;
        };
        let (Some(&first_written), Some(&running_written)) =
            (written.get(&(launch.id.clone(), first.2)), written.get(&(launch.id.clone(), events::Status::Running)))
        else {
            continue;
        };
        let marks = [
            launch.called,
            launched,
            sent,
            first_written.0,
            first_written.1,
            first.0,
            running_written.0,
            running_written.1,
            running.0,
            running.1,
            launch.shown,
        ];
        for (i, (_, values)) in spans.iter_mut().enumerate() {
            values.push((marks[i + 1] - marks[i]).num_microseconds().unwrap_or(0) as f64 / 1000.0);
        }
    }
    // The call's own time, answered with the deployment as the read model shows it.
    let answered = Figures::from(launches.iter().map(|l| l.answered).collect(), Duration::from_secs(1));
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("  {:<46} p50 {:>6.2} ms   p99 {:>6.2} ms", "the API call, answered", ms(answered.p50), ms(answered.p99));
    benches::record("launch_answered_p50_ms_sim", ms(answered.p50));
    benches::record("launch_answered_p99_ms_sim", ms(answered.p99));
    for (name, mut values) in spans {
        values.sort_by(f64::total_cmp);
        let at = |q: f64| values.get(((values.len() as f64 - 1.0) * q) as usize).copied().unwrap_or_default();
        println!("  {name:<46} p50 {:>6.2} ms   p99 {:>6.2} ms", at(0.5), at(0.99));
    }
}

#[tokio::main]
async fn main() {
    let launches: usize = std::env::var("LAUNCHES").ok().and_then(|s| s.parse().ok()).unwrap_or(200);
    let nats = NatsServer::start().await;
    let api = Api::start(&nats).await;
    let data = tempfile::tempdir().unwrap();
    let _node = benches::sim_node(&api, &nats.url(), "sim-1", data.path()).await;
    api.wait_node("sim-1").await;
    api.publish_sample("127.0.0.1:5000/sample/app:1.0.0").await;
    let (sim, timed) = launch_to_running(&api, "sim-1", launches).await;
    println!("launch to running, simulated runtime     {sim}");
    hops(&api, "sim-1", &timed).await;
    benches::record("launch_to_running_p50_ms_sim", sim.p50.as_secs_f64() * 1000.0);
    benches::record("launch_to_running_p99_ms_sim", sim.p99.as_secs_f64() * 1000.0);

    // The same on the real Docker engine, through the edge-node binary.
    let node = format!("launch-{}", std::process::id());
    let mut child = benches::edge_node_process(&api, &node, data.path(), &[]).await;
    api.wait_node(&node).await;
    let (docker, _) = launch_to_running(&api, &node, (launches / 10).max(10)).await;
    println!("launch to running, Docker engine         {docker}");
    benches::record("launch_to_running_p50_ms_docker", docker.p50.as_secs_f64() * 1000.0);
    benches::record("launch_to_running_p99_ms_docker", docker.p99.as_secs_f64() * 1000.0);
    child.kill().await.unwrap();
    tests::remove_node_leftovers(&tests::docker().await, edge_node::runtime::NODE_LABEL, &node).await.unwrap();
}
