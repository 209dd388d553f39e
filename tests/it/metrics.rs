//! The engine's figures, scraped as Prometheus scrapes them.

use tests::eventually;

use crate::harness::{launch, Lab, TestEngine, IMAGE_1_0_0, TIMEOUT};

/// The value of the sample named `name` (with its labels), if the text has it.
fn figure(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

async fn scrape(engine: &TestEngine) -> String {
    let response = engine.http.get(engine.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let kind = response.headers()[reqwest::header::CONTENT_TYPE].to_str().unwrap().to_owned();
    assert!(kind.starts_with("text/plain"), "{kind}");
    response.text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engines_figures_move_after_a_launch_and_only_a_token_may_read_them() {
    let Lab { nats: _nats, engine, node } = Lab::start().await;
    engine.publish_sample(IMAGE_1_0_0).await;
    let launched = r#"engine_commands_total{aggregate="deployment",outcome="applied"}"#;
    let reported = r#"engine_commands_total{aggregate="deployment_node",outcome="applied"}"#;
    let before = scrape(&engine).await;
    let appends = figure(&before, "engine_append_seconds_count").expect("the append histogram");
    assert_eq!(figure(&before, r#"engine_deployments{status="running"}"#), None, "{before}");

    let id = launch(&engine, &node.name).await;
    engine.wait_deployment(&id, "the deployment to run", |v| v["status"] == "running").await;
    let after = eventually("the figures to say the deployment runs", TIMEOUT, || async {
        let text = scrape(&engine).await;
        (figure(&text, r#"engine_deployments{status="running"}"#) == Some(1.0)).then_some(text)
    })
    .await;
    assert!(figure(&after, launched) > figure(&before, launched).or(Some(0.0)), "{after}");
    assert!(figure(&after, reported) >= Some(1.0), "the node's reports went through the command path: {after}");
    assert!(figure(&after, "engine_append_seconds_count") > Some(appends), "{after}");
    assert_eq!(figure(&after, r#"engine_nodes{state="online"}"#), Some(1.0), "{after}");
    assert!(figure(&after, "engine_projector_lag").is_some(), "{after}");
    assert!(figure(&after, r#"engine_consumer_pending{consumer="ingest"}"#).is_some(), "{after}");
    assert!(figure(&after, "engine_dead_letters_total").is_some(), "{after}");

    let refused = engine.http.get(engine.url("/metrics")).bearer_auth("not-a-token").send().await.unwrap();
    assert_eq!(refused.status(), 401);
}
