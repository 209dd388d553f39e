//! The driver: the one place the agent meets the world. It feeds the agent work from the
//! node's durable consumer and outcomes from the runtime, and carries out its actions:
//! runtime steps as tasks, reports into the outbox, and the outbox onto JetStream.
//!
//! Work reaches the loop through a task that rides out a lost link. It pulls the node's
//! durable consumer with a heartbeat every 5 s (every node of a fleet holds a pull on the
//! server) and pulls again on a missed one, which reaches the consumer's new leader. A
//! consumer the server does not know is waited for: the engine makes it when it enrolls the
//! node, and the node may only read it. Each piece of work is kept in the work log
//! (`crate::desired`) and only then acked; a crash in between brings it again, and its stream
//! sequence shows it was handled.
//!
//! Each status report is written to the outbox, signed by the node's key, and on disk before
//! any step after it begins (one flush for the work taken and the reports the agent makes of
//! it, before the work is acked), then published from there with its event id as
//! `Nats-Msg-Id`. On the reconcile clock (5 s by default) the agent gets a `Tick`, and one task
//! at a time looks up every settled container for drift. When the link comes back the agent
//! says every status again; a revoked credential stops the node. Log requests on
//! `logs.<tenant>.<node>` are answered a page per container.
//!
//! [`run_on`] runs a node on a connection and a sled database it may share with other nodes:
//! the fleet benchmark and the chaos test run thousands in one process.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

use anyhow::Context;
use async_nats::jetstream;
use chrono::Utc;
use futures::StreamExt;
use tokio::sync::{mpsc, oneshot, Notify};
use uuid::Uuid;

use events::envelope::Metadata;
use events::logs::{ContainerLogs, LogsReply, LogsRequest};
use events::report::NodeReport;
use events::work::NodeWork;
use events::{Envelope, Status};

use crate::agent::{Action, Agent, Check, Input, Lookup};
use crate::desired::{Desired, Kept};
use crate::local::{LocalReply, LocalRequest};
use crate::outbox::Outbox;
use crate::runtime::{ContainerRuntime, ContainerSpec, ErrorCode, Observed, RuntimeError, SecretFile};
use crate::NodeConfig;

/// Runs the node until its connection to JetStream fails for good.
pub async fn run<R: ContainerRuntime>(config: NodeConfig, runtime: Arc<R>) -> anyhow::Result<()> {
    let (client, links) = connect(&config).await?;
    let js = config.connection().jetstream(client);
    let db = sled::open(&config.data_dir).with_context(|| format!("opening {}", config.data_dir.display()))?;
    let control = crate::local::socket_path(&config.data_dir);
    run_on(config, runtime, Attachment { js, links, db, trees: String::new(), control: Some(control) }).await
}

/// What the connection tells the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkEvent {
    /// Connected again: the agent says again where everything stands.
    Connected,
    /// The server revoked the node's credential: every reconnect will be refused.
    Revoked,
}

/// The node's own connection, and what it says of its link.
pub async fn connect(config: &NodeConfig) -> anyhow::Result<(async_nats::Client, mpsc::UnboundedReceiver<LinkEvent>)> {
    let (links_tx, links) = mpsc::unbounded_channel::<LinkEvent>();
    let connection = config.connection();
    let node = config.node.clone();
    let options = connection
        .options()
        .event_callback(move |event| {
            let links = links_tx.clone();
            tracing::debug!(node, %event, "link");
            async move {
                if matches!(event, async_nats::Event::Connected) {
                    let _ = links.send(LinkEvent::Connected);
                } else if bus::is_revocation(&event) {
                    let _ = links.send(LinkEvent::Revoked);
                }
            }
        })
        // On a bad link, try again soon: a second at most between attempts, so a healed
        // link is used within a second.
        .reconnect_delay_callback(|attempts| Duration::from_millis((attempts as u64).saturating_mul(100).min(1000)))
        .retry_on_initial_connect();
    let client = connection.connect_with(options).await?;
    Ok((client, links))
}

