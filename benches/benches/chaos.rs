//! Status truth under chaos: 100 simulated nodes on the real nats-server, each behind a link of
//! its own, for five minutes, while links are cut and healed, nodes killed and restarted,
//! containers stopped behind the nodes' backs, operators stopping, starting and updating, and
//! the engine restarted. After each heal, the time until the engine's view of that node says
//! what the node runs (`status_truth_p99_s`: running with the right image, or stopped; or a
//! request in flight beside the containers the node last reported, right about what runs), and
//! until it has also settled where the operator wants it (`converged_p99_s`, which waits for
//! the operators' last changes to be carried out too); at the end, once every link is healed,
//! the same for every node; and then the statuses still in
//! flight past the engine's deadline (`stuck`), the reports a node kept that the log never
//! recorded (`lost`), and containers or reports taken twice (`duplicates`). The nodes' clocks
//! are this machine's: a clock stepping back is covered by a test
//! (`tests/it/robustness.rs`), not simulated here.
//!
//! `cargo bench -p benches --bench chaos` (`CHAOS_NODES`, `CHAOS_SECS`, `CHAOS_SEED`; with
//! `CHAOS_SHOW_SLOW` set, each heal told after more than 2 s is named).

#![allow(clippy::print_stdout)]

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use benches::Api;
use edge_node::runtime::DEPLOYMENT_LABEL;
use serde_json::json;
use tests::chaos::{disagreement, says_the_truth, ChaosNode, Dice};
use tests::NatsServer;

/// Node `chaos-<i>` of the bench's engine, beating every second.
async fn chaos_node(nats: &NatsServer, api: &Api, i: usize) -> ChaosNode {
    let name = format!("chaos-{i:03}");
    let (beat, reconcile) = (Duration::from_secs(1), Duration::from_millis(500));
    ChaosNode::start(nats, &name, api.enroll(&name).await, api.ca.clone(), beat, reconcile).await
}

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Whether the engine's view says what `node` runs, for every deployment.
fn truthful(api: &Api, ids: &[String], node: &ChaosNode) -> bool {
    ids.iter()
        .filter_map(|id| api.engine.deployments.get("default", id).ok().flatten())
        .all(|view| says_the_truth(&view, &node.name, &node.runtime))
}

/// Where the engine's view and `node`'s truth differ now, over every deployment.
fn differences(api: &Api, ids: &[String], node: &ChaosNode) -> Vec<String> {
    ids.iter()
        .filter_map(|id| api.engine.deployments.get("default", id).ok().flatten())
        .filter_map(|view| disagreement(&view, &node.name, &node.runtime))
        .collect()
}

