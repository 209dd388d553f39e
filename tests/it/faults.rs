//! Faults on the real parts: a cut link, a killed node, containers changed behind the node's
//! back. After each, the read models must say what Docker really runs, and nothing may have
//! been applied twice.

use std::collections::BTreeSet;

use bollard::models::ContainerSummaryStateEnum;
use bus::store::{EventStore, StoreConfig};
use edge_node::runtime::DEPLOYMENT_LABEL;
use serde_json::json;
use tests::{docker, eventually, Link, NatsServer};

use crate::harness::{launch, Lab, TestEngine, TestNode, IMAGE_1_0_0, TIMEOUT};

/// Every report the node ever published, by envelope id: none may be stored twice.
async fn reports_are_stored_once(nats: &NatsServer, node: &str) -> usize {
    let store = EventStore::open(nats.client().await, &StoreConfig::default()).await.unwrap();
    let loaded = store.load(&events::subject::node_reports("default", node)).await.unwrap();
    let ids: BTreeSet<_> = loaded.events.iter().map(|e| e.envelope.id).collect();
    assert_eq!(ids.len(), loaded.events.len(), "a report was stored twice");
    ids.len()
}

/// The deployment's containers in Docker, with whether each runs.
async fn in_docker(docker: &bollard::Docker, id: &str) -> Vec<(String, bool)> {
    let found = tests::containers(docker, DEPLOYMENT_LABEL, id).await.unwrap();
    found.into_iter().map(|c| (c.id.unwrap(), c.state == Some(ContainerSummaryStateEnum::RUNNING))).collect()
}