/// What a node runs on: JetStream on its connection (with the API prefix of the connection's
/// account), told of each reconnection; the sled database of its
/// outbox and work log, with the prefix of its trees there; and the path of its control socket.
/// A simulated fleet shares one connection and one database among many nodes, each with
/// trees of its own and no control socket.
#[derive(Debug)]
pub struct Attachment {
    pub js: jetstream::Context,
    pub links: mpsc::UnboundedReceiver<LinkEvent>,
    pub db: sled::Db,
    pub trees: String,
    pub control: Option<std::path::PathBuf>,
}

/// `spec` with its sealed secrets opened into its environment, for the runtime alone: the
/// clear values are never logged or kept.
fn opened(mut spec: ContainerSpec, key: Option<&Arc<nkeys::KeyPair>>) -> Result<ContainerSpec, RuntimeError> {
    let open = |name: &str, sealed: &str| {
        let unreadable = |why: String| {
            RuntimeError::new(ErrorCode::SecretUnreadable, format!("secret `{name}` does not open here: {why}"))
        };
        let key = key.ok_or_else(|| unreadable("the node has no key".to_owned()))?;
        bus::seal::open_as_node(key, sealed).map_err(|e| unreadable(e.to_string()))
    };
    for (name, sealed) in std::mem::take(&mut spec.secrets) {
        let value = String::from_utf8(open(&name, &sealed)?)
            .map_err(|_| RuntimeError::new(ErrorCode::SecretUnreadable, format!("secret `{name}` is not text")))?;
        spec.env.retain(|e| e.split('=').next() != Some(name.as_str()));
        spec.env.push(format!("{name}={value}"));
    }
    for (name, sealed) in std::mem::take(&mut spec.secret_files) {
        let content = open(&name, &sealed)?;
        spec.files.push(SecretFile { name, content });
    }
    Ok(spec)
}

