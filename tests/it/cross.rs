//! The edge node built for aarch64 and armv7 (`scripts/release.sh`, which `scripts/test.sh`
//! runs into `target/cross/`), run under qemu-user against the real nats-server and dockerd:
//! each enrolls, takes a deployment to `running`, goes on through a cut link, and removes it.

use serde_json::json;
use tests::{docker, eventually, Link, NatsServer};

use crate::harness::{launch, meta, TestEngine, IMAGE_1_0_0, TIMEOUT};

/// A foreign architecture: the binary's suffix, qemu's emulator and the target's libraries.
struct Arch {
    name: &'static str,
    qemu: &'static str,
    sysroot: &'static str,
}

const AARCH64: Arch = Arch { name: "aarch64", qemu: "qemu-aarch64-static", sysroot: "/usr/aarch64-linux-gnu" };
const ARMV7: Arch = Arch { name: "armv7", qemu: "qemu-arm-static", sysroot: "/usr/arm-linux-gnueabihf" };

async fn a_node_under_qemu_runs_a_deployment_through_a_cut_link(arch: Arch) {
    let binary = tests::root().join("target/cross").join(format!("edge-node-{}", arch.name));
    assert!(binary.exists(), "no {}: scripts/test.sh builds it", binary.display());
    let nats = NatsServer::start().await;
    let engine = TestEngine::start(&nats).await;
    engine.publish_sample(IMAGE_1_0_0).await;
    let link = Link::to(&format!("127.0.0.1:{}", nats.port())).await;
    let data = tempfile::tempdir().unwrap();
    let name = format!("{}-{}", arch.name, std::process::id());
    let creds = data.path().join("node.creds");
    let enrolled = engine.engine.issuer.enroll(&name, Default::default(), None, &meta()).await.expect("it enrolls");
    std::fs::write(&creds, enrolled.creds).unwrap();
    let log = std::fs::File::create(data.path().join("node.log")).unwrap();
    let mut node = tokio::process::Command::new(arch.qemu)
        .arg("-L")
        .arg(arch.sysroot)
        .arg(&binary)
        .args(["run", "--nats", &link.url(), "--node", &name, "--heartbeat", "0.5", "--reconcile", "0.5"])
        .arg("--creds")
        .arg(&creds)
        .arg("--ca")
        .arg(engine.trust().ca())
        .arg("--data-dir")
        .arg(data.path().join("node"))
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("qemu-user starts the node");
    let said = || std::fs::read_to_string(data.path().join("node.log")).unwrap_or_default();
    eventually(&format!("the {} node to be online", arch.name), TIMEOUT, || async {
        let (status, body) = engine.get(&format!("/v1/nodes/{name}")).await;
        (status == 200 && body["state"] == "online").then_some(())
    })
    .await;

    let id = launch(&engine, &name).await;
    engine.wait_deployment(&id, "the deployment to run", |v| v["nodes"][&name]["status"] == "running").await;
    let docker = docker().await;
    let running = tests::containers(&docker, edge_node::runtime::NODE_LABEL, &name).await.unwrap();
    assert_eq!(running.len(), 1, "{running:?}\n{}", said());

    // Cut off, it misses a stop; healed, it carries it out.
    link.cut();
    assert_eq!(engine.post(&format!("/v1/deployments/{id}/stop"), json!({})).await.0, 202);
    link.heal();
    engine.wait_deployment(&id, "the stop to be carried out", |v| v["nodes"][&name]["status"] == "stopped").await;

    assert_eq!(engine.delete(&format!("/v1/deployments/{id}")).await.0, 202);
    engine.wait_deployment(&id, "the deployment to be removed", |v| v["nodes"][&name]["status"] == "removed").await;
    eventually("its container to be gone", TIMEOUT, || async {
        tests::containers(&docker, edge_node::runtime::NODE_LABEL, &name).await.unwrap().is_empty().then_some(())
    })
    .await;
    node.kill().await.unwrap();
    tests::remove_node_leftovers(&docker, edge_node::runtime::NODE_LABEL, &name).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aarch64_edge_node_under_qemu_runs_a_deployment_through_a_cut_link() {
    a_node_under_qemu_runs_a_deployment_through_a_cut_link(AARCH64).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_armv7_edge_node_under_qemu_runs_a_deployment_through_a_cut_link() {
    a_node_under_qemu_runs_a_deployment_through_a_cut_link(ARMV7).await;
}
