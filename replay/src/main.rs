//! The `replay` binary: the auditors' tool, reading the event log alone.
// The command line prints its answers.
#![allow(clippy::print_stdout)]

use std::process::ExitCode;

use std::os::unix::fs::OpenOptionsExt;

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::{Parser, Subcommand, ValueEnum};

use bus::store::{EventStore, StoreConfig};
use replay::at::{Fold, Until};
use replay::audit::{Entry, Filter, SetAsideEntry};
use replay::verify::{Chains, Signatures};

#[derive(Debug, Parser)]
#[command(name = "replay", about = "Read the event log: tamper evidence and the audit trail", version)]
struct Cli {
    #[arg(long, global = true, env = "NATS_URL", default_value = "tls://127.0.0.1:4222")]
    nats: String,
    /// The credentials to read with: an auditor's (`engine credential auditor`) reads every
    /// tenant and writes nothing.
    #[arg(long, global = true, env = "REPLAY_CREDS")]
    creds: Option<std::path::PathBuf>,
    /// The certificate authority of the servers' certificates.
    #[arg(long, global = true, env = "NATS_CA")]
    ca: Option<std::path::PathBuf>,
    #[arg(long, global = true, default_value = events::subject::STREAM)]
    stream: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Walk every subject's hash chain and name the first altered, removed or reordered event;
    /// check every signature and name each unsigned or forged event, and each message that
    /// does not fit where it is (not an event, misplaced, or not of its subject's type).
    Verify {
        /// A key of the engine's (`engine trust init` prints it, `trust.json` holds it); repeat
        /// for several (keys rotate). The log cannot vouch for its own writer.
        #[arg(long = "engine-key", required = true)]
        engine_keys: Vec<String>,
    },
    /// Write every message of the log up to now, in order, to a file (JSON lines, mode 0600):
    /// an auditor's credential reads it. With `--keys` (and the engine's credential) the
    /// tenants' keys go in too, without which sealed secrets never open again: keep that file
    /// as the trust directory is kept.
    Backup {
        #[arg(long)]
        out: std::path::PathBuf,
        #[arg(long)]
        keys: bool,
    },
    /// Put a backup back into an empty stream (made with `--replicas`), checked whole first;
    /// the engine's credential (`trust/engine.creds`) writes it. Then `replay verify` and,
    /// once an engine runs on it, `replay check`.
    Restore {
        #[arg(long)]
        from: std::path::PathBuf,
        #[arg(long, default_value_t = 1)]
        replicas: usize,
    },
    /// Fold the whole log into fresh read models, by the engine's projection code.
    Rebuild {
        /// Where the read models go (a sled directory; a new one).
        #[arg(long)]
        out: std::path::PathBuf,
    },
    /// What every deployment, node and application was at a stream sequence or a moment, as
    /// JSON.
    At {
        #[arg(long, conflicts_with = "time", required_unless_present = "time")]
        seq: Option<u64>,
        /// RFC 3339, as `2026-11-24T10:00:00Z`.
        #[arg(long)]
        time: Option<DateTime<Utc>>,
    },
    /// Print the live stream as JSON lines (one event per line, as `audit --format json`),
    /// from now on or from a sequence.
    Tail {
        #[arg(long)]
        from: Option<u64>,
    },
    /// Rebuild, then compare with a live engine's read models; print every difference.
    Check {
        /// The live engine's API.
        #[arg(long, env = "ENGINE_API", default_value = "https://127.0.0.1:8080")]
        engine_api: String,
        /// An API token that reads every tenant (an auditor's of every tenant).
        #[arg(long, env = "ENGINE_TOKEN", hide_env_values = true)]
        engine_token: String,
        /// The API's certificate authority (PEM); `--ca` when absent.
        #[arg(long, env = "ENGINE_CA")]
        engine_ca: Option<std::path::PathBuf>,
    },
    /// Who did what, and when, narrowed by the filters given.
    Audit {
        #[arg(long)]
        actor: Option<String>,
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        application: Option<String>,
        #[arg(long)]
        deployment: Option<String>,
        #[arg(long)]
        node: Option<String>,
        /// An event type, or the start of one (`deployment.`).
        #[arg(long = "type")]
        event_type: Option<String>,
        /// RFC 3339, as `2026-11-24T10:00:00Z`.
        #[arg(long)]
        since: Option<DateTime<Utc>>,
        #[arg(long)]
        until: Option<DateTime<Utc>>,
        #[arg(long, value_enum, default_value_t = Format::Text)]
        format: Format,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Text,
    /// One JSON object per line.
    Json,
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let credentials = match &cli.creds {
        Some(path) => Some(
            bus::Credentials::read(path, None)
                .with_context(|| format!("reading the credentials {}", path.display()))?,
        ),
        None => None,
    };
    let connection = bus::Connection {
        servers: cli.nats.clone(),
        credentials,
        ca: cli.ca.clone(),
        name: "replay".to_owned(),
        inbox_prefix: None,
    };
    let client = connection.connect_with(connection.options()).await?;
    if let Command::Restore { from, replicas } = &cli.command {
        let open = || std::fs::File::open(from).map(std::io::BufReader::new);
        let (stream, counts) = replay::backup::check(open().with_context(|| format!("opening {}", from.display()))?)
            .with_context(|| format!("{} cannot be restored", from.display()))?;
        let config = StoreConfig { stream: cli.stream.clone(), replicas: *replicas, ..Default::default() };
        // A cluster just started answers once its members have elected a leader.
        let js = async_nats::jetstream::new(client.clone());
        let mut waited = 0;
        while let Err(e) = js.query_account().await {
            anyhow::ensure!(waited < 60, "JetStream does not answer after {waited} s: {e}");
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            waited += 1;
        }
        let store = EventStore::open(client, &config).await?;
        let keys = engine::secrets::TenantKeys::open(store.jetstream(), *replicas).await?;
        let restored = replay::backup::restore(&store, &keys, open()?).await?;
        println!(
            "restored {} messages of {stream} and {} tenants' keys into {} (of {} and {} in the backup)",
            restored.messages, restored.keys, cli.stream, counts.messages, counts.keys
        );
        return Ok(ExitCode::SUCCESS);
    }
    // It writes nothing, not even a consumer: it reads by direct gets.
    let config = StoreConfig { stream: cli.stream.clone(), ..Default::default() };
    let store = EventStore::open_existing(client, connection.api_prefix(), &config).await?.reading_by_direct_get();
    match cli.command {
        Command::Backup { out, keys } => {
            let keys = match keys {
                true => Some(engine::secrets::TenantKeys::open(store.jetstream(), 1).await?),
                false => None,
            };
            // Written beside its place and moved there whole: a backup cut short never looks
            // like one.
            let partial = out.with_extension("partial");
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&partial)
                .with_context(|| format!("writing {}", partial.display()))?;
            let mut writer = std::io::BufWriter::new(file);
            let counts = replay::backup::backup(&store, keys.as_ref(), &mut writer).await?;
            writer.into_inner()?.sync_all()?;
            std::fs::rename(&partial, &out).with_context(|| format!("writing {}", out.display()))?;
            println!("backed up {} messages and {} tenants' keys to {}", counts.messages, counts.keys, out.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Restore { .. } => unreachable!("a restore returned before the stream was opened for reading"),
        Command::Verify { engine_keys } => {
            let mut chains = Chains::default();
            let mut signatures = Signatures::new(engine_keys);
            let mut set_aside = Vec::new();
            let count = replay::each_message(&store, 1, |subject, found| {
                match found {
                    Ok(event) => {
                        let prev = event.envelope.prev_hash.clone();
                        chains.add(subject, event.sequence, event.envelope.id.to_string(), &event.bytes, prev);
                        signatures.add(subject, event.sequence, &event.envelope);
                    }
                    Err(unfit) => set_aside.push(format!("{subject}: {unfit}")),
                }
                Ok(())
            })
            .await?;
            let breaks = chains.breaks();
            for broken in &breaks {
                println!("{broken}");
            }
            for finding in signatures.findings() {
                println!("{finding}");
            }
            for unfit in &set_aside {
                println!("{unfit}");
            }
            let found = signatures.findings().len();
            println!(
                "{count} messages on {} subjects: {} broken chain(s), {found} unsigned or forged event(s), {} set \
                 aside (not an event, misplaced, or not of its subject's type)",
                chains.subjects(),
                breaks.len(),
                set_aside.len()
            );
            let whole = breaks.is_empty() && found == 0 && set_aside.is_empty();
            Ok(if whole { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::At { seq, time } => {
            let until = match (seq, time) {
                (Some(seq), _) => Until::Sequence(seq),
                (None, Some(time)) => Until::Time(time),
                (None, None) => anyhow::bail!("give --seq or --time"),
            };
            let mut fold = Fold::default();
            replay::each_event(&store, 1, |_, event| match Fold::within(until, &event) {
                true => fold.add(&event),
                false => Ok(()),
            })
            .await?;
            println!("{}", serde_json::to_string_pretty(&fold.state()?)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Tail { from } => {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            replay::follow(&store, from, |subject, found| {
                let line = match found {
                    Ok(event) => serde_json::to_string(&Entry::of(subject, &event))?,
                    Err(unfit) => serde_json::to_string(&SetAsideEntry::of(subject, &unfit))?,
                };
                writeln!(out, "{line}")?;
                // Each line as it comes, for whoever reads the pipe.
                out.flush()?;
                Ok(())
            })
            .await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Rebuild { out } => {
            let rebuilt = replay::rebuild::rebuild(&store, &out).await?;
            let rate = rebuilt.events as f64 / rebuilt.took.as_secs_f64().max(1e-9);
            println!(
                "{} events folded into {} in {:.2?} ({rate:.0} events/s)",
                rebuilt.events,
                out.display(),
                rebuilt.took
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Check { engine_api, engine_token, engine_ca } => {
            let dir = tempfile::tempdir()?;
            let rebuilt = replay::rebuild::rebuild(&store, dir.path()).await?;
            let mut headers = reqwest::header::HeaderMap::new();
            let bearer = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", engine_token.trim()))
                .map_err(|_| anyhow::anyhow!("the engine token is not ASCII"))?;
            headers.insert(reqwest::header::AUTHORIZATION, bearer);
            let ca = engine_ca.or(cli.ca.clone());
            let http = engine::api_client_builder(ca.as_deref())?.default_headers(headers).build()?;
            let differences = replay::rebuild::differences(&rebuilt, &engine_api, &http).await?;
            for difference in &differences {
                println!("{difference}");
            }
            println!("{} difference(s) between the log and the engine at {engine_api}", differences.len());
            Ok(if differences.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::Audit { actor, tenant, application, deployment, node, event_type, since, until, format } => {
            let filter = Filter { actor, tenant, application, deployment, node, event_type, since, until };
            let mut set_aside = 0usize;
            replay::each_message(&store, 1, |subject, found| {
                let event = match found {
                    Ok(event) => event,
                    // Whoever reads the trail learns of each message it cannot show.
                    Err(unfit) => {
                        set_aside = set_aside.saturating_add(1);
                        match format {
                            Format::Text => println!("{:>8}  set aside on {subject}: {}", unfit.sequence, unfit.reason),
                            Format::Json => println!("{}", serde_json::to_string(&SetAsideEntry::of(subject, &unfit))?),
                        }
                        return Ok(());
                    }
                };
                let entry = Entry::of(subject, &event);
                if filter.admits(&entry) {
                    match format {
                        Format::Text => println!("{}", entry.line()),
                        Format::Json => println!("{}", serde_json::to_string(&entry)?),
                    }
                }
                Ok(())
            })
            .await?;
            if set_aside > 0 {
                eprintln!("{set_aside} message(s) set aside: not events, misplaced, or not of their subject's type");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        // Read by `head` or the like, which stopped reading: done.
        Err(e) if broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