/// Runs the node on `attachment` until its connection to JetStream fails for good.
pub async fn run_on<R: ContainerRuntime>(
    config: NodeConfig,
    runtime: Arc<R>,
    attachment: Attachment,
) -> anyhow::Result<()> {
    let Attachment { js, mut links, db, trees, control } = attachment;
    let client = js.client();
    let outbox = Outbox::open(&db, &trees, config.credentials.as_ref().map(|c| c.key().clone()))?;
    let desired = Desired::open(&db, &trees)?;
    let sent = Arc::new(Notify::new());
    let relinked = Arc::new(Notify::new());
    let mut linked_before = false;
    let actor = format!("node:{}", config.node);
    // The node's own key opens the secrets sealed for it.
    let key: Option<Arc<nkeys::KeyPair>> = config.credentials.as_ref().map(|c| c.key().clone());

    let hello = Uuid::now_v7();
    let online = NodeReport::Online { labels: config.labels.clone(), agent_version: env!("CARGO_PKG_VERSION").into() };
    let meta =
        Metadata { tenant: config.tenant.clone(), actor: actor.clone(), correlation_id: hello, causation_id: hello };
    outbox.push(&config.node, &meta, &online, Utc::now())?;

    let publisher =
        tokio::spawn(publish_outbox(js.clone(), outbox.clone(), sent.clone(), relinked.clone(), config.clone()));
    let _publisher = AbortOnDrop(publisher);
    let (watched_tx, watched) = tokio::sync::watch::channel(crate::telemetry::WatchedByDeployment::new());
    let heartbeat = tokio::spawn(crate::telemetry::beat(client.clone(), runtime.clone(), config.clone(), watched));
    let _heartbeat = AbortOnDrop(heartbeat);

    // Work arrives through a task of its own, which rides out a lost link: the loop goes on
    // deciding meanwhile.
    let (work_tx, mut work) = mpsc::channel::<jetstream::Message>(WORK_TAKEN_AT_ONCE);
    let _receiver = AbortOnDrop(tokio::spawn(receive_work(js.clone(), config.clone(), work_tx)));
    let mut log_requests = client.subscribe(events::logs::subject(&config.tenant, &config.node)).await?;
    let log_readers = Arc::new(tokio::sync::Semaphore::new(LOG_READERS));
    let (local_tx, mut local_requests) = mpsc::channel::<(LocalRequest, oneshot::Sender<LocalReply>)>(8);
    let _local = control.map(|path| AbortOnDrop(tokio::spawn(serve_local(path, local_tx))));
    let (outcomes_tx, mut outcomes) = mpsc::unbounded_channel::<Input>();
    let metrics = crate::metrics::NodeMetrics::default();
    let steps = Steps { runtime: runtime.clone(), outcomes: outcomes_tx.clone(), metrics: metrics.clone() };
    let _metrics = config.metrics.clone().map(|listen| {
        let (metrics, outbox, runtime) = (metrics.clone(), outbox.clone(), runtime.clone());
        let figures = move || metrics.encode(outbox.len(), runtime.pulled_bytes());
        AbortOnDrop(tokio::spawn(async move {
            if let Err(e) = crate::metrics::serve(listen, figures).await {
                tracing::error!(error = %e, "the node's metrics are not served");
            }
        }))
    });
    let mut agent = Agent::with_deadlines(&config.tenant, &config.node, config.deadlines)
        .on_host(config.policy.clone(), config.default_limits.clone());
    let started = tokio::time::Instant::now();
    let mut ticks = tokio::time::interval(config.reconcile);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut looking: Option<tokio::task::JoinHandle<()>> = None;
    // The work event each deployment came from: its reports are caused by it.
    let mut causes: HashMap<String, Metadata> = HashMap::new();
    tracing::info!(node = %config.node, tenant = %config.tenant, "edge node started");

    // What was accepted before a restart is taken up again.
    for group in desired.all()? {
        let works: Vec<NodeWork> =
            group.iter().filter_map(|e| accept(e, &config, &actor, &mut causes)).filter_map(as_work).collect();
        take_up(&mut agent, runtime.as_ref(), works).await;
    }
    // Deployments that received work behind later work: each is taken up again from all its
    // work, in order, once no step of it is under way.
    let mut late: BTreeSet<String> = BTreeSet::new();

    // Work kept but not yet acked: acked once on disk, with the reports it caused.
    let mut unacked: Vec<jetstream::Message> = Vec::new();
    loop {
        watched_tx.send_if_modified(|watched| agent.update_watched(watched));
        // Reports written since the last flush. The work taken and the reports the agent makes
        // of it go to disk in one flush, before any step they lead to begins, before the work
        // is acked and before the reports are sent.
        let mut written = !unacked.is_empty();
        while let Some(action) = agent.poll_action() {
            if written && !matches!(action, Action::Report(_)) {
                durable(&outbox, &sent, &mut unacked).await?;
                written = false;
            }
            match action {
                Action::Report(report) => {
                    if let NodeReport::DeploymentState { deployment, status: Status::Removed, .. } = &report {
                        desired.forget(deployment)?;
                        late.remove(deployment);
                    }
                    let meta = match &report {
                        NodeReport::DeploymentState { deployment, .. }
                        | NodeReport::Drift { deployment, .. }
                        | NodeReport::AppliedLocally { deployment } => causes.get(deployment).cloned(),
                        NodeReport::Online { .. } | NodeReport::WorkSetAside { .. } => None,
                    }
                    .unwrap_or_else(|| meta.clone());
                    outbox.write(&config.node, &meta, &report, Utc::now())?;
                    written = true;
                }
                Action::Pull { deployment, service, image } => steps.run("pull", move |rt| async move {
                    Input::Pulled { result: rt.pull(&image).await, deployment, service, image }
                }),
                Action::Create { deployment, service, spec } => {
                    let key = key.clone();
                    steps.run("create", move |rt| async move {
                        let result = match opened(*spec.clone(), key.as_ref()) {
                            Ok(spec) => rt.create(&spec).await,
                            Err(e) => Err(e),
                        };
                        Input::Created { result, deployment, service, image: spec.image }
                    })
                }
                Action::Start { deployment, service, container } => steps.run("start", move |rt| async move {
                    Input::Started { result: rt.start(&container).await, deployment, service, container }
                }),
                Action::Stop { deployment, service, container } => steps.run("stop", move |rt| async move {
                    Input::Stopped { result: rt.stop(&container).await, deployment, service }
                }),
                Action::Refresh { deployment, service, image } => steps.run("refresh", move |rt| async move {
                    let result = match rt.pull_again(&image).await {
                        Ok(()) => rt.image_id(&image).await,
                        Err(e) => Err(e),
                    };
                    Input::Refreshed { result, deployment, service }
                }),
                Action::Retire { deployment, service, container } => steps.run("retire", move |rt| async move {
                    Input::Retired { result: rt.remove(&container, None).await, deployment, service }
                }),
                Action::Remove { deployment, service, container, image } => steps.run("remove", move |rt| async move {
                    Input::Removed { result: rt.remove(&container, Some(&image)).await, deployment, service }
                }),
                Action::RemoveNetwork { deployment, network } => steps.run("remove_network", move |rt| async move {
                    Input::NetworkRemoved { result: rt.remove_network(&network).await, deployment }
                }),
            }
        }
        if written {
            durable(&outbox, &sent, &mut unacked).await?;
        }
        let ready: Vec<String> = late.iter().filter(|d| !agent.busy(d)).cloned().collect();
        let mut refolded = false;
        for deployment in ready {
            late.remove(&deployment);
            tracing::info!(deployment, "work came behind later work: the deployment is taken up again in order");
            agent.let_go(&deployment);
            let works: Vec<NodeWork> = desired
                .of(&deployment)?
                .iter()
                .filter_map(|e| accept(e, &config, &actor, &mut causes))
                .filter_map(as_work)
                .collect();
            take_up(&mut agent, runtime.as_ref(), works).await;
            refolded = true;
        }
        if refolded {
            // What the deployments taken up again call for is done before anything else.
            continue;
        }
        let input = tokio::select! {
            Some(first) = work.recv() => {
                // A node that missed much work takes all of it (the consumer says how much
                // is behind each piece) before the agent acts, and goes straight to the last
                // piece's wanted state: one step and a report or two per deployment.
                let mut pieces = Vec::new();
                let mut messages = vec![first];
                let began = tokio::time::Instant::now();
                loop {
                    while messages.len() < WORK_TAKEN_AT_ONCE {
                        let Ok(message) = work.try_recv() else { break };
                        messages.push(message);
                    }
                    let behind = messages.last().and_then(|m| m.info().ok()).map_or(0, |info| info.pending);
                    let taking = std::mem::take(&mut messages);
                    take_work(&desired, &outbox, &taking, &config, &actor, &mut causes, &mut pieces)?;
                    unacked.extend(taking);
                    if behind == 0 || began.elapsed() > CATCHING_UP_AT_MOST {
                        break;
                    }
                    match tokio::time::timeout(CATCHING_UP_AT_MOST.saturating_sub(began.elapsed()), work.recv()).await {
                        Ok(Some(message)) => messages.push(message),
                        _ => break,
                    }
                }
                for (work, kept) in pieces {
                    match kept {
                        Kept::InOrder => agent.handle(Input::Work(work)),
                        Kept::Late => {
                            late.insert(work.deployment().to_owned());
                        }
                        // Delivered again (its ack was lost), or older than the removal of
                        // its deployment: nothing to do.
                        Kept::Again | Kept::Superseded => {}
                    }
                }
                continue;
            }
            Some(outcome) = outcomes.recv() => outcome,
            Some((request, reply)) = local_requests.recv() => {
                let answer = match request {
                    LocalRequest::List => LocalReply::Workloads(agent.local_workloads()),
                    LocalRequest::Apply { name } => match agent.staged(&name) {
                        Err(e) => LocalReply::Error(e),
                        Ok(deployment) => {
                            // Kept like work from the engine, so that a restart remembers it; the
                            // engine hears of it through the outbox, whenever the link allows.
                            let work = NodeWork::Apply { deployment: deployment.clone() };
                            let id = Uuid::now_v7();
                            let local = Metadata { correlation_id: id, causation_id: id, ..meta.clone() };
                            let envelope =
                                Envelope::new(id, Utc::now(), events::work::AGGREGATE_TYPE, &config.node, &local, &work, None);
                            desired.keep(&[(&deployment, &envelope, 0)])?;
                            causes.insert(deployment.clone(), local.clone());
                            let applied = NodeReport::AppliedLocally { deployment: deployment.clone() };
                            // The work and its report, in the report's flush.
                            outbox.push(&config.node, &local, &applied, Utc::now())?;
                            sent.notify_one();
                            agent.handle(Input::Work(work));
                            LocalReply::Applied { deployment }
                        }
                    },
                };
                let _ = reply.send(answer);
                continue;
            }
            Some(link) = links.recv() => match link {
                LinkEvent::Connected => {
                    // The first connection brings nothing back: no link was lost before it.
                    if std::mem::replace(&mut linked_before, true) {
                        relinked.notify_one();
                        metrics.reconnected();
                    }
                    Input::Reconnected
                }
                LinkEvent::Revoked => anyhow::bail!("the node's credential was revoked: it may not connect again"),
            },
            _ = ticks.tick() => {
                agent.handle(Input::Tick { now: started.elapsed().as_millis() as u64 });
                // One look at the containers at a time: a slow runtime does not pile them up.
                if looking.as_ref().is_none_or(|l| l.is_finished()) {
                    looking = Some(tokio::spawn(look_for_drift(runtime.clone(), agent.to_observe(), outcomes_tx.clone())));
                }
                continue;
            }
            Some(request) = log_requests.next() => {
                let target = serde_json::from_slice::<LogsRequest>(&request.payload)
                    .ok()
                    .map(|r| LogTarget { containers: agent.containers(&r.deployment), request: r });
                // A few at once: more are answered busy, never queued without bound.
                match log_readers.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let answer = answer_logs(client.clone(), runtime.clone(), request, target);
                        tokio::spawn(async move {
                            answer.await;
                            drop(permit);
                        });
                    }
                    Err(_) => busy(client.clone(), request).await,
                }
                continue;
            }
        };
        let refreshed = match &input {
            Input::Refreshed { deployment, result: Ok(_), .. } => Some(deployment.clone()),
            _ => None,
        };
        agent.handle(input);
        if let Some(deployment) = refreshed.filter(|d| !agent.refreshing(d)) {
            desired.done_refreshing(&deployment)?;
        }
    }
}

