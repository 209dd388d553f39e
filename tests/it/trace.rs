//! One trace id from the API call to the node and back: the `traceparent` a caller sends is
//! on every message its launch causes, the node's work and its reports included.

use serde_json::{json, Value};
use tests::{eventually, NatsServer};

use crate::faults::NodeProcess;
use crate::harness::{TestEngine, IMAGE_1_0_0, TIMEOUT};

/// The trace id of the last message on `subject`, from its `traceparent` header.
async fn traced(engine: &TestEngine, subject: &str) -> Option<uuid::Uuid> {
    let stream = engine.engine.commands.store().stream().clone();
    let message = stream.direct_get_last_for_subject(subject).await.ok()?;
    let header = message.headers.get(bus::trace::HEADER)?.as_str().to_owned();
    bus::trace::trace_id(&header)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_calls_traceparent_follows_its_launch_to_the_node_and_back_and_the_node_logs_json() {
    let nats = NatsServer::start().await;
    let engine = TestEngine::start(&nats).await;
    engine.publish_sample(IMAGE_1_0_0).await;
    let node = NodeProcess::start_logging(&nats.url(), &engine, None, true).await;

    let trace = uuid::Uuid::now_v7();
    let traceparent = format!("00-{}-00f067aa0ba902b7-01", trace.simple());
    let body = json!({"application": "sample", "version": "1.0.0", "nodes": [node.name]});
    let response = engine
        .http
        .post(engine.url("/v1/deployments"))
        .header("traceparent", &traceparent)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);
    assert_eq!(response.headers()["traceparent"], traceparent.as_str(), "the answer says the trace");
    let launched: Value = response.json().await.unwrap();
    let id = launched["id"].as_str().unwrap().to_owned();
    engine.wait_deployment(&id, "the deployment to run", |v| v["status"] == "running").await;

    let launch = events::subject::aggregate("default", "deployment", &id);
    assert_eq!(traced(&engine, &launch).await, Some(trace), "the launch");
    let work = events::subject::node_desired("default", &node.name);
    assert_eq!(traced(&engine, &work).await, Some(trace), "the node's work");
    let reports = events::subject::node_reports("default", &node.name);
    eventually("the node's last report to carry the trace", TIMEOUT, || async {
        (traced(&engine, &reports).await == Some(trace)).then_some(())
    })
    .await;
    let pair = format!("{}.{}", id, node.name);
    let ingested = events::subject::aggregate("default", events::deployment_node::TYPE, &pair);
    assert_eq!(traced(&engine, &ingested).await, Some(trace), "what the engine made of the report");

    // The node logged JSON objects, one a line, with the span of each step.
    let log = node.log();
    let lines: Vec<Value> =
        log.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
    assert!(lines.iter().all(|l| l["level"].is_string() && l["fields"].is_object()), "{log}");
    let pull = lines.iter().any(|l| l["fields"]["message"] == "step done" && l["span"]["kind"] == "pull");
    assert!(pull, "a pull step's line, in its span: {log}");
}
