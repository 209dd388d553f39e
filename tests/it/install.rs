//! The edge node installed as a systemd service into a scratch root: every file it writes,
//! the unit checked by `systemd-analyze verify`, the installed node run with what was
//! installed until the engine sees it online, and the uninstall.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use tests::{eventually, NatsServer};

use crate::harness::{TestEngine, TIMEOUT};

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o777
}

fn edge_node(args: &[&str]) -> String {
    let output = std::process::Command::new(tests::binary("edge-node"))
        .args(args)
        .env("ENGINE_TOKEN", tests::ADMIN_TOKEN)
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "edge-node {args:?}: {text}");
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_writes_every_file_with_its_mode_the_unit_verifies_the_node_runs_and_uninstall_undoes_it() {
    let nats = NatsServer::start().await;
    let engine = TestEngine::start(&nats).await;
    let scratch = tempfile::tempdir().unwrap();
    let root = scratch.path();
    let ca = engine.trust().ca();
    let api = engine.url("");
    let said = edge_node(&[
        "install",
        "--root",
        root.to_str().unwrap(),
        "--engine",
        &api,
        "--ca",
        ca.to_str().unwrap(),
        "--nats",
        &nats.url(),
        "--node",
        "installed-1",
        "--label",
        "site=lab",
    ]);

    // Every file, with its mode.
    let config = root.join("etc/edge-node");
    let expected = [
        ("usr/local/bin/edge-node", 0o755),
        ("etc/edge-node/ca.pem", 0o644),
        ("etc/edge-node/node.nk", 0o600),
        ("etc/edge-node/node.creds", 0o600),
        ("etc/edge-node/config.toml", 0o644),
        ("etc/systemd/system/edge-node.service", 0o644),
    ];
    for (file, wanted) in expected {
        assert_eq!(mode(&root.join(file)), wanted, "{file}: {said}");
    }
    assert_eq!(mode(&root.join("var/lib/edge-node")), 0o700);
    assert_eq!(
        std::fs::read(root.join("usr/local/bin/edge-node")).unwrap(),
        std::fs::read(tests::binary("edge-node")).unwrap()
    );
    assert_eq!(std::fs::read(config.join("ca.pem")).unwrap(), std::fs::read(&ca).unwrap());
    assert!(std::fs::read_to_string(config.join("node.nk")).unwrap().starts_with("SU"), "a user seed");
    let creds = bus::Credentials::read(&config.join("node.creds"), Some(&config.join("node.nk")))
        .expect("the credentials read");
    drop(creds);
    let settings: toml::Table = std::fs::read_to_string(config.join("config.toml")).unwrap().parse().unwrap();
    assert_eq!(settings["node"].as_str(), Some("installed-1"));
    assert_eq!(settings["creds"].as_str(), Some("/etc/edge-node/node.creds"));
    assert_eq!(settings["data-dir"].as_str(), Some("/var/lib/edge-node"));
    assert_eq!(settings["label"]["site"].as_str(), Some("lab"));

    // The unit: after the network and Docker, restarted on failure, hardened, not root.
    let unit = std::fs::read_to_string(root.join("etc/systemd/system/edge-node.service")).unwrap();
    for line in [
        "After=network-online.target docker.service",
        "Restart=on-failure",
        "DynamicUser=yes",
        "SupplementaryGroups=docker",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "LoadCredential=node.nk:/etc/edge-node/node.nk",
    ] {
        assert!(unit.lines().any(|l| l == line), "{line} in {unit}");
    }
    // Verified with its paths moved under the scratch root, beside a stand-in for Docker's unit.
    let units = scratch.path().join("verify");
    std::fs::create_dir_all(&units).unwrap();
    let moved = unit
        .replace("/usr/local/bin/edge-node", &root.join("usr/local/bin/edge-node").display().to_string())
        .replace(":/etc/edge-node", &format!(":{}", config.display()));
    std::fs::write(units.join("edge-node.service"), moved).unwrap();
    std::fs::write(units.join("docker.service"), "[Unit]\nDescription=Docker\n[Service]\nExecStart=/bin/true\n")
        .unwrap();
    let verify = std::process::Command::new("systemd-analyze")
        .args(["verify", units.join("edge-node.service").to_str().unwrap()])
        .env("SYSTEMD_UNIT_PATH", format!("{}:", units.display()))
        .output()
        .expect("systemd-analyze runs");
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stderr));

    // The installed node, run as the unit runs it (its files given by flags), comes online.
    let binary = root.join("usr/local/bin/edge-node");
    let start = || {
        tokio::process::Command::new(&binary)
            .args(["--config", config.join("config.toml").to_str().unwrap(), "run"])
            .args([
                "--creds",
                config.join("node.creds").to_str().unwrap(),
                "--key",
                config.join("node.nk").to_str().unwrap(),
            ])
            .args(["--ca", config.join("ca.pem").to_str().unwrap()])
            .args(["--data-dir", root.join("var/lib/edge-node").to_str().unwrap(), "--heartbeat", "0.5"])
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    };
    let mut node = start();
    let heard = eventually("the installed node to be online", TIMEOUT, || async {
        let (status, body) = engine.get("/v1/nodes/installed-1").await;
        let online = status == 200 && body["state"] == "online" && body["labels"]["site"] == "lab";
        online.then(|| body["last_heartbeat"].as_str().unwrap().to_owned())
    })
    .await;
    node.kill().await.unwrap();

    // Upgraded: a new binary in its place (this build, with bytes of its own appended), its
    // settings and key as they were; what is not an edge node is refused, changing nothing.
    let newer = scratch.path().join("edge-node-newer");
    let mut bytes = std::fs::read(tests::binary("edge-node")).unwrap();
    bytes.extend_from_slice(b"\0a newer build");
    std::fs::write(&newer, &bytes).unwrap();
    std::fs::set_permissions(&newer, std::fs::Permissions::from_mode(0o755)).unwrap();
    let key = std::fs::read(config.join("node.nk")).unwrap();
    let wrong = std::process::Command::new(tests::binary("edge-node"))
        .args(["upgrade", "--root", root.to_str().unwrap(), "--binary", tests::binary("replay").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!wrong.status.success() && String::from_utf8_lossy(&wrong.stderr).contains("is not an edge node"));
    assert_eq!(std::fs::read(&binary).unwrap(), std::fs::read(tests::binary("edge-node")).unwrap(), "unchanged");
    let said = edge_node(&["upgrade", "--root", root.to_str().unwrap(), "--binary", newer.to_str().unwrap()]);
    assert!(said.contains("edge-node 0.1.0"), "{said}");
    assert_eq!(std::fs::read(&binary).unwrap(), bytes, "the new binary is in place");
    assert_eq!(mode(&binary), 0o755);
    assert_eq!(std::fs::read(config.join("node.nk")).unwrap(), key, "its key stays");
    // Started again, the upgraded node is heard from again with what it had.
    let mut node = start();
    eventually("the upgraded node to be heard from", TIMEOUT, || async {
        let (_, body) = engine.get("/v1/nodes/installed-1").await;
        (body["state"] == "online" && body["last_heartbeat"].as_str() > Some(heard.as_str())).then_some(())
    })
    .await;
    node.kill().await.unwrap();

    // A second install over it is refused.
    let again = std::process::Command::new(tests::binary("edge-node"))
        .args(["install", "--root", root.to_str().unwrap(), "--engine", &api, "--ca", ca.to_str().unwrap()])
        .args(["--node", "installed-2"])
        .env("ENGINE_TOKEN", tests::ADMIN_TOKEN)
        .output()
        .unwrap();
    assert!(!again.status.success() && String::from_utf8_lossy(&again.stderr).contains("installed"));

    // A file of the operator's in its settings directory is kept.
    std::fs::write(config.join("metrics.token"), "kept").unwrap();
    // Uninstalled: its files go, its data stays; purged, its data goes too.
    edge_node(&["uninstall", "--root", root.to_str().unwrap()]);
    let removed = [
        "usr/local/bin/edge-node",
        "etc/edge-node/node.nk",
        "etc/edge-node/config.toml",
        "etc/systemd/system/edge-node.service",
    ];
    for file in removed {
        assert!(!root.join(file).exists(), "{file} is removed");
    }
    assert!(config.join("metrics.token").exists(), "what install did not write stays");
    assert!(root.join("var/lib/edge-node").exists(), "the data is kept");
    // Its settings gone, --purge is told the node whose containers it removes.
    edge_node(&["uninstall", "--root", root.to_str().unwrap(), "--purge", "--node", "installed-1"]);
    assert!(!root.join("var/lib/edge-node").exists(), "purged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enrollment_the_engine_refuses_or_over_plain_http_installs_no_key() {
    let nats = NatsServer::start().await;
    let engine = TestEngine::start(&nats).await;
    let scratch = tempfile::tempdir().unwrap();
    let root = scratch.path().to_str().unwrap();
    let ca = engine.trust().ca();
    let install = |url: &str, token: &str| {
        std::process::Command::new(tests::binary("edge-node"))
            .args(["install", "--root", root, "--engine", url, "--ca", ca.to_str().unwrap(), "--node", "refused-1"])
            .env("ENGINE_TOKEN", token)
            .output()
            .unwrap()
    };
    let no_key = || !scratch.path().join("etc/edge-node/node.nk").exists();

    let refused = install(&engine.url(""), "not-a-token");
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && said.contains("the engine refused the enrollment (401"), "{said}");
    assert!(no_key(), "a refused enrollment leaves no key");

    let plain = engine.url("").replacen("https://", "http://", 1);
    let refused = install(&plain, tests::ADMIN_TOKEN);
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && said.contains("https only"), "{said}");
    assert!(no_key(), "the token never goes over plain HTTP");
    let (_, body) = engine.get("/v1/nodes/refused-1").await;
    assert!(body["error"].is_string(), "never enrolled: {body}");
}
