//! The `edge-node` binary: runs the agent of one node against Docker.
// The command line prints its answers.
#![allow(clippy::print_stdout)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use edge_node::docker::DockerRuntime;
use edge_node::local::{self, LocalReply, LocalRequest};
use edge_node::NodeConfig;

#[derive(Debug, Parser)]
#[command(name = "edge-node", about = "The edge agent: runs deployments on Docker and reports back", version)]
struct Cli {
    /// Log lines as JSON objects, one a line (with each span's fields), for a log collector.
    #[arg(long, global = true, env = "LOG_JSON")]
    log_json: bool,
    /// A TOML file of `run`'s settings, by flag name (`data-dir = "/var/lib/edge-node"`,
    /// `[label]` for the labels): the environment and the flags override it.
    #[arg(long, global = true, env = "EDGE_NODE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

// Parsed once, at start: its size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent.
    Run(RunArgs),
    /// The settings `run` would take, from its file, environment and flags.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Make the node's key pair: the seed goes to OUT (mode 0600) and never leaves the node;
    /// the public key is printed, for `engine node enroll --public-key`.
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// The workloads of the agent running on this machine; works with no link to the engine.
    #[command(subcommand)]
    Workloads(Workloads),
    /// Install the node as a systemd service: the binary, its key pair (made here), its
    /// enrollment with the engine, its settings and its unit.
    Install {
        /// The engine's API.
        #[arg(long)]
        engine: String,
        /// An installer's API token (`engine token create --role installer`), or an admin's, to
        /// enroll the node's key with: best from the environment, out of the process list.
        #[arg(long, env = "ENGINE_TOKEN", hide_env_values = true)]
        enroll: String,
        /// The certificate authority of the engine's API and of the servers (PEM).
        #[arg(long)]
        ca: PathBuf,
        #[arg(long, default_value = "tls://127.0.0.1:4222")]
        nats: String,
        #[arg(long, default_value = "default")]
        tenant: String,
        #[arg(long)]
        node: String,
        /// A label `key=value`; repeat for several.
        #[arg(long = "label", value_parser = parse_label)]
        labels: Vec<(String, String)>,
        /// Where the files go (a scratch directory to try it).
        #[arg(long, default_value = "/")]
        root: PathBuf,
    },
    /// Put a new binary in place of the installed one and restart the service: its settings,
    /// key, data and workloads stay, and what happened while it restarted waits for it.
    Upgrade {
        /// The new edge node binary (for this machine's architecture).
        #[arg(long)]
        binary: PathBuf,
        #[arg(long, default_value = "/")]
        root: PathBuf,
    },
    /// Remove the service, its binary and its settings; keep its data and workloads unless
    /// `--purge`.
    Uninstall {
        #[arg(long, default_value = "/")]
        root: PathBuf,
        /// Remove its data and its containers too.
        #[arg(long)]
        purge: bool,
        /// The node whose containers `--purge` removes, when its settings are gone already.
        #[arg(long)]
        node: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Print the effective settings as TOML (paths to secrets, never their contents).
    Show(RunArgs),
}

/// What `run` takes.
#[derive(Debug, Args)]
struct RunArgs {
    #[arg(long, env = "NATS_URL", default_value = "tls://127.0.0.1:4222")]
    nats: String,
    /// The node's credentials (`engine node enroll`).
    #[arg(long, env = "EDGE_NODE_CREDS")]
    creds: PathBuf,
    /// The node's seed, when the credentials hold only its JWT (`edge-node keygen`).
    #[arg(long, env = "EDGE_NODE_KEY")]
    key: Option<PathBuf>,
    /// The certificate authority of the servers' certificates.
    #[arg(long, env = "NATS_CA")]
    ca: Option<PathBuf>,
    #[arg(long, default_value = "default")]
    tenant: String,
    #[arg(long)]
    node: String,
    /// A label `key=value`; repeat for several.
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    #[arg(long, default_value = "edge-node-data")]
    data_dir: PathBuf,
    /// Seconds between heartbeats (with the containers' telemetry).
    #[arg(long, default_value_t = 5.0)]
    heartbeat: f64,
    /// Seconds between looks at the containers (drift) and at the steps under way
    /// (deadlines).
    #[arg(long, default_value_t = 5.0)]
    reconcile: f64,
    /// A host directory deployments may bind-mount (itself or below); repeat for several.
    /// None by default; `/`, the Docker socket, `/etc`, `/proc`, `/sys`, `/dev` and the
    /// like never.
    #[arg(long = "allow-bind")]
    allow_binds: Vec<String>,
    /// A registry images may come from (`host[:port]`, `docker.io` for Docker Hub); repeat
    /// for several.
    #[arg(long = "registry", default_value = events::policy::LOCAL_REGISTRY)]
    registries: Vec<String>,
    /// A container's memory where its version sets none (`512m`, `1g`).
    #[arg(long, value_parser = events::compose::parse_size)]
    default_memory: Option<i64>,
    /// A container's CPUs where its version sets none (`0.5`, `2`).
    #[arg(long, value_parser = parse_cpus)]
    default_cpus: Option<i64>,
    /// Serve the node's figures (Prometheus text format) at `/metrics` on this address.
    #[arg(long, requires = "metrics_token_file")]
    metrics_listen: Option<std::net::SocketAddr>,
    /// The bearer token a scrape must present (the file's first line).
    #[arg(long, requires = "metrics_listen")]
    metrics_token_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Workloads {
    /// List the workloads, with their status and whether one waits for an apply.
    List {
        #[arg(long, default_value = "edge-node-data")]
        data_dir: PathBuf,
    },
    /// Apply a staged workload: start what was downloaded. The engine hears of it when the
    /// link allows.
    Apply {
        /// The deployment id, or the application when only one of it is staged.
        #[arg(short = 'n', long = "name")]
        name: String,
        #[arg(long, default_value = "edge-node-data")]
        data_dir: PathBuf,
    },
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    let (key, value) = text.split_once('=').ok_or_else(|| format!("label `{text}` is not key=value"))?;
    events::subject::check_token("label key", key)?;
    Ok((key.to_owned(), value.to_owned()))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Keygen { out } => {
            if out.exists() {
                anyhow::bail!("{} exists already: a key is never overwritten", out.display());
            }
            let key = nkeys::KeyPair::new_user();
            let seed = key.seed().map_err(|e| anyhow::anyhow!("a new key has no seed: {e}"))?;
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut file = std::fs::OpenOptions::new()
                .create_new(true)
                .write(true)
                .mode(0o600)
                .open(&out)
                .with_context(|| format!("writing {}", out.display()))?;
            file.write_all(format!("{seed}\n").as_bytes()).with_context(|| format!("writing {}", out.display()))?;
            println!("{}", key.public_key());
            Ok(())
        }
        // Printed as it was given (`main`), so that it reads back the same.
        Command::Config(ConfigCommand::Show(_)) => Ok(()),
        Command::Run(RunArgs {
            nats,
            creds,
            key,
            ca,
            tenant,
            node,
            labels,
            data_dir,
            heartbeat,
            reconcile,
            allow_binds,
            registries,
            default_memory,
            default_cpus,
            metrics_listen,
            metrics_token_file,
        }) => {
            for (name, value) in [("--heartbeat", heartbeat), ("--reconcile", reconcile)] {
                if !(0.1..=3600.0).contains(&value) {
                    anyhow::bail!("{name} must be 0.1 to 3600 seconds, not {value}");
                }
            }
            events::subject::check_token("tenant", &tenant).map_err(anyhow::Error::msg)?;
            events::subject::check_token("node", &node).map_err(anyhow::Error::msg)?;
            let credentials = bus::Credentials::read(&creds, key.as_deref())
                .with_context(|| format!("reading the credentials {}", creds.display()))?;
            let policy = events::policy::Policy { binds: allow_binds, registries };
            policy.validate().map_err(|v| anyhow::anyhow!("--allow-bind or --registry: {v}"))?;
            let runtime = DockerRuntime::connect().await.context("connecting to Docker")?.confined_to(policy.clone());
            let default_limits =
                events::compose::Limits { memory: default_memory, nano_cpus: default_cpus, pids: None };
            let metrics = match (metrics_listen, metrics_token_file) {
                (Some(_), None) | (None, Some(_)) => {
                    anyhow::bail!("--metrics-listen and --metrics-token-file go together: give both or neither")
                }
                (Some(addr), Some(file)) => {
                    let text = std::fs::read_to_string(&file)
                        .with_context(|| format!("reading the metrics token {}", file.display()))?;
                    let token = text.lines().next().unwrap_or_default().trim().to_owned();
                    if token.len() < 16 {
                        anyhow::bail!("the metrics token in {} must be 16 characters or more", file.display());
                    }
                    Some(edge_node::metrics::MetricsListen { addr, token })
                }
                (None, None) => None,
            };
            let config = NodeConfig {
                nats_url: nats,
                credentials: Some(credentials),
                ca,
                tenant,
                node,
                labels: labels.into_iter().collect(),
                data_dir,
                heartbeat: std::time::Duration::from_secs_f64(heartbeat),
                reconcile: std::time::Duration::from_secs_f64(reconcile),
                policy,
                default_limits,
                metrics,
                ..NodeConfig::default()
            };
            edge_node::driver::run(config, Arc::new(runtime)).await
        }
        Command::Install { engine, enroll, ca, nats, tenant, node, labels, root } => {
            events::subject::check_token("node", &node).map_err(anyhow::Error::msg)?;
            let binary = std::env::current_exe().context("finding this binary")?;
            let plan = edge_node::install::Plan { root, engine, token: enroll, ca, nats, tenant, node, labels, binary };
            for written in edge_node::install::install(&plan).await? {
                println!("wrote {} ({:o})", written.path.display(), written.mode);
            }
            if plan.root == std::path::Path::new("/") {
                println!("start it: systemctl daemon-reload && systemctl enable --now {}", edge_node::install::SERVICE);
            }
            Ok(())
        }
        Command::Upgrade { binary, root } => {
            let (written, version) = edge_node::install::upgrade(&root, &binary)?;
            println!("wrote {} ({:o}): {version}", written.path.display(), written.mode);
            if root == std::path::Path::new("/") && edge_node::install::restart_service()? {
                println!("restarted {}", edge_node::install::SERVICE);
            } else {
                println!("start it again: systemctl restart {}", edge_node::install::SERVICE);
            }
            Ok(())
        }
        Command::Uninstall { root, purge, node } => {
            let settings = root.join(edge_node::install::CONFIG_DIR).join("config.toml");
            let installed = match bus::settings::read(&settings) {
                Ok(table) => table.get("node").and_then(|n| n.as_str()).map(str::to_owned),
                Err(_) => None,
            };
            if root == std::path::Path::new("/") {
                edge_node::install::stop_service()?;
            }
            // The containers first: a failure leaves everything in place to try again.
            if purge {
                let node = node.or(installed).context("--purge: give --node, the settings are gone")?;
                let removed =
                    DockerRuntime::connect().await.context("connecting to Docker")?.remove_node(&node).await?;
                println!("removed {removed} containers of node {node}");
            }
            for removed in edge_node::install::uninstall(&root, purge)? {
                println!("removed {}", removed.display());
            }
            Ok(())
        }
        Command::Workloads(Workloads::List { data_dir }) => {
            let reply = local::ask(&data_dir, &LocalRequest::List)?;
            let LocalReply::Workloads(workloads) = reply else { return answer(reply) };
            println!("{:<38}{:<18}{:<12}{:<14}STAGED", "DEPLOYMENT", "APPLICATION", "VERSION", "STATUS");
            for w in workloads {
                let staged = if w.staged { "waiting for apply" } else { "" };
                println!("{:<38}{:<18}{:<12}{:<14}{staged}", w.deployment, w.application, w.version, w.status);
            }
            Ok(())
        }
        Command::Workloads(Workloads::Apply { name, data_dir }) => {
            answer(local::ask(&data_dir, &LocalRequest::Apply { name })?)
        }
    }
}

/// CPUs (`0.5`) as billionths of a CPU.
fn parse_cpus(text: &str) -> Result<i64, String> {
    match text.parse::<f64>() {
        Ok(cpus) if (0.01..=1024.0).contains(&cpus) => Ok((cpus * 1e9).round() as i64),
        _ => Err(format!("`{text}` is not a number of CPUs from 0.01 to 1024")),
    }
}

/// Prints what the agent answered; an error is the command's failure.
fn answer(reply: LocalReply) -> anyhow::Result<()> {
    match reply {
        LocalReply::Applied { deployment } => {
            println!("applied {deployment}");
            Ok(())
        }
        LocalReply::Error(e) => anyhow::bail!(e),
        LocalReply::Workloads(_) => anyhow::bail!("an answer to another question"),
    }
}

/// The command line, over the settings file `--config` (or `EDGE_NODE_CONFIG`) names.
fn parse() -> anyhow::Result<Cli> {
    let args: Vec<String> = std::env::args().collect();
    let mut command = Cli::command();
    if let Some(path) = bus::settings::path_in(&args, "EDGE_NODE_CONFIG") {
        let table = bus::settings::read(&path)?;
        let run = command.find_subcommand("run").cloned().context("the run command")?;
        let run = bus::settings::defaults_from(run, &table, &path)?;
        let show = command.find_subcommand("config").and_then(|c| c.find_subcommand("show")).cloned();
        let show = bus::settings::defaults_from(show.context("the config show command")?, &table, &path)?;
        command =
            command.mut_subcommand("run", |_| run).mut_subcommand("config", |c| c.mut_subcommand("show", |_| show));
    }
    let matches = command.clone().get_matches_from(args);
    if let Some(("config", config)) = matches.subcommand() {
        if let (Some(("show", given)), Some(show)) =
            (config.subcommand(), command.find_subcommand("config").and_then(|c| c.find_subcommand("show")))
        {
            print!("{}", toml::to_string(&bus::settings::shown(show, given)).context("the settings as TOML")?);
        }
    }
    Ok(Cli::from_arg_matches(&matches)?)
}

fn main() -> ExitCode {
    let cli = match parse() {
        Ok(cli) => cli,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    // `RUST_LOG` as a list of `target=level` (`info,edge_node=debug`): the node keeps no
    // regular expression engine for span and field filters.
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|directives| match directives.parse::<tracing_subscriber::filter::Targets>() {
            Ok(targets) => Some(targets),
            Err(e) => {
                eprintln!("RUST_LOG `{directives}` is not a list of target=level: {e}; logging at info");
                None
            }
        })
        .unwrap_or_else(|| "info,async_nats=warn".parse().expect("a valid default"));
    let (json, text) = if cli.log_json {
        (Some(tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr)), None)
    } else {
        (None, Some(tracing_subscriber::fmt::layer().with_writer(std::io::stderr)))
    };
    tracing_subscriber::registry().with(json).with(text).with(filter).init();
    // A panic in any task ends the node, whatever the build's panic strategy: a task dead
    // beside live ones (reports no longer sent while heartbeats go on) would be a node that
    // lies about itself. Its service starts it again from what it keeps on disk.
    std::panic::set_hook(Box::new(|panic| {
        tracing::error!(%panic, "the edge node panicked and stops");
        std::process::abort();
    }));
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