/// Keeps `messages` of work in the work log, in one write (acked once flushed, by
/// [`durable`]); adds each piece of work to `pieces` with what became of it. A message that is
/// not work for this node (`events::fit`) is set aside: logged, and reported to the engine,
/// which keeps a copy.
fn take_work(
    desired: &Desired,
    outbox: &Outbox,
    messages: &[jetstream::Message],
    config: &NodeConfig,
    actor: &str,
    causes: &mut HashMap<String, Metadata>,
    pieces: &mut Vec<(NodeWork, Kept)>,
) -> anyhow::Result<()> {
    let mut taken = Vec::with_capacity(messages.len());
    tracing::debug!(node = config.node, pieces = messages.len(), "work taken");
    for message in messages {
        let sequence = message.info().map(|i| i.stream_sequence).unwrap_or(0);
        match events::fit::read_only::<NodeWork>(&message.subject, &message.payload, events::work::AGGREGATE_TYPE) {
            Ok(envelope) => {
                if let Some(work) = accept(&envelope, config, actor, causes).and_then(as_work) {
                    taken.push((work, envelope, sequence));
                }
            }
            Err(unfit) => {
                tracing::error!(sequence, subject = %message.subject, reason = %unfit, "work set aside");
                let id = Uuid::now_v7();
                let meta = Metadata {
                    tenant: config.tenant.clone(),
                    actor: actor.to_owned(),
                    correlation_id: id,
                    causation_id: id,
                };
                let report = NodeReport::WorkSetAside { sequence, reason: unfit.to_string() };
                outbox.write(&config.node, &meta, &report, Utc::now())?;
            }
        }
    }
    let offered: Vec<_> = taken.iter().map(|(work, e, sequence)| (work.deployment(), e, *sequence)).collect();
    let kept = desired.keep(&offered)?;
    pieces.extend(taken.into_iter().map(|(work, _, _)| work).zip(kept));
    Ok(())
}

