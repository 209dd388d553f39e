//! Gathers the figures the benches recorded over several runs into `benches/results.json`:
//! for each figure its median, min and max and the number of runs, with the machine and the
//! date. Prints them as a Markdown table.
//!
//! `results FIGURES.jsonl OUT.json`

#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

/// The figures `results.json` holds, in order; the others are only printed.
const KEPT: [&str; 16] = [
    "command_path_ratio",
    "sign_event_us",
    "verify_event_us",
    "credentials_per_s",
    "rebuild_sled_ratio",
    "rebuild_memory_ratio",
    "launch_to_running_p99_ms_sim",
    "launch_to_running_p99_ms_docker",
    "fleet_1000_s",
    "fleet_10000_s",
    "fleet_10000_connected_s",
    "fleet_10000_nats_rss_mb",
    "reconnect_1000_s",
    "edge_rss_idle_mb",
    "edge_rss_10_workloads_mb",
    "edge_binary_mb",
];

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [figures, out] = &args[..] else {
        anyhow::bail!("usage: results FIGURES.jsonl OUT.json");
    };
    let mut values: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for (n, line) in std::fs::read_to_string(figures)?.lines().enumerate() {
        let figure: Value = serde_json::from_str(line).map_err(|e| anyhow::anyhow!("{figures}:{}: {e}", n + 1))?;
        let (Some(key), Some(value)) = (figure["key"].as_str(), figure["value"].as_f64()) else {
            anyhow::bail!("{figures}:{}: not a {{key, value}} figure", n + 1);
        };
        values.entry(key.to_owned()).or_default().push(value);
    }
    let summary = |key: &str| values.get(key).map(|v| summarise(v));
    let mut results = Map::new();
    for key in KEPT {
        let Some(figure) = summary(key) else { anyhow::bail!("no figure `{key}` in {figures}: did every bench run?") };
        results.insert(key.to_owned(), figure);
    }
    results.insert("machine".to_owned(), Value::String(machine()));
    results.insert("date".to_owned(), Value::String(chrono::Utc::now().format("%Y-%m-%d").to_string()));
    std::fs::write(out, serde_json::to_string_pretty(&Value::Object(results))? + "\n")?;

    println!("| figure | median | min | max | runs |");
    println!("|---|---:|---:|---:|---:|");
    for (key, figures) in &values {
        let f = summarise(figures);
        println!("| `{key}` | {} | {} | {} | {} |", show(&f["median"]), show(&f["min"]), show(&f["max"]), f["runs"]);
    }
    println!("\nwritten to {out}");
    Ok(())
}

fn summarise(values: &[f64]) -> Value {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    let median = if n % 2 == 1 { sorted[n / 2] } else { (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0 };
    json!({"median": round(median), "min": round(sorted[0]), "max": round(sorted[n - 1]), "runs": n})
}

fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn show(v: &Value) -> String {
    v.as_f64().map_or_else(|| v.to_string(), |x| format!("{x}"))
}

/// The CPU, its cores, the memory and the kernel of this machine.
fn machine() -> String {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned()))
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory_gib = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
    let kernel = read("/proc/sys/kernel/osrelease");
    format!("{cpu}, {cores} cores, {memory_gib:.0} GiB, Linux {}", kernel.trim())
}
