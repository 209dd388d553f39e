//! The operator command line: `serve` runs the engine, every other verb calls its HTTP API.

#![allow(clippy::print_stdout)]
// It reads the engine's JSON answers by key: indexing a `serde_json::Value` to read never panics
// (a missing key is `null`), and it writes only into objects it made.
#![allow(clippy::indexing_slicing)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use serde_json::{json, Value};

use events::projection::deployments::DeploymentView;
use events::Status;

use engine::api::HistoryEntry;
use engine::{Engine, EngineConfig};

#[derive(Debug, Parser)]
#[command(name = "engine", about = "Event-sourced orchestration of edge applications", version)]
pub struct Cli {
    /// The engine's HTTP API.
    #[arg(long, global = true, env = "ENGINE_API", default_value = "https://127.0.0.1:8080")]
    api: String,
    /// The tenant to act on: the token's own when absent (or `default`, for a token of every
    /// tenant).
    #[arg(long, global = true, env = "ENGINE_TENANT")]
    tenant: Option<String>,
    /// The API token (`<id>.<secret>`); the engine's first is in its data directory, `admin.token`.
    #[arg(long, global = true, env = "ENGINE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The certificate authority (PEM) of an engine whose API speaks HTTPS.
    #[arg(long, global = true, env = "ENGINE_CA")]
    ca: Option<PathBuf>,
    /// Log lines as JSON objects, one a line (with each span's fields), for a log collector.
    #[arg(long, global = true, env = "LOG_JSON")]
    log_json: bool,
    /// How a read verb prints what it read: a table for people, or the API's JSON.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Output::Text)]
    output: Output,
    /// A TOML file of `serve`'s settings, by flag name: the environment and the flags override
    /// it.
    #[arg(long, global = true, env = "ENGINE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

/// The command line, over the settings file `--config` (or `ENGINE_CONFIG`) names. With
/// `serve --print-config`, prints the settings it would run with and exits.
pub fn parse() -> anyhow::Result<Cli> {
    use clap::{CommandFactory, FromArgMatches};
    let args: Vec<String> = std::env::args().collect();
    let mut command = Cli::command();
    if let Some(path) = bus::settings::path_in(&args, "ENGINE_CONFIG") {
        let table = bus::settings::read(&path)?;
        let serve = command.find_subcommand("serve").cloned().context("the serve command")?;
        let serve = bus::settings::defaults_from(serve, &table, &path)?;
        command = command.mut_subcommand("serve", |_| serve);
    }
    let matches = command.clone().get_matches_from(args);
    if let (Some(("serve", given)), Some(serve)) = (matches.subcommand(), command.find_subcommand("serve")) {
        if given.get_flag("print_config") {
            let mut shown = bus::settings::shown(serve, given);
            shown.remove("print-config");
            print!("{}", toml::to_string(&shown).context("the settings as TOML")?);
            std::process::exit(0);
        }
    }
    Ok(Cli::from_arg_matches(&matches)?)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Output {
    Text,
    Json,
}

/// New values for a deployment: they replace its profile, its overrides, or both.
#[derive(Debug, clap::Args)]
struct ValuesArgs {
    /// A profile of the version, in place of the deployment's.
    #[arg(long)]
    profile: Option<String>,
    /// A parameter value (`NAME=value`); repeat for several. Given, they replace the
    /// deployment's overrides whole.
    #[arg(long = "set", value_parser = key_value)]
    overrides: Vec<(String, String)>,
}

impl ValuesArgs {
    /// The fields of an update's body that carry them.
    fn json(&self, body: &mut Value) {
        if let Some(profile) = &self.profile {
            body["profile"] = json!(profile);
        }
        if !self.overrides.is_empty() {
            body["overrides"] = json!(string_map(&self.overrides));
        }
    }
}

/// `--watch`, and how long it follows.
#[derive(Debug, clap::Args)]
struct WatchArgs {
    /// Follow the status until every node is running or failed.
    #[arg(long)]
    watch: bool,
    /// How long `--watch` follows it.
    #[arg(long, default_value = "120s", value_parser = humantime_secs)]
    timeout: Duration,
}

/// What to launch, and where.
#[derive(Debug, clap::Args)]
struct LaunchArgs {
    #[arg(long = "app")]
    application: String,
    #[arg(long)]
    version: String,
    /// A target node; repeat for several.
    #[arg(long = "node", required_unless_present = "selector", conflicts_with = "selector")]
    nodes: Vec<String>,
    /// Every node with these labels (`key=value,key=value`), as nodes come and go; preview
    /// which with `engine nodes --selector`.
    #[arg(long)]
    selector: Option<String>,
    /// A profile of the version: a named set of parameter values.
    #[arg(long)]
    profile: Option<String>,
    /// A parameter value over the defaults and the profile (`NAME=value`); repeat for several.
    #[arg(long = "set", value_parser = key_value)]
    overrides: Vec<(String, String)>,
    /// A value the containers get that is never stored or shown in clear, sealed at once:
    /// `NAME` takes it from this command's environment variable NAME (kept out of the
    /// process list and the shell's history), `NAME=value` as given; repeat for several.
    #[arg(long = "secret", value_parser = secret_value)]
    secrets: Vec<(String, String)>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the engine: API, projectors, router and report ingestor. Its settings may come from
    /// a TOML file (`--config`, or `ENGINE_CONFIG`), each key a flag's name; the environment
    /// and the flags override it.
    Serve {
        /// Print the settings it would run with, as a file of that form, and stop.
        #[arg(long)]
        print_config: bool,
        #[arg(long, env = "NATS_URL", default_value = "tls://127.0.0.1:4222")]
        nats: String,
        /// The trust directory made by `engine trust init`.
        #[arg(long, env = "ENGINE_TRUST", default_value = "trust")]
        trust: PathBuf,
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Where the web dashboard listens (HTTPS, like the API).
        #[arg(long, default_value = "127.0.0.1:8081", conflicts_with = "no_dashboard")]
        dashboard: SocketAddr,
        /// Serve no dashboard.
        #[arg(long)]
        no_dashboard: bool,
        /// Serve Margo devices: where the Workload Fleet Manager API listens (HTTPS, with the
        /// API's certificate).
        #[arg(long)]
        margo: Option<SocketAddr>,
        /// How often Margo devices poll, in seconds: three polls missed, a device is
        /// unreachable.
        #[arg(long, default_value_t = 30)]
        margo_poll_interval: u64,
        #[arg(long, default_value = "engine-data")]
        data_dir: PathBuf,
        /// Copies of every event across a JetStream cluster: 3 survives a server's loss.
        #[arg(long, default_value_t = 1)]
        replicas: usize,
        /// The API's certificate chain (PEM), with `--tls-key`; the trust directory's server
        /// certificate when absent. The API speaks HTTPS only.
        #[arg(long, requires = "tls_key")]
        tls_cert: Option<PathBuf>,
        /// The private key (PEM) of `--tls-cert`.
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Requests per second each API token may make, sustained.
        #[arg(long, default_value_t = engine::auth::RateLimit::default().per_second)]
        rate_limit: std::num::NonZeroU32,
        /// Requests a token may make at once above its sustained rate.
        #[arg(long, default_value_t = engine::auth::RateLimit::default().burst)]
        rate_burst: std::num::NonZeroU32,
        /// Seconds a node may take to pick up work (a `pending_*` status) before the engine
        /// records it overdue.
        #[arg(long, default_value_t = events::status::Deadlines::default().pending.as_secs())]
        pending_deadline: u64,
        /// Seconds a download may take before the engine records it overdue.
        #[arg(long, default_value_t = events::status::Deadlines::default().download.as_secs())]
        download_deadline: u64,
        /// Seconds any other step may take before the engine records it overdue.
        #[arg(long, default_value_t = events::status::Deadlines::default().step.as_secs())]
        step_deadline: u64,
    },
    /// API tokens: make and revoke them (an admin's token is needed).
    #[command(subcommand)]
    Token(TokenCommand),
    /// The keys, certificates and nats-server configuration of a deployment of the engine.
    #[command(subcommand)]
    Trust(TrustCommand),
    /// Enroll and revoke edge nodes.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Read-only credentials for subscribers and auditors.
    #[command(subcommand)]
    Credential(CredentialCommand),
    /// Manage the catalog.
    #[command(subcommand)]
    App(AppCommand),
    /// Launch a published version onto nodes.
    Launch {
        #[command(flatten)]
        what: LaunchArgs,
        #[command(flatten)]
        mode: ModeArgs,
        #[command(flatten)]
        rollout: RolloutArgs,
        #[command(flatten)]
        watch: WatchArgs,
    },
    /// Stage a published version on nodes: each downloads it and waits for `engine apply`
    /// (what `launch --staged --instantly-apply false` does).
    Stage {
        #[command(flatten)]
        what: LaunchArgs,
        #[command(flatten)]
        rollout: RolloutArgs,
        #[command(flatten)]
        watch: WatchArgs,
    },
    /// Stop a deployment's containers on every node; they and their images stay.
    Stop {
        /// The deployment, or a prefix of its id only it has.
        id: String,
        #[command(flatten)]
        watch: WatchArgs,
    },
    /// Start a stopped deployment again.
    Start {
        id: String,
        #[command(flatten)]
        watch: WatchArgs,
    },
    /// Remove a deployment's containers from every node, and the images nothing else uses.
    Uninstall {
        id: String,
        #[command(flatten)]
        watch: WatchArgs,
    },
    /// Move a deployment to another published version: download first, switch after.
    Update {
        id: String,
        #[arg(long)]
        version: String,
        #[command(flatten)]
        mode: ModeArgs,
        #[command(flatten)]
        rollout: RolloutArgs,
        /// Go back by itself if the new version fails to start, or stops running within this
        /// many seconds on a node.
        #[arg(long)]
        rollback_within: Option<u32>,
        #[command(flatten)]
        values: ValuesArgs,
        #[command(flatten)]
        watch: WatchArgs,
    },
    /// Run the version a deployment has again with another profile or other values: a failed
    /// launch fixed in place.
    Redeploy {
        id: String,
        #[command(flatten)]
        values: ValuesArgs,
        #[command(flatten)]
        watch: WatchArgs,
    },
    /// Take what the version's tags name now (asked of the registry again); recreate only the
    /// containers whose digest changed.
    ForceUpdate {
        id: String,
        #[command(flatten)]
        watch: WatchArgs,
    },
    /// Start staged deployments, one or several at once.
    Apply {
        #[arg(required = true)]
        ids: Vec<String>,
        #[command(flatten)]
        watch: WatchArgs,
    },
    /// Counts (running, failed, pending, stopped, total) per deployment, node, application and version.
    Summary,
    /// Deployments running an older version than the newest published one.
    Notifications {
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[arg(long)]
        cursor: Option<String>,
    },
    /// List deployments, a page at a time; the removed only with `--all`.
    List {
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[arg(long)]
        cursor: Option<String>,
        /// Only staged (true) or only not staged (false) deployments.
        #[arg(long)]
        staged: Option<bool>,
        /// Only deployments in this status.
        #[arg(long, value_parser = status_name)]
        status: Option<String>,
        /// Only deployments of this application.
        #[arg(long = "app")]
        application: Option<String>,
        /// Only deployments of this version.
        #[arg(long)]
        version: Option<String>,
        /// Only deployments on this node.
        #[arg(long)]
        node: Option<String>,
        /// The removed deployments too.
        #[arg(long)]
        all: bool,
    },
    /// The tenant's nodes, a page at a time: labels and state.
    Nodes {
        /// Only the nodes a launch with this selector (`key=value,key=value`) reaches now.
        #[arg(long)]
        selector: Option<String>,
        /// Only the nodes in this state.
        #[arg(long, value_parser = ["enrolled", "online", "offline", "unreachable", "revoked"])]
        state: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[arg(long)]
        cursor: Option<String>,
    },
    /// The catalog: applications and their versions, a page at a time.
    Apps {
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Every status a deployment went through, on every node, from the log.
    History { id: String },
    /// Tenants: delete one (an admin's token is needed).
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Print a shell's completion script: `engine completions bash > /etc/bash_completion.d/engine`.
    Completions { shell: clap_complete::Shell },
    /// Whether the engine at `--api` serves (its `/healthz`): exit 0 if it does, 1 if not. The
    /// container image's health check.
    Health,
    /// A page of a deployment's container logs (200 lines); `--all` reads to the end, `--follow`
    /// then waits for more. The cursor of the next page goes to stderr.
    Logs {
        id: String,
        #[arg(long)]
        node: Option<String>,
        #[arg(long)]
        cursor: Option<String>,
        #[arg(long)]
        all: bool,
        /// Read to the end, then print each new line as it is written, until interrupted.
        #[arg(long, short = 'f')]
        follow: bool,
        /// Only the last N lines of each container.
        #[arg(long)]
        tail: Option<usize>,
        /// Each line begins with when it was written (RFC 3339).
        #[arg(long, short = 't')]
        timestamps: bool,
    },
    /// Show one deployment.
    Get { id: String },
    /// Follow a deployment's status as it changes, until every node is running or failed.
    Watch {
        id: String,
        #[arg(long, default_value = "120s", value_parser = humantime_secs)]
        timeout: Duration,
    },
}

/// A phased rollout: `--batch 2` or `--batch 25%` nodes at a time.
#[derive(Debug, clap::Args)]
struct RolloutArgs {
    /// At most this many nodes (or this percent of them, `25%`) at a time.
    #[arg(long)]
    batch: Option<String>,
    /// Halt the rollout once more than this many of the nodes it reached failed.
    #[arg(long, default_value_t = 0, requires = "batch")]
    max_failures: u32,
}

impl RolloutArgs {
    fn json(&self) -> Value {
        match &self.batch {
            None => Value::Null,
            Some(batch) => {
                let batch = batch.parse::<u32>().map_or_else(|_| json!(batch), |n| json!(n));
                json!({"batch": batch, "max_failures": self.max_failures})
            }
        }
    }
}

/// Kelvin's modes: `--staged` downloads first; with `--instantly-apply false` it then waits
/// for `engine apply`.
#[derive(Debug, clap::Args)]
struct ModeArgs {
    #[arg(long)]
    staged: bool,
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    instantly_apply: bool,
}

#[derive(Debug, Subcommand)]
enum TrustCommand {
    /// Make the operator, the account and its signing key, the engine's and the system
    /// user's credentials, a certificate authority and the server's certificate, and
    /// nats-server's configuration (`nats.conf`), in DIR; secrets mode 0600. Does nothing
    /// where DIR holds them already.
    Init {
        #[arg(long)]
        dir: PathBuf,
        /// A name or address the server's certificate is valid for; repeat for several.
        #[arg(long = "host", default_values = ["127.0.0.1", "localhost"])]
        hosts: Vec<String>,
    },
    /// Make the servers' certificate anew in DIR, with a new key, signed by its authority:
    /// whatever trusts `ca.pem` trusts it. nats-server takes it on a reload (SIGHUP), an
    /// engine's API on a restart.
    Renew {
        #[arg(long)]
        dir: PathBuf,
        /// A name or address the certificate is valid for; repeat for several.
        #[arg(long = "host", default_values = ["127.0.0.1", "localhost"])]
        hosts: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum TenantCommand {
    /// Delete a tenant: its deployments are removed from every node and its read models
    /// forgotten; no further command is taken for it.
    Delete {
        id: String,
        /// Yes, delete it: nothing is done without.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Make a token; its secret is shown once. The tenant is `--tenant`, or every tenant with
    /// `--all-tenants`.
    Create {
        /// Who the token stands for: the actor recorded in every event it causes.
        #[arg(long)]
        subject: String,
        /// A role: admin, vendor, operator, auditor or installer; repeat for several.
        #[arg(long = "role", required = true)]
        roles: Vec<events::token::Role>,
        /// A token of every tenant (only another such token may make one).
        #[arg(long)]
        all_tenants: bool,
    },
    /// Revoke a token by its id: it never works again.
    Revoke { id: String },
}

#[derive(Debug, Subcommand)]
enum NodeCommand {
    /// Give a node of the tenant its credential (the tenant is `--tenant`). With
    /// `--public-key` (from `edge-node keygen`) the seed never leaves the node; enrolling again
    /// with a new key rotates it, and the old key is revoked.
    Enroll {
        node: String,
        /// A label `key=value` the node cannot override; repeat for several.
        #[arg(long = "label", value_parser = key_value)]
        labels: Vec<(String, String)>,
        #[arg(long)]
        public_key: Option<String>,
        /// Where to write the credentials (mode 0600); printed otherwise.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Revoke a node's credential: it is cut off and may not connect again.
    Revoke { node: String },
    /// One node: labels, state, when it was last heard.
    Get { node: String },
}

#[derive(Debug, Subcommand)]
enum CredentialCommand {
    /// A credential that reads `ev.<tenant>.>` through its own consumer, and writes nothing.
    Subscriber {
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// A credential that reads every tenant's events, and writes nothing.
    Auditor {
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// Writes credentials to `out` (mode 0600), or prints them.
fn deliver(answer: &Value, out: Option<&PathBuf>) -> anyhow::Result<()> {
    let creds = answer["creds"].as_str().context("the engine answered no credentials")?;
    let Some(path) = out else {
        print!("{creds}");
        return Ok(());
    };
    bus::creds::write_secret(path, creds).with_context(|| format!("writing {}", path.display()))?;
    let mut shown = answer.clone();
    shown["creds"] = json!(path.display().to_string());
    print_json(&shown);
    Ok(())
}

#[derive(Debug, Subcommand)]
enum AppCommand {
    /// Register an application.
    Register {
        id: String,
        #[arg(long)]
        name: String,
    },
    /// Add a draft version: one image, or the services of a compose file.
    AddVersion {
        id: String,
        version: String,
        #[arg(long, required_unless_present = "compose", conflicts_with = "compose")]
        image: Option<String>,
        /// A compose file: its services, environment with defaults, ports, volumes and
        /// restart policies.
        #[arg(long)]
        compose: Option<PathBuf>,
        /// A parameter a launch may set, with its default (`NAME=default`); repeat for several.
        #[arg(long = "param", value_parser = key_value)]
        parameters: Vec<(String, String)>,
        /// A named set of parameter values (`PROFILE:NAME=value`); repeat for several.
        #[arg(long = "profile", value_parser = profile_value)]
        profiles: Vec<(String, String, String)>,
        /// A variable each launch must give sealed (`--secret` at launch), never in clear; repeat
        /// for several.
        #[arg(long = "secret")]
        secrets: Vec<String>,
    },
    /// Publish a version: it becomes launchable and immutable, each image pinned to the digest
    /// its tag names now.
    Publish { id: String, version: String },
    /// Show an application and its versions.
    Show { id: String },
    /// Delete a draft version (a published one is withdrawn instead).
    DeleteVersion { id: String, version: String },
    /// Withdraw (yank) a published version: no launch or update may take it; the deployments
    /// that run it go on.
    Withdraw {
        id: String,
        version: String,
        /// Why, for whoever reads the catalog and the log.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Delete an application that has no live deployment; its id may be registered again.
    Delete { id: String },
}

fn key_value(text: &str) -> Result<(String, String), String> {
    let (key, value) = text.split_once('=').ok_or_else(|| format!("`{text}` is not NAME=value"))?;
    Ok((key.to_owned(), value.to_owned()))
}

/// `PROFILE:NAME=value`.
fn profile_value(text: &str) -> Result<(String, String, String), String> {
    let (profile, pair) = text.split_once(':').ok_or_else(|| format!("`{text}` is not PROFILE:NAME=value"))?;
    let (name, value) = key_value(pair)?;
    Ok((profile.to_owned(), name, value))
}

/// `NAME=value`, or `NAME` with the value of the environment variable NAME.
fn secret_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) => Ok((name.to_owned(), value.to_owned())),
        None => std::env::var(text)
            .map(|value| (text.to_owned(), value))
            .map_err(|_| format!("`{text}` is not NAME=value, and no environment variable {text} is set")),
    }
}

/// `NAME=value` pairs as a JSON object of strings.
fn string_map(pairs: &[(String, String)]) -> serde_json::Map<String, Value> {
    pairs.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect()
}

fn humantime_secs(text: &str) -> Result<Duration, String> {
    let digits = text.strip_suffix('s').unwrap_or(text);
    digits.parse::<u64>().map(Duration::from_secs).map_err(|_| format!("`{text}` is not a number of seconds"))
}

impl Cli {
    pub fn log_json(&self) -> bool {
        self.log_json
    }

    pub async fn run(self) -> anyhow::Result<ExitCode> {
        // Commands that call no API need no client of it, nor the CA one would trust (which
        // `trust init` may be about to make).
        let local = matches!(self.command, Command::Serve { .. } | Command::Trust(_) | Command::Completions { .. });
        let http = match (&self.ca, self.api.starts_with("https:")) {
            _ if local => engine::api_client(None)?,
            (None, true) => {
                anyhow::bail!(
                    "the API at {} speaks HTTPS: give its certificate authority with --ca or ENGINE_CA",
                    self.api
                )
            }
            (ca, _) => engine::api_client(ca.as_deref())?,
        };
        let client = Client { http, cli: &self };
        match &self.command {
            Command::Serve {
                print_config: _,
                nats,
                trust,
                listen,
                dashboard,
                no_dashboard,
                margo,
                margo_poll_interval,
                data_dir,
                replicas,
                tls_cert,
                tls_key,
                rate_limit,
                rate_burst,
                pending_deadline,
                download_deadline,
                step_deadline,
            } => {
                let tls = match tls_cert.clone().zip(tls_key.clone()) {
                    Some((cert, key)) => engine::ApiTls { cert, key },
                    None => engine::trust::Trust::server_tls(trust),
                };
                let config = EngineConfig {
                    store: bus::store::StoreConfig { replicas: *replicas, ..Default::default() },
                    nats_url: nats.clone(),
                    trust_dir: trust.clone(),
                    listen: *listen,
                    dashboard: (!no_dashboard).then_some(*dashboard),
                    margo: *margo,
                    margo_poll_interval: Duration::from_secs(*margo_poll_interval),
                    data_dir: data_dir.clone(),
                    rate_limit: engine::auth::RateLimit { per_second: *rate_limit, burst: *rate_burst },
                    tls: Some(tls),
                    deadlines: events::status::Deadlines {
                        pending: Duration::from_secs(*pending_deadline),
                        download: Duration::from_secs(*download_deadline),
                        step: Duration::from_secs(*step_deadline),
                    },
                    ..EngineConfig::default()
                };
                Engine::start(config).await?.wait().await?;
            }
            Command::Trust(TrustCommand::Renew { dir, hosts }) => {
                let hosts: Vec<&str> = hosts.iter().map(String::as_str).collect();
                engine::trust::Trust::load(dir)?.renew_server_certificate(&hosts)?;
                println!("renewed the servers' certificate in {} for {}", dir.display(), hosts.join(", "));
            }
            Command::Trust(TrustCommand::Init { dir, hosts }) => {
                let hosts: Vec<&str> = hosts.iter().map(String::as_str).collect();
                let trust = engine::trust::Trust::init(dir, &hosts)?;
                println!("trust directory {}", dir.display());
                println!("  nats-server configuration: {}", trust.server_config_file().display());
                println!("  certificate authority:     {}", trust.ca().display());
                println!("  engine key:                {}", trust.facts().engine);
            }
            Command::Token(TokenCommand::Create { subject, roles, all_tenants }) => {
                let tenant = match (&self.tenant, all_tenants) {
                    (Some(tenant), false) => json!(tenant),
                    (None, true) => Value::Null,
                    _ => anyhow::bail!("name the token's tenant with `--tenant`, or give `--all-tenants`"),
                };
                let body = json!({"subject": subject, "tenant": tenant, "roles": roles});
                print_json(&client.post("/v1/tokens", body).await?)
            }
            Command::Token(TokenCommand::Revoke { id }) => {
                print_json(&client.post(&format!("/v1/tokens/{id}/revoke"), json!({})).await?)
            }
            Command::Node(NodeCommand::Enroll { node, labels, public_key, out }) => {
                let body = json!({"labels": string_map(labels), "public_key": public_key});
                deliver(&client.post(&format!("/v1/nodes/{node}/enroll"), body).await?, out.as_ref())?;
            }
            Command::Node(NodeCommand::Revoke { node }) => {
                print_json(&client.post(&format!("/v1/nodes/{node}/revoke"), json!({})).await?)
            }
            Command::Credential(CredentialCommand::Subscriber { name, out }) => {
                deliver(&client.post("/v1/credentials/subscriber", json!({"name": name})).await?, out.as_ref())?
            }
            Command::Credential(CredentialCommand::Auditor { name, out }) => {
                deliver(&client.post("/v1/credentials/auditor", json!({"name": name})).await?, out.as_ref())?
            }
            Command::App(AppCommand::Register { id, name }) => {
                print_json(&client.post("/v1/applications", json!({ "id": id, "name": name })).await?)
            }
            Command::App(AppCommand::AddVersion { id, version, image, compose, parameters, profiles, secrets }) => {
                let mut named = serde_json::Map::new();
                for (profile, name, value) in profiles {
                    let values = named.entry(profile.clone()).or_insert_with(|| json!({}));
                    values[name] = json!(value);
                }
                let mut body = json!({
                    "version": version,
                    "image": image,
                    "parameters": string_map(parameters),
                    "profiles": named,
                    "secrets": secrets,
                });
                if let Some(path) = compose {
                    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
                    body["compose"] = json!(text);
                    body["image"] = Value::Null;
                }
                print_json(&client.post(&format!("/v1/applications/{id}/versions"), body).await?)
            }
            Command::App(AppCommand::Publish { id, version }) => {
                match client.post(&format!("/v1/applications/{id}/versions/{version}/publish"), json!({})).await {
                    Err(e) if already(&e) => println!("{id} {version}: {}; nothing to do", failure_message(&e)),
                    answer => print_json(&answer?),
                }
            }
            Command::App(AppCommand::DeleteVersion { id, version }) => {
                let path = format!("/v1/applications/{id}/versions/{version}");
                print_json(&client.send(client.request(reqwest::Method::DELETE, &path)).await?)
            }
            Command::App(AppCommand::Withdraw { id, version, reason }) => {
                let path = format!("/v1/applications/{id}/versions/{version}/withdraw");
                match client.post(&path, json!({ "reason": reason })).await {
                    Err(e) if already(&e) => println!("{id} {version}: {}; nothing to do", failure_message(&e)),
                    answer => print_json(&answer?),
                }
            }
            Command::App(AppCommand::Delete { id }) => {
                client.send(client.request(reqwest::Method::DELETE, &format!("/v1/applications/{id}"))).await?;
                println!("application {id} deleted");
            }
            Command::App(AppCommand::Show { id }) => print_json(&client.get(&format!("/v1/applications/{id}")).await?),
            Command::Launch { what, mode, rollout, watch } => {
                return client.launch(what, mode.staged, mode.instantly_apply, rollout, watch, "launched").await;
            }
            Command::Stage { what, rollout, watch } => {
                return client.launch(what, true, false, rollout, watch, "staged").await;
            }
            Command::Stop { id, watch } => return client.request_change(id, "stop", watch).await,
            Command::Start { id, watch } => return client.request_change(id, "start", watch).await,
            Command::Uninstall { id, watch } => return client.request_change(id, "uninstall", watch).await,
            Command::ForceUpdate { id, watch } => return client.request_change(id, "force-update", watch).await,
            Command::Redeploy { id, values, watch } => {
                if values.profile.is_none() && values.overrides.is_empty() {
                    anyhow::bail!("give the new values: --profile, --set NAME=value, or both");
                }
                let id = client.deployment_id(id).await?;
                let view = client.get(&format!("/v1/deployments/{id}")).await?;
                let version = view["version"].as_str().context("the deployment has no version")?.to_owned();
                let mut body = json!({ "version": version });
                values.json(&mut body);
                return client.update(&id, body, &format!("redeploy of deployment {id} at {version}"), watch).await;
            }
            Command::Update { id, version, mode, rollout, rollback_within, values, watch } => {
                let id = client.deployment_id(id).await?;
                let mut body = json!({
                    "version": version,
                    "staged": mode.staged,
                    "instantly_apply": mode.instantly_apply,
                    "rollout": rollout.json(),
                    "rollback_within": rollback_within,
                });
                values.json(&mut body);
                return client.update(&id, body, &format!("update of deployment {id} to {version}"), watch).await;
            }
            Command::Summary => {
                let summary = client.get("/v1/summary").await?;
                if self.output == Output::Json {
                    print_json(&summary);
                    return Ok(ExitCode::SUCCESS);
                }
                let groups = [
                    ("DEPLOYMENT", "by_deployment"),
                    ("NODE", "by_node"),
                    ("APPLICATION@VERSION", "by_application_version"),
                ];
                for (title, key) in groups {
                    println!(
                        "{title:<38} {:>8} {:>8} {:>8} {:>8} {:>8}",
                        "RUNNING", "FAILED", "PENDING", "STOPPED", "TOTAL"
                    );
                    for (name, c) in summary[key].as_object().into_iter().flatten() {
                        let n = |k: &str| c[k].as_u64().unwrap_or(0);
                        println!(
                            "{name:<38} {:>8} {:>8} {:>8} {:>8} {:>8}",
                            n("running"),
                            n("failed"),
                            n("pending"),
                            n("stopped"),
                            n("total")
                        );
                    }
                    println!();
                }
            }
            Command::Notifications { limit, cursor } => {
                let page = client.get(&paged("/v1/notifications", *limit, cursor.as_deref())).await?;
                if self.output == Output::Json {
                    print_json(&page);
                    return Ok(ExitCode::SUCCESS);
                }
                println!(
                    "{:<36}  {:<16}  {:<10}  {:<10}  {:<24}  NODES",
                    "DEPLOYMENT", "APPLICATION", "RUNS", "AVAILABLE", "PUBLISHED"
                );
                for n in page["items"].as_array().into_iter().flatten() {
                    let text = |key: &str| n[key].as_str().unwrap_or_default().to_owned();
                    let nodes: Vec<&str> =
                        n["nodes"].as_array().into_iter().flatten().filter_map(|v| v.as_str()).collect();
                    println!(
                        "{:<36}  {:<16}  {:<10}  {:<10}  {:<24}  {}",
                        text("deployment"),
                        text("application"),
                        text("current_version"),
                        text("available_version"),
                        text("published_at"),
                        nodes.join(",")
                    );
                }
                next_page(&page);
            }
            Command::Apply { ids, watch } => {
                let mut resolved = Vec::with_capacity(ids.len());
                for id in ids {
                    resolved.push(client.deployment_id(id).await?);
                }
                let ids = &resolved;
                let answer = client.post("/v1/deployments/apply", json!({ "deployments": ids })).await?;
                let mut failed = false;
                for result in answer["results"].as_array().into_iter().flatten() {
                    let id = result["id"].as_str().unwrap_or_default();
                    match result["error"].as_str() {
                        None => println!("apply of deployment {id} requested"),
                        Some(error) => {
                            failed = true;
                            println!("apply of deployment {id} refused: {error}");
                        }
                    }
                }
                if watch.watch {
                    for id in ids {
                        if client.watch(id, watch.timeout, 0).await? != ExitCode::SUCCESS {
                            failed = true;
                        }
                    }
                }
                return Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS });
            }
            Command::List { limit, cursor, staged, status, application, version, node, all } => {
                let mut path = paged("/v1/deployments", *limit, cursor.as_deref());
                let filters = [
                    ("staged", staged.map(|s| s.to_string())),
                    ("status", status.clone()),
                    ("application", application.clone()),
                    ("version", version.clone()),
                    ("node", node.clone()),
                    ("include_removed", (!all).then(|| "false".to_owned())),
                ];
                for (name, value) in filters {
                    if let Some(value) = value {
                        path.push_str(&format!("&{name}={value}"));
                    }
                }
                let page = client.get(&path).await?;
                if self.output == Output::Json {
                    print_json(&page);
                    return Ok(ExitCode::SUCCESS);
                }
                let items: Vec<DeploymentView> = serde_json::from_value(page["items"].clone())?;
                println!("{:<36}  {:<16}  {:<10}  {:<14}  NODES", "ID", "APPLICATION", "VERSION", "STATUS");
                for d in items {
                    println!(
                        "{:<36}  {:<16}  {:<10}  {:<14}  {}",
                        d.id,
                        d.application,
                        d.version,
                        d.status,
                        d.nodes.keys().cloned().collect::<Vec<_>>().join(",")
                    );
                }
                next_page(&page);
            }
            Command::Logs { id, node, cursor, all, follow, tail, timestamps } => {
                let id = client.deployment_id(id).await?;
                return client
                    .logs(
                        &id,
                        node.as_deref(),
                        cursor.clone(),
                        *all || *follow || tail.is_some(),
                        *follow,
                        *tail,
                        *timestamps,
                    )
                    .await;
            }
            Command::Get { id } => {
                let id = client.deployment_id(id).await?;
                print_json(&client.get(&format!("/v1/deployments/{id}")).await?)
            }
            Command::Watch { id, timeout } => {
                let id = client.deployment_id(id).await?;
                return client.watch(&id, *timeout, 0).await;
            }
            Command::Nodes { selector, state, limit, cursor } => {
                let mut path = paged("/v1/nodes", *limit, cursor.as_deref());
                for (name, value) in [("selector", selector), ("state", state)] {
                    if let Some(value) = value {
                        path.push_str(&format!("&{name}={}", encode(value)));
                    }
                }
                let page = client.get(&path).await?;
                if self.output == Output::Json {
                    print_json(&page);
                    return Ok(ExitCode::SUCCESS);
                }
                println!("{:<24}  {:<12}  LABELS", "NODE", "STATE");
                for n in page["items"].as_array().into_iter().flatten() {
                    let labels: Vec<String> = n["labels"]
                        .as_object()
                        .into_iter()
                        .flatten()
                        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                        .collect();
                    let state = n["state"].as_str().unwrap_or("enrolled");
                    println!("{:<24}  {:<12}  {}", n["id"].as_str().unwrap_or_default(), state, labels.join(","));
                }
                next_page(&page);
            }
            Command::Apps { limit, cursor } => {
                let page = client.get(&paged("/v1/applications", *limit, cursor.as_deref())).await?;
                if self.output == Output::Json {
                    print_json(&page);
                    return Ok(ExitCode::SUCCESS);
                }
                println!("{:<20}  {:<24}  VERSIONS", "APPLICATION", "NAME");
                for a in page["items"].as_array().into_iter().flatten() {
                    let versions: Vec<String> = a["versions"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|v| {
                            let state = if v["published_at"].is_string() { "" } else { " (draft)" };
                            format!("{}{state}", v["version"].as_str().unwrap_or_default())
                        })
                        .collect();
                    let (id, name) = (a["id"].as_str().unwrap_or_default(), a["name"].as_str().unwrap_or_default());
                    println!("{id:<20}  {name:<24}  {}", versions.join(", "));
                }
                next_page(&page);
            }
            Command::History { id } => {
                let id = client.deployment_id(id).await?;
                let history = client.history_after(&id, 0).await?;
                if self.output == Output::Json {
                    print_json(&serde_json::to_value(&history)?);
                    return Ok(ExitCode::SUCCESS);
                }
                for entry in &history {
                    println!("{}", history_line(entry));
                }
            }
            Command::Tenant(TenantCommand::Delete { id, yes }) => {
                if !yes {
                    anyhow::bail!(
                        "deleting tenant `{id}` removes its deployments from every node: say `--yes` to do it"
                    );
                }
                let answer = client.send(client.request(reqwest::Method::DELETE, &format!("/v1/tenants/{id}"))).await?;
                println!("tenant {id} deleted (stream sequence {})", answer["sequence"]);
            }
            Command::Completions { shell } => {
                use clap::CommandFactory;
                use std::io::Write;
                let mut script = Vec::new();
                clap_complete::generate(*shell, &mut Cli::command(), "engine", &mut script);
                std::io::stdout().write_all(&script)?;
            }
            Command::Node(NodeCommand::Get { node }) => print_json(&client.get(&format!("/v1/nodes/{node}")).await?),
            Command::Health => {
                let url = format!("{}/healthz", self.api.trim_end_matches('/'));
                let answer = client.http.get(&url).timeout(Duration::from_secs(5)).send().await;
                return Ok(match answer {
                    Ok(answer) if answer.status().is_success() => ExitCode::SUCCESS,
                    Ok(answer) => {
                        eprintln!("{url} answered {}", answer.status());
                        ExitCode::FAILURE
                    }
                    Err(e) => {
                        eprintln!("{url}: {e}");
                        ExitCode::FAILURE
                    }
                });
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// The sequence just before a request's event: a watch shows from that event on.
fn since(answer: &Value) -> u64 {
    answer["sequence"].as_u64().unwrap_or(1).saturating_sub(1)
}

fn paged(path: &str, limit: usize, cursor: Option<&str>) -> String {
    match cursor {
        Some(cursor) => format!("{path}?limit={limit}&cursor={cursor}"),
        None => format!("{path}?limit={limit}"),
    }
}

fn print_json(value: &Value) {
    println!("{}", serde_json::to_string_pretty(value).unwrap_or_default());
}

fn next_page(page: &Value) {
    if let Some(next) = page["next_cursor"].as_str() {
        println!("next page: --cursor {next}");
    }
}

/// `text` as one query value.
fn encode(text: &str) -> String {
    engine::url_encode(text)
}

/// One step of a history: when (with the zone), where, the status, who, the version, and
/// what went wrong or each container's status.
fn history_line(entry: &HistoryEntry) -> String {
    let detail = match &entry.error {
        Some(error) => format!("  {}: {}", error.code, error.message),
        None => String::new(),
    };
    let node = entry.node.as_deref().unwrap_or("-");
    // A compose deployment's containers, by service: what follows the node's name.
    let containers: Vec<String> = entry
        .containers
        .iter()
        .map(|(name, c)| {
            let service = name.split_once(&format!("-{node}-")).map_or(name.as_str(), |(_, s)| s);
            format!("{service} {}", c.status)
        })
        .collect();
    let containers = if containers.len() > 1 { format!("  [{}]", containers.join(", ")) } else { String::new() };
    let status = match (&entry.status, &entry.note) {
        (Some(status), _) => status.to_string(),
        (None, Some(note)) => note.clone(),
        (None, None) => "-".to_owned(),
    };
    let version = entry.version.as_deref().unwrap_or("");
    format!(
        "{}  {node:<12} {status:<15} {version:<10} {:<14}{detail}{containers}",
        entry.time.format("%Y-%m-%d %H:%M:%S%.3f %Z"),
        entry.actor
    )
}

/// What the API answered when it refused a call.
#[derive(Debug)]
struct ApiFailure {
    status: reqwest::StatusCode,
    message: String,
    field: Option<String>,
}

impl std::fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{}: {} (field `{field}`)", self.status, self.message),
            None => write!(f, "{}: {}", self.status, self.message),
        }
    }
}

impl std::error::Error for ApiFailure {}

/// True when the API refused because what was asked holds already (a stop of a stopped
/// deployment, a publish of a published version, an update to the version it runs).
fn already(e: &anyhow::Error) -> bool {
    e.downcast_ref::<ApiFailure>()
        .is_some_and(|f| f.status == reqwest::StatusCode::CONFLICT && f.message.contains("already"))
}

fn failure_message(e: &anyhow::Error) -> String {
    e.downcast_ref::<ApiFailure>().map_or_else(|| e.to_string(), |f| f.message.clone())
}

/// A status by its name, or the statuses there are and the nearest of them.
fn status_name(text: &str) -> Result<String, String> {
    let names: Vec<&str> = Status::ALL.iter().map(|s| s.as_str()).collect();
    if names.contains(&text) {
        return Ok(text.to_owned());
    }
    let nearest = events::nearest(text, &names, 3).map(|n| format!(" (did you mean `{n}`?)")).unwrap_or_default();
    Err(format!("`{text}` is not a status{nearest}; the statuses are {}", names.join(", ")))
}

/// Clears a progress bar when its work ends, however it ends.
struct ClearOnDrop(indicatif::ProgressBar);

impl Drop for ClearOnDrop {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}

struct Client<'a> {
    http: reqwest::Client,
    cli: &'a Cli,
}

impl Client<'_> {
    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut request = self.http.request(method, format!("{}{path}", self.cli.api.trim_end_matches('/')));
        if let Some(tenant) = &self.cli.tenant {
            request = request.header("x-tenant", tenant);
        }
        if let Some(token) = &self.cli.token {
            request = request.bearer_auth(token.trim());
        }
        request
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let response = request.send().await.with_context(|| format!("calling the engine at {}", self.cli.api))?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            let message = body["error"].as_str().unwrap_or("no message").to_owned();
            let field = body["field"].as_str().map(str::to_owned);
            return Err(ApiFailure { status, message, field }.into());
        }
        Ok(body)
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.send(self.request(reqwest::Method::GET, path)).await
    }

    async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        self.send(self.request(reqwest::Method::POST, path).json(&body)).await
    }

    /// Asks for a stop, a start or an uninstall, and follows it if asked to. Asking for what
    /// already holds (a stop of a stopped deployment) says so, and is no failure.
    async fn request_change(&self, id: &str, verb: &str, watch: &WatchArgs) -> anyhow::Result<ExitCode> {
        let id = self.deployment_id(id).await?;
        let path = format!("/v1/deployments/{id}");
        let answer = match verb {
            "uninstall" => self.send(self.request(reqwest::Method::DELETE, &path)).await,
            _ => self.post(&format!("{path}/{verb}"), json!({})).await,
        };
        let answer = match answer {
            Err(e) if already(&e) => {
                println!("deployment {id}: {}; nothing to do", failure_message(&e));
                return Ok(ExitCode::SUCCESS);
            }
            answer => answer?,
        };
        let status = answer["deployment"]["status"].as_str().unwrap_or("unknown");
        println!("{verb} of deployment {id} requested: {status}");
        if watch.watch {
            return self.watch(&id, watch.timeout, since(&answer)).await;
        }
        Ok(ExitCode::SUCCESS)
    }

    /// Asks for an update (`what` says which), and follows it if asked to; one that changes
    /// nothing says so, and is no failure.
    async fn update(&self, id: &str, body: Value, what: &str, watch: &WatchArgs) -> anyhow::Result<ExitCode> {
        let answer = match self.post(&format!("/v1/deployments/{id}/update"), body).await {
            Err(e) if already(&e) => {
                println!("deployment {id}: {}; nothing to do", failure_message(&e));
                return Ok(ExitCode::SUCCESS);
            }
            answer => answer?,
        };
        let status = answer["deployment"]["status"].as_str().unwrap_or("unknown");
        println!("{what} requested: {status}");
        if watch.watch {
            return self.watch(id, watch.timeout, since(&answer)).await;
        }
        Ok(ExitCode::SUCCESS)
    }

    /// Launches (or stages) `what`, and follows it if asked to.
    async fn launch(
        &self,
        what: &LaunchArgs,
        staged: bool,
        instantly_apply: bool,
        rollout: &RolloutArgs,
        watch: &WatchArgs,
        verb: &str,
    ) -> anyhow::Result<ExitCode> {
        let mut body = json!({
            "application": what.application,
            "version": what.version,
            "staged": staged,
            "instantly_apply": instantly_apply,
            "profile": what.profile,
            "overrides": string_map(&what.overrides),
            "rollout": rollout.json(),
            "secrets": string_map(&what.secrets),
        });
        match &what.selector {
            Some(selector) => {
                let labels = engine::api::parse_selector(selector).map_err(|e| anyhow::anyhow!("--selector: {e}"))?;
                body["selector"] = json!(labels);
            }
            None => body["nodes"] = json!(what.nodes),
        }
        let launched = self.post("/v1/deployments", body).await?;
        let id = launched["id"].as_str().context("the launch answer has no id")?.to_owned();
        println!("{verb} deployment {id}");
        if watch.watch {
            return self.watch(&id, watch.timeout, 0).await;
        }
        Ok(ExitCode::SUCCESS)
    }

    /// The deployment `id` names: itself, or the one deployment whose id starts with it.
    async fn deployment_id(&self, id: &str) -> anyhow::Result<String> {
        if uuid::Uuid::parse_str(id).is_ok() {
            return Ok(id.to_owned());
        }
        if id.is_empty() {
            anyhow::bail!("name a deployment");
        }
        let mut found = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = self.get(&paged("/v1/deployments", 500, cursor.as_deref())).await?;
            let ids = page["items"].as_array().into_iter().flatten().filter_map(|d| d["id"].as_str());
            found.extend(ids.filter(|d| d.starts_with(id)).map(str::to_owned));
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => break,
            }
        }
        match found.len() {
            1 => Ok(found.remove(0)),
            0 => anyhow::bail!("no deployment's id starts with `{id}`"),
            _ => anyhow::bail!("`{id}` starts the ids of several deployments: {}", found.join(", ")),
        }
    }