#[tokio::main]
async fn main() {
    let count: usize = env("CHAOS_NODES", 100);
    let seconds: u64 = env("CHAOS_SECS", 300);
    let seed: u64 = env("CHAOS_SEED", 0x00c4_a05b_e4c4_u64);
    let mut dice = Dice(seed);
    let slow_shown = std::env::var_os("CHAOS_SHOW_SLOW").is_some();
    if let Some(path) = std::env::var_os("CHAOS_LOG") {
        let file = std::fs::File::create(path).expect("the log file");
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                std::env::var("CHAOS_LOG_FILTER").unwrap_or_else(|_| "bus=info,edge_node=info,engine=warn".to_owned()),
            )
            .with_writer(std::sync::Mutex::new(file))
            .with_ansi(false)
            .try_init();
    }
    let mut slow_seen: HashSet<usize> = HashSet::new();
    let nats = NatsServer::start().await;
    let mut api = Api::start(&nats).await;
    let mut nodes = Vec::with_capacity(count);
    for i in 0..count {
        nodes.push(chaos_node(&nats, &api, i).await);
    }
    api.publish_sample(&tests::sim_image("1.0.0")).await;
    api.post("/v1/applications/sample/versions", json!({"version": "1.1.0", "image": tests::sim_image("1.1.0")})).await;
    api.post("/v1/applications/sample/versions/1.1.0/publish", json!({})).await;
    benches::until("every node to register", Duration::from_millis(100), || {
        api.engine.nodes.all_of("default").map(|n| n.len() >= count).unwrap_or(false)
    })
    .await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let body = json!({"application": "sample", "version": "1.0.0", "selector": {"site": "chaos"}});
        ids.push(api.post("/v1/deployments", body).await["id"].as_str().expect("a deployment id").to_owned());
    }
    benches::until("every node to run both deployments", Duration::from_millis(100), || {
        nodes.iter().all(|n| differences(&api, &ids, n).is_empty())
    })
    .await;
    println!("chaos: {count} nodes, {seconds} s, seed {seed:#x}");

    // Chaos, and after each heal the time until the engine says that node's truth.
    let started = Instant::now();
    let mut truths: Vec<f64> = Vec::new();
    let mut converged: Vec<f64> = Vec::new();
    // Healed nodes waited for: when, and whether the truth was told yet.
    let mut awaiting: BTreeMap<usize, (Instant, bool)> = BTreeMap::new();
    let mut cut: HashSet<usize> = HashSet::new();
    let mut stopped = [false, false];
    let mut version = ["1.0.0", "1.0.0"];
    let (mut actions, mut engine_restarts, mut last_restart) = (0usize, 0usize, Instant::now());
    while started.elapsed() < Duration::from_secs(seconds) {
        let node = dice.roll(count);
        let which = dice.roll(ids.len());
        match dice.roll(10) {
            0 | 1 => {
                nodes[node].link.cut();
                cut.insert(node);
                awaiting.remove(&node);
            }
            2 | 3 => {
                if let Some(&healed) = cut.iter().next() {
                    nodes[healed].link.heal();
                    cut.remove(&healed);
                    awaiting.insert(healed, (Instant::now(), false));
                }
            }
            4 => nodes[node].restart().await,
            5 => {
                let containers = nodes[node].runtime.containers();
                if let Some(c) = containers.get(dice.roll(containers.len())) {
                    nodes[node].runtime.stop_behind_its_back(&c.id);
                }
            }
            6 | 7 => {
                let verb = if stopped[which] { "start" } else { "stop" };
                let url = format!("{}/v1/deployments/{}/{verb}", api.url, ids[which]);
                if api.http.post(&url).json(&json!({})).send().await.is_ok_and(|r| r.status().as_u16() == 202) {
                    stopped[which] = !stopped[which];
                }
            }
            8 => {
                let next = if version[which] == "1.0.0" { "1.1.0" } else { "1.0.0" };
                let url = format!("{}/v1/deployments/{}/update", api.url, ids[which]);
                let update = json!({"version": next});
                if api.http.post(&url).json(&update).send().await.is_ok_and(|r| r.status().as_u16() == 202) {
                    version[which] = next;
                }
            }
            _ if last_restart.elapsed() > Duration::from_secs(60) => {
                let restarting = Instant::now();
                api = api.restart().await;
                if slow_shown {
                    println!(
                        "  the engine restarted in {:.1} s at {}",
                        restarting.elapsed().as_secs_f64(),
                        chrono::Utc::now()
                    );
                }
                engine_restarts += 1;
                last_restart = Instant::now();
            }
            _ => {}
        }
        actions += 1;
        // The nodes healed and waited for: each counts once the engine says its truth.
        awaiting.retain(|&n, (healed, told)| {
            if slow_shown && !*told && healed.elapsed() > Duration::from_secs(2) && !slow_seen.contains(&n) {
                slow_seen.insert(n);
                let now: Vec<String> = differences(&api, &ids, &nodes[n]).iter().map(|d| d.chars().take(400).collect()).collect();
                println!("  2 s after its heal, {}: {now:?}", nodes[n].name);
            }
            if !*told && truthful(&api, &ids, &nodes[n]) {
                slow_seen.remove(&n);
                truths.push(healed.elapsed().as_secs_f64());
                *told = true;
                if slow_shown && healed.elapsed() > Duration::from_secs(2) {
                    let (took, restart) = (healed.elapsed().as_secs_f64(), last_restart.elapsed().as_secs_f64());
                    let at = chrono::Utc::now() - chrono::Duration::milliseconds((took * 1000.0) as i64);
                    println!(
                        "  slow: {} told the truth {took:.1} s after its heal at {at} (engine restarted {restart:.1} s ago)",
                        nodes[n].name
                    );
                }
            }
            let agrees = differences(&api, &ids, &nodes[n]).is_empty();
            if agrees {
                converged.push(healed.elapsed().as_secs_f64());
            }
            !agrees && !cut.contains(&n)
        });
        tokio::time::sleep(Duration::from_millis(100 + dice.roll(200) as u64)).await;
    }

    // The end: every link healed, every node waited for.
    for &n in &cut {
        nodes[n].link.heal();
    }
    let healed = Instant::now();
    let (mut end_truths, mut end_converged) = (Vec::new(), Vec::new());
    let mut left: Vec<(usize, bool)> = (0..count).map(|n| (n, false)).collect();
    let deadline = healed + Duration::from_secs(300);
    while !left.is_empty() && Instant::now() < deadline {
        left.retain_mut(|(n, told)| {
            if !*told && truthful(&api, &ids, &nodes[*n]) {
                end_truths.push(healed.elapsed().as_secs_f64());
                *told = true;
            }
            let agrees = differences(&api, &ids, &nodes[*n]).is_empty();
            if agrees {
                end_converged.push(healed.elapsed().as_secs_f64());
            }
            !agrees
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let never: Vec<String> = left.iter().flat_map(|&(n, _)| differences(&api, &ids, &nodes[n])).collect();

    // In flight at the end, past the engine's deadline or not settled at all.
    let views: Vec<_> = ids.iter().filter_map(|id| api.engine.deployments.get("default", id).ok().flatten()).collect();
    let stuck =
        views.iter().flat_map(|v| v.nodes.values()).filter(|n| n.overdue.is_some() || !n.status.is_settled()).count();
    // Containers twice: a deployment with more than one container on a node.
    let mut duplicates = 0usize;
    for node in &nodes {
        for id in &ids {
            let of = node.runtime.containers().iter().filter(|c| c.labels.get(DEPLOYMENT_LABEL) == Some(id)).count();
            duplicates += of.saturating_sub(1);
        }
    }
    // Reports applied twice: a node's report (its id is the command's) behind two events of a pair.
    let store = api.engine.commands.store().clone();
    for node in &nodes {
        for id in &ids {
            let pair = events::deployment_node::id(id, &node.name);
            let loaded = store.load(&events::subject::aggregate("default", "deployment_node", &pair)).await;
            let causes: Vec<_> =
                loaded.map(|l| l.events).unwrap_or_default().iter().map(|e| e.envelope.causation_id).collect();
            let unique: HashSet<_> = causes.iter().collect();
            duplicates += causes.len() - unique.len();
        }
    }
    // Lost: reports a node kept and never had recorded, once every node stopped. What a node
    // said as every link came back (each status again) is given a few seconds to be sent.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for node in &mut nodes {
        node.task.abort();
        let _ = (&mut node.task).await;
    }
    let mut lost = 0usize;
    for node in &nodes {
        let db = sled::open(&node.config.data_dir).expect("the node's database");
        let outbox = edge_node::outbox::Outbox::open(&db, "", None).expect("its outbox");
        for pending in outbox.oldest(16).expect("the outbox reads") {
            let kept = events::Envelope::decode(&pending.bytes).map(|e| format!("{} of {}", e.event_type, e.time));
            println!("  kept by {} and never recorded: {}", node.name, kept.unwrap_or_else(|e| e.to_string()));
        }
        lost += outbox.len();
    }

    println!("chaos: {actions} actions, {engine_restarts} engine restarts, {} heals waited for", truths.len());
    percentiles("status_truth", &mut truths);
    percentiles("converged", &mut converged);
    percentiles("end_status_truth", &mut end_truths);
    percentiles("end_converged", &mut end_converged);
    println!("stuck: {stuck}");
    println!("lost: {lost}");
    println!("duplicates: {duplicates}");
    if !never.is_empty() {
        println!("never agreed within 300 s of the end:\n{}", never.join("\n"));
    }
}

/// Prints the p50, p99 and maximum of `figures` (seconds) as `<name>_p50_s` and so on.
fn percentiles(name: &str, figures: &mut [f64]) {
    figures.sort_by(f64::total_cmp);
    let at = |q: usize| figures.get((figures.len() * q / 100).min(figures.len().saturating_sub(1))).copied();
    let show = |f: Option<f64>| f.map_or("none".to_owned(), |f| format!("{f:.2}"));
    println!(
        "{name}_p50_s: {}  {name}_p99_s: {}  {name}_max_s: {}  ({} measured)",
        show(at(50)),
        show(at(99)),
        show(figures.last().copied()),
        figures.len()
    );
}
