//! The production recipe: `scripts/cluster.sh` starts `deploy/compose.yaml` (three
//! nats-servers and two engines, from the images `scripts/image.sh` pushed, which
//! `scripts/test.sh` builds) and checks every part healthy; a deployment and its update go on
//! while an engine container and a nats-server container are killed.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value};
use tests::{docker, eventually, free_port};

use crate::harness::{Api, IMAGE_1_0_0, IMAGE_1_1_0, TIMEOUT};

/// A cluster `scripts/cluster.sh` started under a compose project of its own, on free ports;
/// dropped, it is taken down with its volumes.
struct Cluster {
    name: String,
    dir: tempfile::TempDir,
    ports: Vec<(String, u16)>,
}

/// What a run of a script on a cluster prints, checked to have succeeded.
fn run(mut command: Command) -> String {
    let output = command.output().expect("the script runs");
    let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{command:?} failed:\n{said}");
    said
}

impl Cluster {
    /// A cluster's settings, not started: `project` and free ports.
    fn new(project: &str) -> Cluster {
        let names = ["NATS_PORT_1", "NATS_PORT_2", "NATS_PORT_3", "NATS_MONITOR_PORT_1", "NATS_MONITOR_PORT_2"]
            .into_iter()
            .chain(["NATS_MONITOR_PORT_3", "ENGINE_PORT_1", "ENGINE_PORT_2", "DASHBOARD_PORT_1", "DASHBOARD_PORT_2"]);
        Cluster {
            name: format!("{project}-{}", std::process::id()),
            dir: tempfile::tempdir().unwrap(),
            ports: names.map(|name| (name.to_owned(), free_port())).collect(),
        }
    }

    fn up() -> Cluster {
        let cluster = Cluster::new("eo-test");
        let said = run(cluster.script("cluster.sh", &[]));
        assert!(said.contains("healthy: nats-1, nats-2, nats-3"), "{said}");
        cluster
    }

    /// `scripts/SCRIPT ARGS` for this cluster, on the images `scripts/image.sh` built.
    fn script(&self, script: &str, args: &[&str]) -> Command {
        let mut command = Command::new("bash");
        command
            .arg(tests::root().join("scripts").join(script))
            .args(args)
            .env("CLUSTER_NAME", &self.name)
            .env("CLUSTER_DIR", self.dir.path())
            .env("BUILD", "0")
            .envs(self.ports.iter().map(|(name, port)| (name, port.to_string())));
        command
    }