/// A server, an engine with `sample` 1.0.0 published, and a node that reaches the server
/// through a link the test may cut.
async fn behind_a_link() -> (NatsServer, TestEngine, Link, TestNode) {
    let nats = NatsServer::start().await;
    let engine = TestEngine::start(&nats).await;
    let link = Link::to(&format!("127.0.0.1:{}", nats.port())).await;
    let node = TestNode::start_via(&link.url(), &engine).await;
    engine.publish_sample(IMAGE_1_0_0).await;
    (nats, engine, link, node)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_link_loses_nothing_and_applies_nothing_twice() {
    let (nats, engine, link, node) = behind_a_link().await;
    let docker = docker().await;
    let (kept, stopped) = (launch(&engine, &node.name).await, launch(&engine, &node.name).await);
    for id in [&kept, &stopped] {
        engine.wait_deployment(id, "the deployment to run", |v| v["status"] == "running").await;
    }
    let before = in_docker(&docker, &stopped).await;

    // The link goes down; the engine goes on taking commands for the node.
    link.cut();
    let (status, _) = engine.post(&format!("/v1/deployments/{stopped}/stop"), json!({})).await;
    assert_eq!(status, 202);
    let added = launch(&engine, &node.name).await;
    let view = engine.wait_deployment(&stopped, "the stop to be requested", |v| v["status"] == "pending_stop").await;
    assert_eq!(view["desired"], "stopped");
    assert!(in_docker(&docker, &kept).await[0].1, "the node's workloads run on without the link");
    // On the node's side meanwhile: a container stopped behind its back is put back, offline.
    let kept_container = in_docker(&docker, &kept).await[0].0.clone();
    docker.stop_container(&kept_container, None::<bollard::query_parameters::StopContainerOptions>).await.unwrap();
    eventually("the node to start it again with no link", TIMEOUT, || async {
        (in_docker(&docker, &kept).await == [(kept_container.clone(), true)]).then_some(())
    })
    .await;

    // Healed: the node takes the commands it missed, once, and the engine hears its truth.
    link.heal();
    engine.wait_deployment(&stopped, "the stop to be carried out", |v| v["status"] == "stopped").await;
    engine.wait_deployment(&added, "the launch made offline to run", |v| v["status"] == "running").await;
    engine.wait_deployment(&kept, "the untouched one to be running", |v| v["status"] == "running").await;
    let after = in_docker(&docker, &stopped).await;
    assert_eq!(after.len(), 1, "no second container: {after:?}");
    assert_eq!((after[0].0.as_str(), after[0].1), (before[0].0.as_str(), false), "the same container, stopped");
    assert_eq!(in_docker(&docker, &added).await.len(), 1);
    assert_eq!(in_docker(&docker, &kept).await.len(), 1);
    // What the node recorded offline arrives after the heal.
    let name = format!("sample-{kept}-{}", node.name);
    eventually("the offline drift to reach the engine", TIMEOUT, || async {
        drifts(&engine, &kept).await.contains(&format!("drift: {name} stopped")).then_some(())
    })
    .await;
    reports_are_stored_once(&nats, &node.name).await;
    engine.matches_a_fresh_rebuild(&nats, &[kept, stopped, added]).await;
    node.stop().await;
}

/// The drift notes in the deployment's history, in order.
async fn drifts(engine: &TestEngine, id: &str) -> Vec<String> {
    let (_, history) = engine.get(&format!("/v1/deployments/{id}/history?limit=500")).await;
    let notes = history["items"].as_array().unwrap().iter().filter_map(|e| e["note"].as_str());
    notes.filter(|n| n.starts_with("drift")).map(str::to_owned).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_stopped_or_removed_behind_the_nodes_back_is_put_back_and_the_drift_recorded() {
    let (Lab { nats: _nats, engine, node }, id) = Lab::running().await;
    let docker = docker().await;
    let name = format!("sample-{id}-{}", node.name);
    let first = in_docker(&docker, &id).await[0].0.clone();

    // Stopped through the Docker API: started again, the same container.
    docker.stop_container(&first, None::<bollard::query_parameters::StopContainerOptions>).await.unwrap();
    eventually("the stop to be seen as drift", TIMEOUT, || async {
        (drifts(&engine, &id).await == [format!("drift: {name} stopped")]).then_some(())
    })
    .await;
    eventually("the container to run again", TIMEOUT, || async {
        (in_docker(&docker, &id).await == [(first.clone(), true)]).then_some(())
    })
    .await;

    // Removed through the Docker API: made again.
    let options = bollard::query_parameters::RemoveContainerOptions { force: true, ..Default::default() };
    docker.remove_container(&first, Some(options)).await.unwrap();
    eventually("the removal to be seen as drift", TIMEOUT, || async {
        (drifts(&engine, &id).await.last() == Some(&format!("drift: {name} removed"))).then_some(())
    })
    .await;
    let second = eventually("a new container to run", TIMEOUT, || async {
        let found = in_docker(&docker, &id).await;
        (found.len() == 1 && found[0].1 && found[0].0 != first).then(|| found[0].0.clone())
    })
    .await;
    let view = engine.wait_deployment(&id, "the read model to say running", |v| v["status"] == "running").await;
    assert_eq!(view["nodes"][&node.name]["last_drift"], format!("{name} removed"));
    assert_eq!(in_docker(&docker, &id).await, [(second, true)]);
    node.stop().await;
}

/// Runs the node's own command line on `data_dir`; returns its output, or panics with it.
async fn node_cli(data_dir: &std::path::Path, args: &[&str]) -> String {
    let output = tokio::process::Command::new(tests::binary("edge-node"))
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "edge-node {args:?}: {text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_staged_workload_is_applied_on_the_node_with_no_link_and_the_engine_hears_of_it_after() {
    let (_nats, engine, link, node) = behind_a_link().await;
    let docker = docker().await;
    let staged = json!({"application": "sample", "version": "1.0.0", "nodes": [node.name], "staged": true, "instantly_apply": false});
    let (status, body) = engine.post("/v1/deployments", staged).await;
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_str().unwrap().to_owned();
    engine.wait_deployment(&id, "the download", |v| v["status"] == "staged").await;
    let listed = node_cli(&node.data_dir(), &["workloads", "list"]).await;
    assert!(listed.contains(&id) && listed.contains("waiting for apply"), "{listed}");

    // No link at all: the apply is taken on the node, by the application's name.
    link.cut();
    let applied = node_cli(&node.data_dir(), &["workloads", "apply", "-n", "sample"]).await;
    assert!(applied.contains(&format!("applied {id}")), "{applied}");
    eventually("the applied workload to run with no link", TIMEOUT, || async {
        (in_docker(&docker, &id).await.first().is_some_and(|c| c.1)).then_some(())
    })
    .await;
    let listed = node_cli(&node.data_dir(), &["workloads", "list"]).await;
    assert!(listed.contains("running") && !listed.contains("waiting for apply"), "{listed}");
    let (_, view) = engine.get(&format!("/v1/deployments/{id}")).await;
    assert_eq!(view["status"], "staged", "the engine cannot know yet");

    // A second apply of the same has nothing to do, and says so.
    let output = tokio::process::Command::new(tests::binary("edge-node"))
        .args(["workloads", "apply", "-n", &id, "--data-dir"])
        .arg(node.data_dir())
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("nothing staged"), "{output:?}");

    // Healed: the apply reaches the engine as an event by the node, and the status follows.
    link.heal();
    let view = engine.wait_deployment(&id, "the engine to hear of the apply", |v| v["status"] == "running").await;
    assert_eq!(view["awaiting_apply"], false);
    assert_eq!(view["nodes"][&node.name]["applied_locally"], true);
    let (_, history) = engine.get(&format!("/v1/deployments/{id}/history?limit=500")).await;
    let applied = history["items"].as_array().unwrap().iter().find(|e| e["note"] == "applied on the node").cloned();
    assert_eq!(applied.map(|e| e["actor"].clone()), Some(json!(format!("node:{}", node.name))));
    let (status, _) = engine.post("/v1/deployments/apply", json!({"deployments": [id]})).await;
    assert_eq!(status, 200);
    assert_eq!(in_docker(&docker, &id).await.len(), 1);
    node.stop().await;
}

/// The edge-node binary as its own process, on its own sled directory, killed as a crash would;
/// it finds the Docker engine through `docker_host` when set (a [`tests::DockerGate`]).
pub(crate) struct NodeProcess {
    pub(crate) name: String,
    url: String,
    data: tempfile::TempDir,
    docker_host: Option<String>,
    child: Option<tokio::process::Child>,
    /// Its log lines are JSON objects (`--log-json`).
    log_json: bool,
}

impl NodeProcess {
    async fn start(url: &str, engine: &TestEngine, docker_host: Option<String>) -> NodeProcess {
        NodeProcess::start_logging(url, engine, docker_host, false).await
    }

    pub(crate) async fn start_logging(
        url: &str,
        engine: &TestEngine,
        docker_host: Option<String>,
        log_json: bool,
    ) -> NodeProcess {
        let name = format!("p{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
        let data = tempfile::tempdir().unwrap();
        let mut node = NodeProcess { name, url: url.to_owned(), data, docker_host, child: None, log_json };
        node.launch(engine).await;
        node
    }

    /// What the process logged so far.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.data.path().join("node.log")).unwrap_or_default()
    }

    async fn launch(&mut self, engine: &TestEngine) {
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.data.path().join("node.log")).unwrap();
        let creds = self.data.path().join("node.creds");
        if !creds.exists() {
            let enrolled =
                engine.engine.issuer.enroll(&self.name, Default::default(), None, &crate::harness::meta()).await;
            std::fs::write(&creds, enrolled.expect("the node enrolls").creds).unwrap();
        }
        let mut command = tokio::process::Command::new(tests::binary("edge-node"));
        if let Some(host) = &self.docker_host {
            command.env("DOCKER_HOST", host);
        }
        if self.log_json {
            command.arg("--log-json").env("RUST_LOG", "info,edge_node=debug");
        }
        let child = command
            .args(["run", "--nats", &self.url, "--node", &self.name, "--heartbeat", "0.3", "--reconcile", "0.3"])
            .arg("--creds")
            .arg(&creds)
            .arg("--ca")
            .arg(engine.trust().ca())
            .arg("--data-dir")
            .arg(self.data.path().join("node"))
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("the edge-node binary starts");
        self.child = Some(child);
        let name = &self.name;
        eventually("the node process to register", TIMEOUT, || async {
            let (status, body) = engine.get(&format!("/v1/nodes/{name}")).await;
            (status == 200 && body["state"] == "online").then_some(())
        })
        .await;
    }

    /// SIGKILL: no chance to flush or say goodbye.
    async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.unwrap();
        }
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        let name = self.name.clone();
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async {
                tests::remove_node_leftovers(&docker().await, edge_node::runtime::NODE_LABEL, &name).await
            })
        });
        let _ = cleanup.join();
    }
}