/// Flushes what was written (the work log's and the outbox's), then wakes the publisher and
/// acks the work kept: a crash before the flush brings the work again, and no report it caused
/// was sent. An ack lost with the link brings the work again too, and it is recognised then.
async fn durable(outbox: &Outbox, sent: &Notify, unacked: &mut Vec<jetstream::Message>) -> anyhow::Result<()> {
    outbox.flush()?;
    sent.notify_one();
    for message in unacked.drain(..) {
        if let Err(e) = message.ack().await {
            tracing::warn!(error = %e, "acking work");
        }
    }
    Ok(())
}

/// Reads a work envelope into an input for the agent, remembering what caused it; `None` for
/// work of a kind this node does not know.
fn accept(
    envelope: &Envelope,
    config: &NodeConfig,
    actor: &str,
    causes: &mut HashMap<String, Metadata>,
) -> Option<Input> {
    let work: NodeWork = match envelope.event() {
        Ok(work) => work,
        Err(e) => {
            tracing::error!(error = %e, "skipping work of an unknown kind");
            return None;
        }
    };
    let meta = Metadata {
        tenant: config.tenant.clone(),
        actor: actor.to_owned(),
        correlation_id: envelope.correlation_id,
        causation_id: envelope.id,
    };
    causes.insert(work.deployment().to_owned(), meta);
    Some(Input::Work(work))
}

