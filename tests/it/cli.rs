//! The operator command line, the `engine` binary itself, against a real engine and a real
//! edge node on Docker.

use serde_json::Value;

use crate::harness::{Lab, TestEngine, IMAGE_1_0_0};

/// Runs `engine ARGS` against `engine` with the tests' admin token: exit code, stdout, stderr.
async fn engine_cli(engine: &TestEngine, args: &[&str]) -> (i32, String, String) {
    let output = tokio::process::Command::new(tests::binary("engine"))
        .env("ENGINE_API", format!("https://{}", engine.engine.api_addr))
        .env("ENGINE_CA", engine.trust().ca())
        .env("ENGINE_TOKEN", tests::ADMIN_TOKEN)
        .env_remove("ENGINE_TENANT")
        .args(args)
        .output()
        .await
        .expect("the engine binary runs");
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (output.status.code().unwrap_or(-1), text(&output.stdout), text(&output.stderr))
}

async fn ok(engine: &TestEngine, args: &[&str]) -> String {
    let (code, out, err) = engine_cli(engine, args).await;
    assert_eq!(code, 0, "engine {args:?}\nstdout: {out}\nstderr: {err}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_goes_through_a_deployments_life_with_the_cli() {
    let Lab { nats: _nats, engine, node } = Lab::start().await;
    engine.publish_sample(IMAGE_1_0_0).await;
    let node = node.name.as_str();

    // The catalog and the fleet, as tables and as JSON; a selector previewed.
    let apps = ok(&engine, &["apps"]).await;
    assert!(apps.lines().any(|l| l.starts_with("sample") && l.contains("1.0.0")), "{apps}");
    let nodes: Value =
        serde_json::from_str(&ok(&engine, &["-o", "json", "nodes", "--selector", "site=lab"]).await).unwrap();
    assert_eq!(nodes["items"][0]["id"], node, "{nodes}");
    let none: Value =
        serde_json::from_str(&ok(&engine, &["-o", "json", "nodes", "--selector", "site=moon"]).await).unwrap();
    assert_eq!(none["items"], serde_json::json!([]), "{none}");
    let shown: Value = serde_json::from_str(&ok(&engine, &["node", "get", node]).await).unwrap();
    assert_eq!(shown["id"], node);

    // Launch and follow it: each line says when, with the zone, and the version.
    let launched = ok(
        &engine,
        &["launch", "--app", "sample", "--version", "1.0.0", "--node", node, "--watch", "--timeout", "120s"],
    )
    .await;
    let id = launched.lines().next().and_then(|l| l.strip_prefix("launched deployment ")).expect(&launched).to_owned();
    assert!(
        launched.lines().any(|l| l.contains(" UTC ") && l.contains("running") && l.contains("1.0.0")),
        "{launched}"
    );
    assert!(launched.trim_end().ends_with(&format!("deployment {id} is running on 1 node(s)")), "{launched}");

    // Found by its filters, and by a prefix of its id.
    let listed = ok(&engine, &["list", "--app", "sample", "--node", node, "--version", "1.0.0"]).await;
    assert!(listed.contains(&id), "{listed}");
    assert!(!ok(&engine, &["list", "--app", "other"]).await.contains(&id));
    let prefix = &id[..13];
    let stopped = ok(&engine, &["stop", prefix, "--watch", "--timeout", "120s"]).await;
    assert!(stopped.contains(&format!("deployment {id} is stopped")), "{stopped}");
    // Asking again for what holds is no failure.
    let again = ok(&engine, &["stop", prefix]).await;
    assert!(again.contains("already") && again.contains("nothing to do"), "{again}");
    let republished = ok(&engine, &["app", "publish", "sample", "1.0.0"]).await;
    assert!(republished.contains("nothing to do"), "{republished}");

    let history = ok(&engine, &["history", prefix]).await;
    let statuses: Vec<&str> = history.lines().filter_map(|l| l.split_whitespace().nth(4)).collect();
    assert!(statuses.contains(&"running") && statuses.last() == Some(&"stopped"), "{history}");
    let history: Value = serde_json::from_str(&ok(&engine, &["-o", "json", "history", &id]).await).unwrap();
    assert!(history.as_array().unwrap().len() >= 6, "{history}");

    // Removed deployments show with --all alone.
    ok(&engine, &["uninstall", &id, "--watch"]).await;
    assert!(!ok(&engine, &["list"]).await.contains(&id));
    assert!(ok(&engine, &["list", "--all"]).await.contains(&id));

    // Staged: downloaded, then applied.
    let staged = ok(&engine, &["stage", "--app", "sample", "--version", "1.0.0", "--node", node, "--watch"]).await;
    let staged_id = staged.lines().next().and_then(|l| l.strip_prefix("staged deployment ")).expect(&staged).to_owned();
    assert!(staged.contains(&format!("deployment {staged_id} is staged")), "{staged}");
    let applied = ok(&engine, &["apply", &staged_id[..13], "--watch"]).await;
    assert!(applied.contains(&format!("deployment {staged_id} is running")), "{applied}");
    ok(&engine, &["uninstall", &staged_id, "--watch"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_refuses_clearly_and_suggests_what_was_meant() {
    let nats = tests::NatsServer::start().await;
    let engine = TestEngine::start(&nats).await;

    let (code, _, err) = engine_cli(&engine, &["list", "--status", "runing"]).await;
    assert_ne!(code, 0);
    assert!(err.contains("did you mean `running`") && err.contains("pending_deploy"), "{err}");

    let (code, _, err) = engine_cli(&engine, &["stop", "0000"]).await;
    assert_ne!(code, 0);
    assert!(err.contains("no deployment's id starts with `0000`"), "{err}");

    let (code, _, err) = engine_cli(&engine, &["launch", "--app", "ghost", "--version", "1.0.0", "--node", "n1"]).await;
    assert_ne!(code, 0);
    assert!(err.contains("422") && err.contains("application"), "the API's refusal, with its field: {err}");

    let (code, _, err) = engine_cli(&engine, &["tenant", "delete", "other"]).await;
    assert_ne!(code, 0);
    assert!(err.contains("--yes"), "{err}");
    let deleted = ok(&engine, &["tenant", "delete", "other", "--yes"]).await;
    assert!(deleted.contains("tenant other deleted"), "{deleted}");

    let script = ok(&engine, &["completions", "bash"]).await;
    assert!(script.contains("_engine()") && script.contains("launch"), "a bash completion script");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_with_values_is_redeployed_in_place_its_logs_tail_and_a_watch_names_the_node_it_waits_on() {
    let Lab { nats: _nats, engine, node } = Lab::start().await;
    // A version with its parameters and profiles given as flags.
    ok(&engine, &["app", "register", "logger", "--name", "Logger"]).await;
    let image = "127.0.0.1:5000/sample/logger:1.0.0";
    let added = ok(
        &engine,
        &[
            "app",
            "add-version",
            "logger",
            "1.0.0",
            "--image",
            image,
            "--param",
            "GREETING=hello",
            "--profile",
            "quiet:GREETING=hi",
        ],
    )
    .await;
    let added: Value = serde_json::from_str(&added).unwrap();
    assert_eq!(added["versions"][0]["parameters"]["GREETING"], "hello", "{added}");
    assert_eq!(added["versions"][0]["profiles"]["quiet"]["GREETING"], "hi", "{added}");
    ok(&engine, &["app", "publish", "logger", "1.0.0"]).await;
    let name = node.name.clone();
    // A profile or a parameter the version does not have: the valid ones, and the nearest.
    let (code, _, err) = engine_cli(
        &engine,
        &["launch", "--app", "logger", "--version", "1.0.0", "--node", &name, "--profile", "quite"],
    )
    .await;
    assert_ne!(code, 0);
    assert!(err.contains("did you mean `quiet`?") && err.contains("its profiles: quiet"), "{err}");
    let set = ["launch", "--app", "logger", "--version", "1.0.0", "--node", &name, "--set", "GREETNG=x"];
    let (code, _, err) = engine_cli(&engine, &set).await;
    assert_ne!(code, 0);
    assert!(err.contains("did you mean `GREETING`?") && err.contains("(field `overrides`)"), "{err}");
    let launched = ok(
        &engine,
        &["launch", "--app", "logger", "--version", "1.0.0", "--node", &name, "--profile", "quiet", "--watch"],
    )
    .await;
    let id = launched.lines().next().and_then(|l| l.strip_prefix("launched deployment ")).unwrap().to_owned();

    // The last five of the 450 lines, each with when it was written; the next cursor on stderr.
    let last = tests::eventually("the logger's last line", crate::harness::TIMEOUT, || async {
        let out = ok(&engine, &["logs", &id, "--tail", "5", "--timestamps"]).await;
        out.contains("line 450").then_some(out)
    })
    .await;
    let lines: Vec<&str> = last.lines().collect();
    assert_eq!(lines.len(), 5, "{last}");
    for (line, n) in lines.iter().zip(446..) {
        let (_, text) = line.split_once("] ").unwrap();
        let (when, what) = text.split_once(' ').unwrap();
        assert!(when.parse::<chrono::DateTime<chrono::Utc>>().is_ok(), "a timestamp first: {line}");
        assert_eq!(what, format!("line {n}"));
    }
    let (code, out, err) = engine_cli(&engine, &["logs", &id]).await;
    assert_eq!((code, out.lines().count()), (0, 200), "{err}");
    let page: Value = serde_json::from_str(&ok(&engine, &["-o", "json", "logs", &id]).await).unwrap();
    assert_eq!(page["containers"][0]["lines"].as_array().map(Vec::len), Some(200), "the API's page: {page}");
    let summary: Value = serde_json::from_str(&ok(&engine, &["-o", "json", "summary"]).await).unwrap();
    assert_eq!(summary["by_application_version"]["logger@1.0.0"]["running"], 1, "{summary}");
    assert!(err.starts_with("next page: --cursor "), "the cursor goes to stderr: {err}");

    // Run again in place with other values: the containers get them.
    let redeployed = ok(&engine, &["redeploy", &id, "--set", "GREETING=hey", "--watch"]).await;
    assert!(redeployed.contains(&format!("deployment {id} is running")), "{redeployed}");
    let (_, view) = engine.get(&format!("/v1/deployments/{id}")).await;
    assert_eq!((view["env"]["GREETING"].as_str(), view["profile"].as_str()), (Some("hey"), Some("quiet")), "{view}");
    let docker = tests::docker().await;
    let env = tests::eventually("the container made with the new values", crate::harness::TIMEOUT, || async {
        let name = format!("logger-{id}-{name}");
        let inspected = docker.inspect_container(&name, None).await.ok()?;
        let env = inspected.config?.env?;
        env.contains(&"GREETING=hey".to_owned()).then_some(env)
    })
    .await;
    assert!(env.contains(&"GREETING=hey".to_owned()), "{env:?}");
    let again = ok(&engine, &["redeploy", &id, "--set", "GREETING=hey"]).await;
    assert!(again.contains("nothing to do"), "{again}");

    // The node goes silent: the watch of a new request says it waits on it, and why.
    node.stop().await;
    tests::eventually("the node to be unreachable", crate::harness::TIMEOUT, || async {
        (engine.node_state(&name).await.as_deref() == Some("unreachable")).then_some(())
    })
    .await;
    let (code, out, err) = engine_cli(&engine, &["stop", &id, "--watch", "--timeout", "5s"]).await;
    assert_ne!(code, 0, "the stop cannot be carried out: {out}");
    assert!(out.contains(&format!("waiting on node {name}: it is unreachable")), "{out}\n{err}");
    assert!(err.contains("after 5s"), "{err}");
}

/// What the binary `name` says to `args`, with the environment `env` over this one less the
/// settings variables, and whether it succeeded.
fn binary_says(name: &str, args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let output = std::process::Command::new(tests::binary(name))
        .args(args)
        .env_remove("NATS_URL")
        .env_remove("EDGE_NODE_CONFIG")
        .env_remove("ENGINE_CONFIG")
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

fn edge_node_config(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    binary_says("edge-node", args, env)
}

#[test]
fn the_edge_nodes_settings_file_is_overridden_by_the_environment_and_the_flags_and_shown_whole() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.toml");
    let written = "node = \"board-7\"\ncreds = \"/etc/edge-node/node.creds\"\ndata-dir = \"/var/lib/edge-node\"\n\
                   heartbeat = 2.5\nnats = \"tls://127.0.0.1:14222\"\n[label]\nsite = \"north\"\n";
    std::fs::write(&file, written).unwrap();
    let path = file.to_str().unwrap();

    let (ok, shown) = edge_node_config(&["config", "show", "--config", path, "--default-cpus", "0.5"], &[]);
    assert!(ok, "{shown}");
    for line in [
        "node = \"board-7\"",
        "data-dir = \"/var/lib/edge-node\"",
        "heartbeat = \"2.5\"",
        "label = [\"site=north\"]",
        "tenant = \"default\"",
        "default-cpus = \"0.5\"",
    ] {
        assert!(shown.contains(line), "{line} in {shown}");
    }
    // The environment over the file, a flag over both; the file named by the environment too.
    let env = [("NATS_URL", "tls://127.0.0.1:24222"), ("EDGE_NODE_CONFIG", path)];
    let (_, shown) = edge_node_config(&["config", "show"], &env);
    assert!(shown.contains("nats = \"tls://127.0.0.1:24222\""), "{shown}");
    let (_, shown) = edge_node_config(&["config", "show", "--nats", "tls://127.0.0.1:34222"], &env);
    assert!(shown.contains("nats = \"tls://127.0.0.1:34222\""), "{shown}");

    // What it shows is a settings file that gives the same settings.
    let (_, first) = edge_node_config(&["config", "show", "--config", path, "--default-cpus", "0.5"], &[]);
    let again = dir.path().join("again.toml");
    std::fs::write(&again, &first).unwrap();
    let (ok, second) = edge_node_config(&["config", "show", "--config", again.to_str().unwrap()], &[]);
    assert!(ok && first == second, "{first}\n---\n{second}");

    // A key no setting has is refused, naming it and the settings there are.
    std::fs::write(&file, "heartbeet = 2\n").unwrap();
    let (ok, said) = edge_node_config(&["config", "show", "--config", path], &[]);
    assert!(!ok && said.contains("`heartbeet` is not a setting") && said.contains("heartbeat"), "{said}");
}

#[test]
fn the_engines_settings_file_is_overridden_by_the_environment_and_the_flags_and_printed() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("engine.toml");
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:19080\"\nreplicas = 3\nno-dashboard = true\nmargo = \"127.0.0.1:19443\"\n",
    )
    .unwrap();
    let print = |args: &[&str], env: &[(&str, &str)]| binary_says("engine", args, env);
    let path = file.to_str().unwrap();
    let (ok, shown) = print(&["serve", "--config", path, "--print-config"], &[("NATS_URL", "tls://127.0.0.1:14222")]);
    assert!(ok, "{shown}");
    for line in [
        "listen = \"127.0.0.1:19080\"",
        "replicas = \"3\"",
        "no-dashboard = true",
        "margo = \"127.0.0.1:19443\"",
        "nats = \"tls://127.0.0.1:14222\"",
    ] {
        assert!(shown.contains(line), "{line} in {shown}");
    }
    let (_, shown) = print(&["serve", "--print-config", "--replicas", "5"], &[("ENGINE_CONFIG", path)]);
    assert!(shown.contains("replicas = \"5\"") && shown.contains("listen = \"127.0.0.1:19080\""), "{shown}");
    std::fs::write(&file, "listne = \"127.0.0.1:1\"\n").unwrap();
    let (ok, said) = print(&["serve", "--config", path, "--print-config"], &[]);
    assert!(!ok && said.contains("`listne` is not a setting of `serve`"), "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_health_says_whether_the_engine_serves() {
    let nats = tests::NatsServer::start().await;
    let engine = TestEngine::start(&nats).await;
    let ca = engine.trust().ca();
    let health = |api: String| {
        let ca = ca.clone();
        async move {
            let output = tokio::process::Command::new(tests::binary("engine"))
                .args(["--api", &api, "--ca", ca.to_str().unwrap(), "health"])
                .env_remove("ENGINE_CONFIG")
                .output()
                .await
                .unwrap();
            output.status.success()
        }
    };
    assert!(health(engine.url("")).await, "the engine serves");
    let closed = format!("https://127.0.0.1:{}", tests::free_port());
    assert!(!health(closed).await, "nothing serves there");
}