    fn port(&self, name: &str) -> u16 {
        self.ports.iter().find(|(n, _)| n == name).map(|(_, port)| *port).expect("a port of the cluster")
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// Engine `i`'s API (1 or 2), through the first admin token.
    fn engine(&self, i: u8) -> Api {
        let token = std::fs::read_to_string(self.dir.path().join("admin.token")).expect("cluster.sh copied the token");
        let http = tests::bearer_client(token.trim(), &self.ca());
        Api { http, base: format!("https://127.0.0.1:{}", self.port(&format!("ENGINE_PORT_{i}"))) }
    }

    /// The servers' client URLs on loopback, for a node that fails over.
    fn nats_url(&self) -> String {
        (1..=3)
            .map(|i| format!("tls://127.0.0.1:{}", self.port(&format!("NATS_PORT_{i}"))))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The container of `service` (compose names it `<project>_<service>_1`).
    fn container(&self, service: &str) -> String {
        format!("{}_{service}_1", self.name)
    }

    /// A server's monitoring page, as JSON.
    async fn monitor(&self, i: usize, path: &str) -> Option<Value> {
        let url = format!("http://127.0.0.1:{}{path}", self.port(&format!("NATS_MONITOR_PORT_{i}")));
        let http = engine::api_client(None).expect("a client");
        http.get(url).send().await.ok()?.json().await.ok()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.script("cluster.sh", &["down"]).output();
    }
}

/// The server that leads the EVENTS stream (`nats-<i>`), as server `asked` says.
async fn events_leader(cluster: &Cluster, asked: usize) -> Option<usize> {
    let jsz = cluster.monitor(asked, "/jsz?accounts=true&streams=true").await?;
    let streams = jsz["account_details"].as_array()?.iter().flat_map(|a| a["stream_detail"].as_array().cloned());
    let events = streams.flatten().find(|s| s["name"] == "EVENTS")?;
    events["cluster"]["leader"].as_str()?.strip_prefix("nats-")?.parse().ok()
}

fn edge_node(cluster: &Cluster, name: &str, data: &Path) -> tokio::process::Child {
    let log = std::fs::File::create(data.join("node.log")).unwrap();
    tokio::process::Command::new(tests::binary("edge-node"))
        .args(["run", "--nats", &cluster.nats_url(), "--node", name, "--heartbeat", "0.5", "--reconcile", "0.5"])
        .arg("--creds")
        .arg(data.join("node.creds"))
        .arg("--ca")
        .arg(cluster.ca())
        .arg("--data-dir")
        .arg(data.join("node"))
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("the edge node starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compose_cluster_is_healthy_and_a_deployment_goes_on_with_an_engine_and_a_server_killed() {
    let cluster = tokio::task::spawn_blocking(Cluster::up).await.unwrap();
    let (first, second) = (cluster.engine(1), cluster.engine(2));
    // The first admin token works on either engine: they share one log.
    for engine in [&first, &second] {
        assert_eq!(engine.get("/v1/nodes").await.0, 200);
    }
    let leader = eventually("the EVENTS stream to have a leader", TIMEOUT, || events_leader(&cluster, 1)).await;
    let jsz = cluster.monitor(leader, "/jsz?accounts=true&streams=true&config=true").await.unwrap();
    let replicas = jsz["account_details"][0]["stream_detail"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == "EVENTS"))
        .map(|s| s["config"]["num_replicas"].clone());
    assert_eq!(replicas, Some(json!(3)), "every event is kept on the three servers: {jsz:#}");

    // A node on the host, enrolled through the first engine, connected to all three servers.
    let data = tempfile::tempdir().unwrap();
    let name = format!("prod-{}", std::process::id());
    let (status, enrolled) = first.post(&format!("/v1/nodes/{name}/enroll"), json!({})).await;
    assert_eq!(status, 201, "{enrolled}");
    std::fs::write(data.path().join("node.creds"), enrolled["creds"].as_str().unwrap()).unwrap();
    let mut node = edge_node(&cluster, &name, data.path());
    let said = || std::fs::read_to_string(data.path().join("node.log")).unwrap_or_default();
    eventually("the node to be online", TIMEOUT, || async {
        (first.node_state(&name).await.as_deref() == Some("online")).then_some(())
    })
    .await;
    first.publish_sample(IMAGE_1_0_0).await;
    let newer = json!({"version": "1.1.0", "image": IMAGE_1_1_0});
    assert_eq!(first.post("/v1/applications/sample/versions", newer).await.0, 201);
    assert_eq!(first.post("/v1/applications/sample/versions/1.1.0/publish", json!({})).await.0, 200);
    let (status, launched) =
        first.post("/v1/deployments", json!({"application": "sample", "version": "1.0.0", "nodes": [&name]})).await;
    assert_eq!(status, 201, "{launched}");
    let id = launched["id"].as_str().unwrap().to_owned();
    second.wait_deployment(&id, "the deployment to run, seen by the other engine", |v| v["status"] == "running").await;

    // An update, and at once the engine that took it and the server leading the log are killed.
    let (status, body) = first.post(&format!("/v1/deployments/{id}/update"), json!({"version": "1.1.0"})).await;
    assert_eq!(status, 202, "{body}");
    let docker = docker().await;
    let leader = events_leader(&cluster, 1).await.unwrap_or(1);
    for service in ["engine-1".to_owned(), format!("nats-{leader}")] {
        docker.kill_container(&cluster.container(&service), None).await.expect("the container is killed");
    }
    second
        .wait_deployment(&id, "the update to run, through the engine and the servers left", |v| {
            v["status"] == "running" && v["version"] == "1.1.0"
        })
        .await;
    let found = tests::containers(&docker, edge_node::runtime::NODE_LABEL, &name).await.unwrap();
    let one = found.len() == 1 && tests::is_image(found[0].image.as_deref(), IMAGE_1_1_0);
    assert!(one, "one container, of 1.1.0: {found:?}\n{}", said());

    // Started again, the killed engine catches up with what happened without it.
    for service in ["engine-1".to_owned(), format!("nats-{leader}")] {
        docker.start_container(&cluster.container(&service), None).await.expect("the container starts");
    }
    let path = format!("/v1/deployments/{id}");
    eventually("the restarted engine to have caught up with the other", TIMEOUT, || async {
        let (mine, theirs) = (first.get(&path).await, second.get(&path).await);
        (mine.0 == 200 && mine == theirs && mine.1["version"] == "1.1.0").then_some(())
    })
    .await;
    // Nothing done twice: the update was asked once and is in the log once.
    let (_, history) = second.get(&format!("/v1/deployments/{id}/history?limit=500")).await;
    let asked = |e: &&Value| e["node"].is_null() && e["status"] == "pending_deploy" && e["version"] == "1.1.0";
    let updates = history["items"].as_array().unwrap().iter().filter(asked).count();
    assert_eq!(updates, 1, "the update is in the log once: {history:#}");

    assert_eq!(second.delete(&format!("/v1/deployments/{id}")).await.0, 202);
    second.wait_deployment(&id, "the deployment to be removed", |v| v["nodes"][&name]["status"] == "removed").await;
    node.kill().await.unwrap();
    tests::remove_node_leftovers(&docker, edge_node::runtime::NODE_LABEL, &name).await.unwrap();
}

#[test]
fn every_command_of_operations_md_runs_as_written_on_a_cluster() {
    // scripts/operations.sh starts its cluster, runs each `sh` block of OPERATIONS.md in order
    // (sizing, monitoring, a node installed, a backup, the upgrades, the rotations, the loss of
    // every server's volume and the restore, checked by `replay verify` and `replay check`),
    // stopping at the first command that fails, and takes the cluster down.
    let cluster = Cluster::new("eo-operations");
    let said = run(cluster.script("operations.sh", &[]));
    let blocks = std::fs::read_to_string(tests::root().join("OPERATIONS.md")).unwrap().matches("```sh\n").count();
    assert!(said.contains(&format!("running the {blocks} blocks of OPERATIONS.md")), "{said}");
    assert!(said.contains("every command of OPERATIONS.md ran"), "{said}");
    let verified = said.contains(" 0 broken chain(s), 0 unsigned or forged event(s), 0 set aside");
    assert!(verified && said.contains("restored "), "replay verify after the restore: {said}");
    assert!(said.contains("0 difference(s) between the log and the engine"), "replay check after the restore: {said}");
}
