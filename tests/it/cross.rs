//! The edge node built for aarch64 and armv7 (`scripts/release.sh`, which `scripts/test.sh`
//! runs into `target/cross/`), run under qemu-user against the real nats-server and dockerd
//! (and the static x86_64 one, natively):
//! each installs itself as a service into a scratch root (making its key and enrolling it),
//! takes a deployment to `running`, goes on through a cut link, removes it, and is uninstalled.

use serde_json::json;
use tests::{docker, eventually, Link, NatsServer};

use crate::harness::{launch, TestEngine, IMAGE_1_0_0, TIMEOUT};

/// An architecture of the release: the binary's suffix, qemu's emulator and the target's
/// libraries (for a foreign one), and whether the binary is static (musl).
struct Arch {
    name: &'static str,
    qemu: Option<(&'static str, &'static str)>,
    linked_statically: bool,
}

const AARCH64: Arch =
    Arch { name: "aarch64", qemu: Some(("qemu-aarch64-static", "/usr/aarch64-linux-gnu")), linked_statically: true };
const ARMV7: Arch =
    Arch { name: "armv7", qemu: Some(("qemu-arm-static", "/usr/arm-linux-gnueabihf")), linked_statically: false };
const X86_64: Arch = Arch { name: "x86_64", qemu: None, linked_statically: true };

async fn a_release_node_installs_runs_a_deployment_through_a_cut_link_and_uninstalls(arch: Arch) {
    let binary = tests::root().join("target/cross").join(format!("edge-node-{}", arch.name));
    assert!(binary.exists(), "no {}: scripts/test.sh builds it", binary.display());
    // A dynamic executable names its loader (PT_INTERP: `/lib/ld-linux-...`, `/lib/ld-musl-...`);
    // a static one none.
    let bytes = std::fs::read(&binary).unwrap();
    let loader = bytes.windows(8).any(|w| w == b"/lib/ld-");
    assert_eq!(!loader, arch.linked_statically, "{} is static: {}", binary.display(), arch.linked_statically);
    let nats = NatsServer::start().await;
    let engine = TestEngine::start(&nats).await;
    engine.publish_sample(IMAGE_1_0_0).await;
    let link = Link::to(&format!("127.0.0.1:{}", nats.port())).await;
    let data = tempfile::tempdir().unwrap();
    let name = format!("{}-{}", arch.name, std::process::id());
    // Under qemu-user, with the target's libraries, when it is foreign.
    let emulated = |binary: &std::path::Path| match arch.qemu {
        Some((qemu, sysroot)) => {
            let mut command = tokio::process::Command::new(qemu);
            command.arg("-L").arg(sysroot).arg(binary);
            command
        }
        None => tokio::process::Command::new(binary),
    };
    // Installed as on a board, into a scratch root: it makes its key and enrolls it.
    let root = data.path().join("root");
    let ca = engine.trust().ca();
    let installed = emulated(&binary)
        .args(["install", "--root", root.to_str().unwrap(), "--engine", &engine.url(""), "--nats", &link.url()])
        .args(["--ca", ca.to_str().unwrap(), "--node", &name])
        .env("ENGINE_TOKEN", tests::ADMIN_TOKEN)
        .output()
        .await
        .unwrap();
    assert!(installed.status.success(), "{}", String::from_utf8_lossy(&installed.stderr));
    let config = root.join("etc/edge-node");
    assert_eq!(std::fs::read(root.join("usr/local/bin/edge-node")).unwrap(), std::fs::read(&binary).unwrap());
    // Run as its unit runs it, its files given by flags.
    let log = std::fs::File::create(data.path().join("node.log")).unwrap();
    let mut node = emulated(&root.join("usr/local/bin/edge-node"))
        .args(["--config", config.join("config.toml").to_str().unwrap(), "run", "--heartbeat", "0.5"])
        .args(["--reconcile", "0.5", "--creds", config.join("node.creds").to_str().unwrap()])
        .args(["--key", config.join("node.nk").to_str().unwrap(), "--ca", config.join("ca.pem").to_str().unwrap()])
        .args(["--data-dir", root.join("var/lib/edge-node").to_str().unwrap()])
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

    // Uninstalled, and purged: every file it wrote goes.
    let uninstalled =
        emulated(&binary).args(["uninstall", "--root", root.to_str().unwrap(), "--purge"]).output().await.unwrap();
    assert!(uninstalled.status.success(), "{}", String::from_utf8_lossy(&uninstalled.stderr));
    for file in
        ["usr/local/bin/edge-node", "etc/edge-node", "etc/systemd/system/edge-node.service", "var/lib/edge-node"]
    {
        assert!(!root.join(file).exists(), "{file} is removed");
    }
    tests::remove_node_leftovers(&docker, edge_node::runtime::NODE_LABEL, &name).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aarch64_edge_node_under_qemu_installs_runs_a_deployment_through_a_cut_link_and_uninstalls() {
    a_release_node_installs_runs_a_deployment_through_a_cut_link_and_uninstalls(AARCH64).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_armv7_edge_node_under_qemu_installs_runs_a_deployment_through_a_cut_link_and_uninstalls() {
    a_release_node_installs_runs_a_deployment_through_a_cut_link_and_uninstalls(ARMV7).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_x86_64_edge_node_installs_runs_a_deployment_through_a_cut_link_and_uninstalls() {
    a_release_node_installs_runs_a_deployment_through_a_cut_link_and_uninstalls(X86_64).await;
}