/// Takes a deployment up from all its work, in order, and from what the runtime really has of
/// it, so nothing is pulled, created or restarted twice.
async fn take_up<R: ContainerRuntime>(agent: &mut Agent, runtime: &R, works: Vec<NodeWork>) {
    let Some((deployment, lookups)) = agent.recover(works) else { return };
    let mut observed = BTreeMap::new();
    for Lookup { service, name, image } in lookups {
        let found = runtime.observe(&name, &image).await.unwrap_or_else(|e| {
            tracing::warn!(container = name, error = %e, "could not observe; starting over");
            Observed::default()
        });
        observed.insert(service, found);
    }
    agent.handle(Input::Recovered { deployment, observed });
}

fn as_work(input: Input) -> Option<NodeWork> {
    match input {
        Input::Work(work) => Some(work),
        _ => None,
    }
}

/// A logs request and the containers (name, reference) of its deployment on this node, if
/// it has it.
struct LogTarget {
    request: LogsRequest,
    containers: Option<Vec<(String, String)>>,
}

/// Logs requests answered at once.
const LOG_READERS: usize = 4;

/// Answers a logs request that came while [`LOG_READERS`] others were being answered.
async fn busy(client: async_nats::Client, request: async_nats::Message) {
    let Some(reply_to) = request.reply else { return };
    let error =
        events::Failure { code: "busy".to_owned(), message: "the node is reading other logs: ask again".to_owned() };
    let payload =
        serde_json::to_vec(&LogsReply { containers: vec![], error: Some(error) }).expect("a reply serializes");
    if let Err(e) = client.publish(reply_to, payload.into()).await {
        tracing::warn!(error = %e, "answering a logs request");
    }
}

/// Answers a logs request with a page per container; a container that fails says so alone.
async fn answer_logs<R: ContainerRuntime>(
    client: async_nats::Client,
    runtime: Arc<R>,
    request: async_nats::Message,
    parsed: Option<LogTarget>,
) {
    let Some(reply_to) = request.reply else { return };
    let failure = |code: &str, message: String| events::Failure { code: code.to_owned(), message };
    let reply = match parsed {
        None => LogsReply { containers: vec![], error: Some(failure("bad_request", "not a logs request".into())) },
        Some(LogTarget { request, containers: None }) => {
            let message = format!("deployment `{}` is not on this node", request.deployment);
            LogsReply { containers: vec![], error: Some(failure("unknown_deployment", message)) }
        }
        Some(LogTarget { request, containers: Some(containers) }) => {
            let mut pages = Vec::with_capacity(containers.len());
            for (name, reference) in containers {
                let offset = request.cursor.get(&name).copied().unwrap_or(0);
                // The engine asks for a page; no request makes the node read more than one.
                let limit = request.limit.min(events::logs::PAGE_LINES);
                pages.push(match runtime.logs(&reference, offset, limit, request.timestamps).await {
                    Ok((lines, more)) => {
                        let read = u64::try_from(lines.len()).unwrap_or(u64::MAX);
                        let next = more.then_some(offset.saturating_add(read));
                        ContainerLogs { container: name, lines, next, error: None }
                    }
                    Err(e) => ContainerLogs { container: name, lines: vec![], next: None, error: Some(e.failure()) },
                });
            }
            LogsReply { containers: pages, error: None }
        }
    };
    let payload = serde_json::to_vec(&reply).expect("a reply always serializes");
    if let Err(e) = client.publish(reply_to, payload.into()).await {
        tracing::warn!(error = %e, "answering a logs request");
    }
}

