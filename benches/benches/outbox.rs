//! Outbox: a node back from a long outage with 100,000 reports waiting in its outbox. Timed
//! from the moment its publisher starts until JetStream has acknowledged every one (and the
//! outbox is empty): reports are sent many at a time (`edge_node::driver::publish_outbox`),
//! never one acknowledgement at a time. On the real nats-server, over TLS with the node's own
//! credential, every report signed and numbered; the engine is stopped once it has made the
//! streams and enrolled the node, so the figure is the node's and the server's alone.
//!
//! `cargo bench -p benches --bench outbox` (`OUTBOX_REPORTS` sets how many).

#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use benches::Api;
use chrono::Utc;
use events::envelope::Metadata;
use events::report::NodeReport;
use events::Status;
use tests::NatsServer;

#[tokio::main]
async fn main() {
    let reports: usize = std::env::var("OUTBOX_REPORTS").ok().and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let nats = NatsServer::start().await;
    let api = Api::start(&nats).await;
    let credentials = api.enroll("sim-1").await;
    let ca = api.ca.clone();
    drop(api);

    let data = tempfile::tempdir().expect("a temporary directory");
    let config = edge_node::NodeConfig {
        nats_url: nats.url(),
        node: "sim-1".to_owned(),
        data_dir: data.path().join("node"),
        credentials: Some(credentials.clone()),
        ca: Some(ca),
        ..edge_node::NodeConfig::default()
    };
    let db = sled::open(data.path().join("outbox")).expect("the outbox's database");
    let outbox = edge_node::outbox::Outbox::open(&db, "", Some(credentials.key().clone())).expect("the outbox");
    let filled = Instant::now();
    for i in 0..reports {
        let id = uuid::Uuid::now_v7();
        let meta =
            Metadata { tenant: "default".into(), actor: "node:sim-1".into(), correlation_id: id, causation_id: id };
        let status = [Status::Downloading, Status::Deploying, Status::Starting, Status::Running][i % 4];
        let report = NodeReport::DeploymentState {
            deployment: format!("d{}", i % 100),
            version: "1.0.0".into(),
            status,
            error: None,
            containers: Default::default(),
        };
        outbox.push("sim-1", &meta, &report, Utc::now()).expect("a report kept");
    }
    let filling = filled.elapsed();

    let (client, _links) = edge_node::driver::connect(&config).await.expect("the node connects");
    let js = config.connection().jetstream(client);
    let started = Instant::now();
    let publisher = tokio::spawn(edge_node::driver::publish_outbox(
        js,
        outbox.clone(),
        Arc::new(tokio::sync::Notify::new()),
        Arc::new(tokio::sync::Notify::new()),
        config.clone(),
    ));
    benches::until("the outbox to be empty", Duration::from_millis(10), || outbox.is_empty()).await;
    let drained = started.elapsed();
    publisher.abort();

    // The same reports sent one acknowledgement at a time, for comparison: 5,000 of them.
    let one_by_one = reports.min(5_000);
    let pending = outbox_again(&outbox, one_by_one);
    let subject = events::subject::node_reports("default", "sim-1");
    let (client, _links) = edge_node::driver::connect(&config).await.expect("the node connects");
    let js = config.connection().jetstream(client);
    let serial = Instant::now();
    for report in pending {
        let message = async_nats::jetstream::message::PublishMessage::build()
            .payload(report.bytes)
            .message_id(format!("again-{}", report.msg_id));
        js.send_publish(subject.clone(), message).await.expect("sent").await.expect("acknowledged");
    }
    let serial = serial.elapsed();
    println!(
        "outbox: {reports} reports kept in {:.2} s ({:.0}/s, each flushed)",
        filling.as_secs_f64(),
        rate(reports, filling)
    );
    println!(
        "outbox_100k_drain_s: {:.2} ({:.0} reports/s acknowledged)",
        drained.as_secs_f64(),
        rate(reports, drained)
    );
    println!("one acknowledgement at a time: {:.0} reports/s", rate(one_by_one, serial));
}

/// `count` reports kept again in `outbox`, as the publisher would read them.
fn outbox_again(outbox: &edge_node::outbox::Outbox, count: usize) -> Vec<edge_node::outbox::Pending> {
    for _ in 0..count {
        let id = uuid::Uuid::now_v7();
        let meta =
            Metadata { tenant: "default".into(), actor: "node:sim-1".into(), correlation_id: id, causation_id: id };
        let report = NodeReport::AppliedLocally { deployment: "d1".into() };
        outbox.push("sim-1", &meta, &report, Utc::now()).expect("a report kept");
    }
    outbox.oldest(count).expect("the outbox reads")
}

fn rate(count: usize, took: Duration) -> f64 {
    count as f64 / took.as_secs_f64().max(1e-9)
}