    /// Prints a deployment's logs on one node: a page, or every page (`all`), then each new
    /// line as it comes (`follow`); with `tail`, only the last lines of each container once read
    /// to the end.
    #[allow(clippy::too_many_arguments)]
    async fn logs(
        &self,
        id: &str,
        node: Option<&str>,
        cursor: Option<String>,
        all: bool,
        follow: bool,
        tail: Option<usize>,
        timestamps: bool,
    ) -> anyhow::Result<ExitCode> {
        // Where each container's reading stands: the cursor's offsets, moved on by what is read.
        let mut at = match &cursor {
            Some(text) => events::logs::decode_cursor(text).map_err(|e| anyhow::anyhow!("--cursor: {e}"))?,
            None => Default::default(),
        };
        let mut kept: std::collections::BTreeMap<String, std::collections::VecDeque<String>> = Default::default();
        let mut caught_up = false;
        loop {
            let mut query = vec![format!("timestamps={timestamps}")];
            if let Some(node) = node {
                query.push(format!("node={}", encode(node)));
            }
            if let Some(cursor) = events::logs::encode_cursor(&at) {
                query.push(format!("cursor={}", encode(&cursor)));
            }
            let page = self.get(&format!("/v1/deployments/{id}/logs?{}", query.join("&"))).await?;
            // As JSON: each page the API answered, one a line.
            let json = self.cli.output == Output::Json;
            if json {
                println!("{page}");
            }
            for container in page["containers"].as_array().into_iter().flatten() {
                let name = container["container"].as_str().unwrap_or_default().to_owned();
                if let Some(error) = container["error"]["message"].as_str() {
                    eprintln!("[{name}] error: {error}");
                }
                let lines: Vec<&str> =
                    container["lines"].as_array().into_iter().flatten().filter_map(|l| l.as_str()).collect();
                let read = at.entry(name.clone()).or_insert(0);
                *read = read.saturating_add(lines.len() as u64);
                if json {
                    continue;
                }
                match tail.filter(|_| !caught_up) {
                    Some(n) => {
                        let last = kept.entry(name.clone()).or_default();
                        for line in lines {
                            last.push_back(line.to_owned());
                            if last.len() > n {
                                last.pop_front();
                            }
                        }
                    }
                    None => {
                        for line in lines {
                            println!("[{name}] {line}");
                        }
                    }
                }
            }
            let next = page["next_cursor"].as_str().map(str::to_owned);
            if next.is_some() && all {
                continue;
            }
            if !caught_up {
                caught_up = true;
                for (name, lines) in std::mem::take(&mut kept) {
                    for line in lines {
                        println!("[{name}] {line}");
                    }
                }
            }
            if !follow {
                if let Some(next) = next {
                    eprintln!("next page: --cursor {next}");
                }
                return Ok(ExitCode::SUCCESS);
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// How far the nodes downloading the deployment's images have come, from their heartbeats:
    /// each quarter of a node's download is said once; the sum goes on the progress bar.
    async fn pulls(
        &self,
        view: &DeploymentView,
        said: &mut std::collections::BTreeMap<String, u64>,
        progress: &indicatif::ProgressBar,
    ) -> String {
        let mut images: Vec<&str> = view.services.iter().map(|s| s.image.as_str()).collect();
        images.push(&view.image);
        let (mut bytes, mut total) = (0u64, 0u64);
        for (node, _) in view.nodes.iter().filter(|(_, n)| n.status == Status::Downloading) {
            let Ok(beat) = self.get(&format!("/v1/nodes/{node}/telemetry")).await else { continue };
            let pulls = beat["pulls"].as_array().into_iter().flatten();
            let mine = pulls.filter(|p| p["image"].as_str().is_some_and(|i| images.contains(&i)));
            let (node_bytes, node_total) = mine.fold((0u64, 0u64), |(b, t), p| {
                (b.saturating_add(p["bytes"].as_u64().unwrap_or(0)), t.saturating_add(p["total"].as_u64().unwrap_or(0)))
            });
            if node_total == 0 {
                continue;
            }
            let quarter = node_bytes.saturating_mul(4) / node_total;
            if quarter > said.get(node).copied().unwrap_or(0) {
                said.insert(node.clone(), quarter);
                let (b, t) = (indicatif::HumanBytes(node_bytes), indicatif::HumanBytes(node_total));
                progress.suspend(|| println!("{node}: pulled {b} of {t}"));
            }
            (bytes, total) = (bytes.saturating_add(node_bytes), total.saturating_add(node_total));
        }
        match total {
            0 => String::new(),
            _ => format!(", pulling {} of {}", indicatif::HumanBytes(bytes), indicatif::HumanBytes(total)),
        }
    }

    /// Every entry of a deployment's history after stream sequence `after`, page by page.
    async fn history_after(&self, id: &str, after: u64) -> anyhow::Result<Vec<HistoryEntry>> {
        let mut entries = Vec::new();
        let mut cursor = after.to_string();
        loop {
            let page = self.get(&format!("/v1/deployments/{id}/history?limit=500&cursor={cursor}")).await?;
            entries.extend(serde_json::from_value::<Vec<HistoryEntry>>(page["items"].clone())?);
            match page["next_cursor"].as_str() {
                Some(next) => cursor = next.to_owned(),
                None => return Ok(entries),
            }
        }
    }

    /// Prints every status the deployment goes through, from the log, as it happens, until
    /// every node has settled; fails if one failed.
    async fn watch(&self, id: &str, timeout: Duration, since: u64) -> anyhow::Result<ExitCode> {
        let started = tokio::time::Instant::now();
        let mut shown = since;
        // Nodes settled of all, on a terminal (none when the output is not one).
        let progress = indicatif::ProgressBar::new(0).with_style(
            indicatif::ProgressStyle::with_template("{spinner} nodes settled {pos}/{len} [{bar:30}] {msg} {elapsed}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        let _clear = ClearOnDrop(progress.clone());
        let mut waiting: std::collections::BTreeSet<(String, &str)> = std::collections::BTreeSet::new();
        // Per node, the quarters of its download said so far.
        let mut pulled: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
        // Per node, the last status printed.
        let mut told: std::collections::BTreeMap<String, Status> = std::collections::BTreeMap::new();
        loop {
            let history = self.history_after(id, shown).await?;
            for entry in &history {
                progress.suspend(|| println!("{}", history_line(entry)));
                shown = entry.sequence;
                if let (Some(node), Some(status)) = (&entry.node, entry.status) {
                    told.insert(node.clone(), status);
                }
            }
            let view: DeploymentView = serde_json::from_value(self.get(&format!("/v1/deployments/{id}")).await?)?;
            let settled = view.nodes.values().all(|n| n.status.is_settled());
            let done = view.nodes.values().filter(|n| n.status.is_settled()).count();
            let failed = view.nodes.values().filter(|n| n.status == Status::Failed).count();
            progress.set_length(view.nodes.len() as u64);
            progress.set_position(done as u64);
            let pulling = self.pulls(&view, &mut pulled, &progress).await;
            progress.set_message(format!("{} {}, {failed} failed{pulling}", view.version, view.status));
            // A node the watch waits on that cannot answer: said once, with why.
            for (node, n) in view.nodes.iter().filter(|(_, n)| !n.status.is_settled()) {
                let why = match (n.revoked, n.unreachable, &n.overdue) {
                    (true, _, _) => "its credential is revoked: it may not connect again",
                    (_, true, _) => "it is unreachable: no heartbeat within three intervals",
                    (_, _, Some(_)) => "it is overdue: past the engine's deadline for this step",
                    _ => continue,
                };
                if waiting.insert((node.clone(), why)) {
                    progress.suspend(|| println!("waiting on node {node}: {why} (it last said {})", n.status));
                }
            }
            // The history is folded apart from the view, maybe a moment after it: the watch ends
            // once each node it printed has had its last status printed too.
            let caught_up = told.iter().all(|(node, status)| view.nodes.get(node).is_none_or(|n| n.status == *status));
            if settled && shown > 0 && caught_up {
                if view.status != Status::Failed {
                    println!("deployment {id} is {} on {} node(s)", view.status, view.nodes.len());
                    return Ok(ExitCode::SUCCESS);
                }
                println!("deployment {id} failed");
                return Ok(ExitCode::FAILURE);
            }
            if started.elapsed() >= timeout {
                anyhow::bail!("deployment {id} is still {} after {}s", view.status, timeout.as_secs());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