/// Listens for the node's own command line on a unix socket in its data directory.
async fn serve_local(path: std::path::PathBuf, requests: mpsc::Sender<(LocalRequest, oneshot::Sender<LocalReply>)>) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    // A socket left by a killed process would refuse the bind.
    let _ = std::fs::remove_file(&path);
    let listener = match tokio::net::UnixListener::bind(&path) {
        Ok(listener) => listener,
        Err(e) => return tracing::error!(path = %path.display(), error = %e, "the local command line is not available"),
    };
    while let Ok((stream, _)) = listener.accept().await {
        let requests = requests.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            if BufReader::new(read).read_line(&mut line).await.is_err() {
                return;
            }
            let reply = match serde_json::from_str::<LocalRequest>(&line) {
                Ok(request) => {
                    let (tx, rx) = oneshot::channel();
                    match requests.send((request, tx)).await {
                        Ok(()) => rx.await.unwrap_or_else(|_| LocalReply::Error("the node is stopping".into())),
                        Err(_) => LocalReply::Error("the node is stopping".into()),
                    }
                }
                Err(e) => LocalReply::Error(format!("not a request: {e}")),
            };
            let mut text = serde_json::to_string(&reply).expect("a reply always serializes");
            text.push('\n');
            let _ = write.write_all(text.as_bytes()).await;
        });
    }
}

/// Looks up each settled container, and hands the agent what the runtime has of it.
async fn look_for_drift<R: ContainerRuntime>(
    runtime: Arc<R>,
    checks: Vec<Check>,
    outcomes: mpsc::UnboundedSender<Input>,
) {
    for check in checks {
        match runtime.observe(&check.name, &check.image).await {
            Ok(observed) => {
                if outcomes.send(Input::Observed { check, observed }).is_err() {
                    return;
                }
            }
            // The runtime does not answer (dockerd restarting): nothing is concluded.
            Err(e) => tracing::warn!(container = check.name, error = %e, "looking for drift"),
        }
    }
}

/// Runs one runtime step as a task; its outcome comes back to the loop as an input.
/// Where a runtime step's outcome goes, and what counts it.
struct Steps<R> {
    runtime: Arc<R>,
    outcomes: mpsc::UnboundedSender<Input>,
    metrics: crate::metrics::NodeMetrics,
}