/// The statuses the deployment went through, from the log.
async fn statuses(engine: &TestEngine, id: &str) -> Vec<String> {
    let (_, history) = engine.get(&format!("/v1/deployments/{id}/history?limit=500")).await;
    history["items"].as_array().unwrap().iter().filter_map(|e| e["status"].as_str().map(str::to_owned)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_at_any_step_resumes_from_its_local_state_without_downloading_again() {
    let nats = NatsServer::start().await;
    let engine = TestEngine::start(&nats).await;
    // The node reaches Docker through a gate that can hold one kind of call: a step held
    // there is a step the node is killed inside of.
    let sockets = tempfile::tempdir().unwrap();
    let gate = tests::DockerGate::to(&tests::docker_socket(), sockets.path()).await;
    let mut node = NodeProcess::start(&nats.url(), &engine, Some(gate.host())).await;
    let docker = docker().await;
    let image = tests::unique_image(&docker, IMAGE_1_0_0, "killed").await.unwrap();
    engine.publish_sample(&image).await;

    // Killed once it runs: taken up again, the same container, nothing downloaded again.
    let running = launch(&engine, &node.name).await;
    engine.wait_deployment(&running, "the deployment to run", |v| v["status"] == "running").await;
    let container = in_docker(&docker, &running).await;
    let before = statuses(&engine, &running).await;
    node.kill().await;
    let (status, _) = engine.post(&format!("/v1/deployments/{running}/stop"), json!({})).await;
    assert_eq!(status, 202, "work sent while the node is dead waits for it");
    node.launch(&engine).await;
    engine.wait_deployment(&running, "the stop after the restart", |v| v["status"] == "stopped").await;
    let after = statuses(&engine, &running).await;
    assert!(!after[before.len()..].contains(&"downloading".to_owned()), "downloaded again: {after:?}");
    assert_eq!(in_docker(&docker, &running).await, [(container[0].0.clone(), false)], "the same container");

    // Killed inside each step of a launch in turn, its runtime call held at the gate (the
    // image looked up and pulled, the container made, the container started): each time it
    // resumes, ends running with one container, and downloads nothing again once it had.
    let steps = [
        ("downloading", "GET", "/images/"),
        ("deploying", "POST", "/containers/create"),
        ("starting", "POST", "/start"),
    ];
    for (step, method, call) in steps {
        gate.hold(method, call);
        let id = launch(&engine, &node.name).await;
        let at_kill = eventually(&format!("the launch to be held inside {step}"), TIMEOUT, || async {
            let statuses = statuses(&engine, &id).await;
            let inside = statuses.last().map(String::as_str) == Some(step) && !gate.held().is_empty();
            inside.then_some(statuses)
        })
        .await;
        let held = gate.held();
        node.kill().await;
        let made = in_docker(&docker, &id).await;
        match step {
            "starting" => assert!(made.len() == 1 && !made[0].1, "killed at {step}: made, not started: {made:?}"),
            _ => assert!(made.is_empty(), "killed at {step}: nothing made yet: {made:?}"),
        }
        assert!(
            held.iter().any(|line| line.starts_with(method) && line.contains(call)),
            "killed inside {step}: {held:?}"
        );
        gate.open();
        node.launch(&engine).await;
        engine.wait_deployment(&id, "the launch to finish after the restart", |v| v["status"] == "running").await;
        let now = in_docker(&docker, &id).await;
        assert_eq!(now.len(), 1, "killed at {step}: one container");
        if step == "starting" {
            assert_eq!(now[0].0, made[0].0, "killed at {step}: the container it had made is started");
        }
        let all = statuses(&engine, &id).await;
        assert_eq!(all.last().map(String::as_str), Some("running"), "killed at {step}: {all:?}");
        if step != "downloading" {
            let resumed = &all[at_kill.len()..];
            assert!(!resumed.contains(&"downloading".to_owned()), "killed at {step}, downloaded again: {all:?}");
        }
    }
    reports_are_stored_once(&nats, &node.name).await;
    engine.matches_a_fresh_rebuild(&nats, &[running]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_that_hangs_is_reported_failed_when_its_deadline_passes() {
    let nats = NatsServer::start().await;
    let engine = TestEngine::start(&nats).await;
    // A registry on loopback that takes connections and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let held = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let data = tempfile::tempdir().unwrap();
    let name = format!("t{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
    let deadlines = edge_node::agent::Deadlines { download: 2_000, step: 2_000 };
    // The tenant and the node both take images from it.
    let registry = format!("127.0.0.1:{port}");
    let policy = events::policy::Policy { registries: vec![registry.clone()], ..Default::default() };
    let config = edge_node::NodeConfig { deadlines, policy, ..TestNode::config(&nats.url(), &name, &data) };
    let node = TestNode::start_with(config, &engine, data).await;
    let (status, body) = engine.put("/v1/tenants/default/policy", json!({"registries": [registry]})).await;
    assert_eq!(status, 200, "{body}");
    // Pinned already: publishing asks the registry nothing.
    engine.publish_sample(&format!("127.0.0.1:{port}/sample/app:1.0.0@sha256:{}", "0".repeat(64))).await;

    let id = launch(&engine, &node.name).await;
    let view = engine.wait_deployment(&id, "the deadline to pass", |v| v["status"] == "failed").await;
    let error = &view["nodes"][&node.name]["error"];
    assert_eq!(error["code"], "deadline_exceeded", "{view}");
    assert!(error["message"].as_str().unwrap().contains("pull"), "{view}");
    assert!(statuses(&engine, &id).await.contains(&"downloading".to_owned()));
    held.abort();
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dockerd_restart_is_survived_and_the_containers_it_stopped_are_started_again() {
    let mut own = tests::DockerEngine::start().await;
    let nats = NatsServer::start().await;
    let engine = TestEngine::start(&nats).await;
    let data = tempfile::tempdir().unwrap();
    let name = format!("t{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
    let config = TestNode::config(&nats.url(), &name, &data);
    let node = TestNode::start_on_docker(config, &engine, data, own.client().await).await;
    // That engine reaches no registry: the image is there already, and not downloaded again.
    // Loaded from an archive it has no digest, so the version is published unpinned, through
    // the command path (the API would ask the registry for one).
    own.load(IMAGE_1_0_0).await.unwrap();
    crate::harness::seed(&engine.engine.commands, &[]).await;
    let id = launch(&engine, &node.name).await;
    engine.wait_deployment(&id, "the deployment to run", |v| v["status"] == "running").await;
    let before = in_docker(&own.client().await, &id).await;
    assert_eq!(before.len(), 1);

    // Restarted as a service would be: it stops its containers on the way down.
    own.restart().await;
    let docker = own.client().await;
    eventually("the container to run again after the restart", TIMEOUT, || async {
        (in_docker(&docker, &id).await == [(before[0].0.clone(), true)]).then_some(())
    })
    .await;
    let container = format!("sample-{id}-{}", node.name);
    eventually("the drift to be recorded", TIMEOUT, || async {
        drifts(&engine, &id).await.contains(&format!("drift: {container} stopped")).then_some(())
    })
    .await;
    engine.wait_deployment(&id, "the read model to say running", |v| v["status"] == "running").await;
    node.task.abort();
}
