//! The engine's figures, scraped as Prometheus scrapes them.

use std::time::Duration;

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

/// Scrapes a node's figures with `token`: the status and the text.
async fn scrape_node(addr: std::net::SocketAddr, token: &str) -> (u16, String) {
    let response = reqwest::Client::new()
        .get(format!("http://{addr}/metrics"))
        .bearer_auth(token)
        .send()
        .await
        .expect("the node's metrics answer");
    (response.status().as_u16(), response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_says_its_pull_as_it_goes_and_its_figures_count_steps_pulls_outbox_and_reconnects_for_its_token_alone() {
    use crate::harness::TestNode;
    // An image no other test runs, and none left on this Docker engine: the launch downloads it.
    const METERED: &str = "127.0.0.1:5000/sample/metered:1.0.0";
    let mut nats = tests::NatsServer::start().await;
    let engine = TestEngine::start(&nats).await;
    engine.publish_sample(METERED).await;
    // Gone from this Docker engine, by tag and by digest (which a node's pull leaves).
    let (_, app) = engine.get("/v1/applications/sample").await;
    let digest = app["versions"][0]["digests"][METERED].as_str().expect("the version's digest").to_owned();
    let docker = tests::docker().await;
    for reference in [METERED.to_owned(), format!("127.0.0.1:5000/sample/metered@{digest}")] {
        // What an earlier run left of it goes first: an image a container uses stays.
        let filters = [("ancestor".to_owned(), vec![reference.clone()])].into_iter().collect();
        let options = bollard::query_parameters::ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        };
        for container in docker.list_containers(Some(options)).await.unwrap_or_default() {
            let remove = bollard::query_parameters::RemoveContainerOptions { force: true, ..Default::default() };
            let _ = docker.remove_container(&container.id.unwrap_or_default(), Some(remove)).await;
        }
        if let Ok(image) = docker.inspect_image(&reference).await {
            let remove = bollard::query_parameters::RemoveImageOptions { force: true, ..Default::default() };
            let _ = docker.remove_image(&image.id.unwrap_or_default(), Some(remove), None).await;
        }
    }
    let data = tempfile::tempdir().unwrap();
    let name = format!("m{}", tests::free_port());
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", tests::free_port()).parse().unwrap();
    let token = "a-scrapers-token-of-some-length";
    let listen = edge_node::metrics::MetricsListen { addr, token: token.to_owned() };
    let config = edge_node::NodeConfig { metrics: Some(listen), ..TestNode::config(&nats.url(), &name, &data) };
    // The node reaches Docker through a gate that will bring its pull's progress back slowly.
    let sockets = tempfile::tempdir().unwrap();
    let gate = tests::DockerGate::to(&tests::docker_socket(), sockets.path()).await;
    let gated = sockets.path().join("docker-gate.sock");
    let through_gate =
        bollard::Docker::connect_with_unix(gated.to_str().unwrap(), 120, bollard::API_DEFAULT_VERSION).unwrap();
    let node = TestNode::start_on_docker(config, &engine, data, through_gate).await;

    let before = eventually("the node's figures", TIMEOUT, || async {
        let (status, text) = scrape_node(addr, token).await;
        (status == 200).then_some(text)
    })
    .await;
    assert_eq!(figure(&before, "edge_node_pulled_bytes"), Some(0.0), "{before}");
    assert_eq!(figure(&before, "edge_node_pull_seconds_count"), Some(0.0), "{before}");
    assert!(figure(&before, "edge_node_outbox_depth").is_some(), "{before}");

    gate.slow_answers(64, Duration::from_millis(50));
    let id = launch(&engine, &node.name).await;
    // Followed from the command line, which says how far the node's download has come.
    let watch = tokio::process::Command::new(tests::binary("engine"))
        .env("ENGINE_API", format!("https://{}", engine.engine.api_addr))
        .env("ENGINE_CA", engine.trust().ca())
        .env("ENGINE_TOKEN", tests::ADMIN_TOKEN)
        .args(["watch", &id, "--timeout", "120s"])
        .output();
    let watched = tokio::spawn(watch);
    // The node's heartbeats say its pull while it is under way: the bytes come of all of them
    // (how many steps Docker reports between none and all is its own).
    let telemetry = format!("/v1/nodes/{}/telemetry", node.name);
    let pull = eventually("a heartbeat to show the pull under way", TIMEOUT, || async {
        let (_, beat) = engine.get(&telemetry).await;
        let pull = beat["pulls"].as_array()?.first()?.clone();
        let (bytes, total) = (pull["bytes"].as_u64()?, pull["total"].as_u64()?);
        (bytes > 0 && bytes <= total).then_some(pull)
    })
    .await;
    assert!(pull["image"].as_str().unwrap().starts_with(METERED), "{pull}");
    engine.wait_deployment(&id, "the deployment to run", |v| v["status"] == "running").await;
    gate.slow_answers(64 * 1024, Duration::ZERO);
    let watched = watched.await.unwrap().unwrap();
    let said = String::from_utf8_lossy(&watched.stdout);
    assert!(watched.status.success(), "{said}");
    assert!(said.lines().any(|l| l.starts_with(&format!("{}: pulled ", node.name))), "{said}");
    eventually("the heartbeats to show no pull once it runs", TIMEOUT, || async {
        let (_, beat) = engine.get(&telemetry).await;
        (beat["interval_ms"].is_u64() && beat.get("pulls").is_none()).then_some(())
    })
    .await;
    let (_, after) = scrape_node(addr, token).await;
    for step in ["pull", "create", "start"] {
        let done = format!(r#"edge_node_steps_total{{kind="{step}",outcome="done"}}"#);
        assert_eq!(figure(&after, &done), Some(1.0), "{step}: {after}");
    }
    assert_eq!(figure(&after, "edge_node_pull_seconds_count"), Some(1.0), "{after}");
    assert!(figure(&after, "edge_node_pulled_bytes") > Some(100_000.0), "busybox came down: {after}");
    let depth = eventually("the outbox to empty", TIMEOUT, || async {
        let (_, text) = scrape_node(addr, token).await;
        (figure(&text, "edge_node_outbox_depth") == Some(0.0)).then_some(())
    });
    depth.await;

    // The link comes back once: counted.
    assert_eq!(figure(&after, "edge_node_reconnects_total"), Some(0.0), "{after}");
    nats.restart().await;
    eventually("the reconnect to be counted", TIMEOUT, || async {
        let (_, text) = scrape_node(addr, token).await;
        (figure(&text, "edge_node_reconnects_total") >= Some(1.0)).then_some(())
    })
    .await;

    for wrong in ["", "a-scrapers-token-of-some-lengtX", "not it"] {
        let (status, _) = scrape_node(addr, wrong).await;
        assert_eq!(status, 401, "token {wrong:?}");
    }
}