impl<R: ContainerRuntime> Steps<R> {
    /// Runs a step of `kind` in a task of its own; its outcome comes back to the loop.
    fn run<F, Fut>(&self, kind: &'static str, run: F)
    where
        F: FnOnce(Arc<R>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Input> + Send + 'static,
    {
        let (runtime, outcomes, metrics) = (self.runtime.clone(), self.outcomes.clone(), self.metrics.clone());
        tokio::spawn(
            async move {
                let began = std::time::Instant::now();
                let outcome = run(runtime).await;
                let failed = outcome.failed().unwrap_or(false);
                metrics.step(kind, failed, began.elapsed().as_secs_f64());
                tracing::debug!(kind, failed, "step done");
                // The loop only ends with the node; an outcome that finds it gone has nowhere to go.
                let _ = outcomes.send(outcome);
            }
            .instrument(tracing::debug_span!("step", kind)),
        );
    }
}

/// How many pieces of work are kept in one write, at most.
const WORK_TAKEN_AT_ONCE: usize = 256;
/// How long a node catching up takes work before its agent acts on what it has, at most.
const CATCHING_UP_AT_MOST: Duration = Duration::from_millis(500);

/// How long one pull of the node's work waits, and how often the server says it is alive
/// while no work comes. Every node of a fleet holds a pull on the server: a heartbeat every
/// five seconds is 2,000 messages a second for 10,000 nodes.
const PULL_EXPIRES: Duration = Duration::from_secs(30);
const PULL_HEARTBEAT: Duration = Duration::from_secs(5);

/// Hands the loop every message of the node's durable consumer, for as long as the node runs:
/// through a lost link, a restarted server or a consumer that has to be found again
/// ([`bus::consume`]). The engine makes the consumer when it enrolls the node; the node may only
/// read it.
async fn receive_work(js: jetstream::Context, config: NodeConfig, work: mpsc::Sender<jetstream::Message>) {
    let name = events::subject::node_consumer(&config.tenant, &config.node);
    let pull = bus::consume::Pull { expires: PULL_EXPIRES, heartbeat: PULL_HEARTBEAT, batch: events::work::IN_FLIGHT };
    let find = || {
        let (js, stream, name) = (js.clone(), config.stream.clone(), name.clone());
        async move {
            let failed = |e: String| bus::store::ConsumeError { consumer: name.clone(), reason: e };
            let stream = js.get_stream_no_info(&stream).await.map_err(|e| failed(e.to_string()))?;
            stream.get_consumer(&name).await.map_err(|e| failed(e.to_string()))
        }
    };
    let messages = bus::consume::durable(&name, js.client(), pull, find);
    let mut messages = std::pin::pin!(messages);
    while let Some(message) = messages.next().await {
        if work.send(message).await.is_err() {
            return;
        }
    }
}

/// Publishes the outbox, oldest first, removing each report once JetStream acknowledged it;
/// forever, woken by `sent` when a report is kept. When the link comes back (`relinked`), the
/// acknowledgements the lost connection took are not waited for: what they were for is sent
/// again at once (the server stores a report sent twice once).
pub async fn publish_outbox(
    js: jetstream::Context,
    outbox: Outbox,
    sent: Arc<Notify>,
    relinked: Arc<Notify>,
    config: NodeConfig,
) {
    let subject = events::subject::node_reports(&config.tenant, &config.node);
    loop {
        let pending = match outbox.oldest(256) {
            Ok(pending) => pending,
            Err(e) => {
                tracing::error!(error = format!("{e:#}"), "reading the outbox");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if pending.is_empty() {
            let _ = tokio::time::timeout(Duration::from_secs(1), sent.notified()).await;
            continue;
        }
        // What leaves is on disk first (nothing to do when the loop flushed it already): a
        // crash never takes back a report the engine has.
        if let Err(e) = outbox.flush() {
            tracing::error!(error = %e, "flushing the outbox");
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        // Sent together, oldest first, and each removed once acknowledged. From the first that
        // is not, the rest are sent again (the server stores a report sent twice once); one
        // acknowledged meanwhile may then have been stored before an older one, which the
        // engine tells by the node's count (`Envelope::order`) and takes as stale.
        let mut failed = None;
        let mut relink = false;
        let mut acks = Vec::with_capacity(pending.len());
        for report in pending {
            let traceparent = bus::trace::traceparent(report.trace, &report.msg_id);
            let message = jetstream::message::PublishMessage::build()
                .payload(report.bytes)
                .message_id(&report.msg_id)
                .header(bus::trace::HEADER, traceparent.as_str());
            match js.send_publish(subject.clone(), message).await {
                Ok(ack) => acks.push((report.key, ack)),
                Err(e) => {
                    failed = Some(e.to_string());
                    break;
                }
            }
        }
        for (key, ack) in acks {
            let acked = tokio::select! {
                biased;
                acked = std::future::IntoFuture::into_future(ack) => acked,
                _ = relinked.notified() => {
                    relink = true;
                    break;
                }
            };
            match acked {
                Ok(_) => {
                    if let Err(e) = outbox.remove(key) {
                        tracing::error!(error = %e, "removing a sent report from the outbox");
                    }
                }
                // Each ack waits its own timeout: on a lost link, one is enough to wait for.
                Err(e) => {
                    failed.get_or_insert(e.to_string());
                    break;
                }
            }
        }
        if let Err(e) = outbox.flush() {
            tracing::error!(error = %e, "flushing the outbox");
        }
        tracing::debug!(node = config.node, left = outbox.len(), "reports sent");
        if relink {
            tracing::info!(pending = outbox.len(), "the link came back: the outbox is sent again");
        } else if let Some(e) = failed {
            tracing::warn!(error = %e, pending = outbox.len(), "the outbox waits for the link");
            let _ = tokio::time::timeout(Duration::from_millis(500), relinked.notified()).await;
        }
    }
}

pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
