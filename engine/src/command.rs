//! The command path: load an aggregate, decide, append conditionally, re-decide on conflict.
//! The HTTP API, the report ingestor and the tests all go through here.
//!
//! [`CommandHandler`] loads the aggregate's subject, folds it, calls the pure `decide`, wraps
//! the events in envelopes chained by hash to the subject's previous event, and appends them
//! expecting the subject's last sequence. On a conflict it reloads and decides again, at most
//! 8 times ([`CommandError::Contention`]).
//!
//! Folded aggregates are kept in memory between commands (up to [`CACHED_AGGREGATES`]), each
//! with its last sequence, its last hash and the ids of the commands applied, so a command on
//! a known aggregate costs one conditional append and no load. The cache is only ever a guess:
//! the append still expects the last sequence the cache saw, and a conflict (another engine
//! wrote) reloads. A refusal, or a decision to do nothing, appends nothing that would prove the
//! cache right: it is trusted only once a direct get of the subject's last event says the fold
//! is current. Commands on one aggregate take turns in this process, so they never conflict
//! with each other.
//!
//! # Idempotency
//!
//! Each append carries `Nats-Msg-Id` `<command id>:<subject>:<index>`. A command sent again
//! with the same command id is recognised from the aggregate's history (the events whose
//! `causation_id` is that id, kept with the fold) and stores nothing, beyond the stream's
//! duplicate window too. Sent again through an engine whose fold is behind, its append is
//! refused (a conflict, or a duplicate message id) and the reloaded history recognises it.
//!
//! # Commands of several events
//!
//! Their events are appended one by one, each expecting the previous one's sequence:
//! JetStream's atomic batches do not allow `Nats-Msg-Id`, which idempotency rests on. A crash
//! between two appends, or another writer coming between them ([`CommandError::Interrupted`]),
//! leaves the first events alone, which is a valid history; the rest of the command is not
//! retried and the caller is told.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use chrono::Utc;
use uuid::Uuid;

use events::envelope::{chain_hash, Metadata};
use events::{Aggregate, Ctx, Envelope};

use bus::store::{AppendError, EventStore, Loaded, Outgoing, ReadError, StoreError, StoredEvent};

/// Who asks, and the id that makes asking twice harmless.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandMeta {
    pub tenant: String,
    pub actor: String,
    /// Identifies this command: a command sent again with the same id is applied once.
    pub command_id: Uuid,
    pub correlation_id: Uuid,
}

impl CommandMeta {
    /// A new command by `actor` in `tenant`, starting its own correlation.
    pub fn new(tenant: &str, actor: &str) -> CommandMeta {
        let id = Uuid::now_v7();
        CommandMeta { tenant: tenant.to_owned(), actor: actor.to_owned(), command_id: id, correlation_id: id }
    }
}

/// The outcome of a command that was not rejected.
#[derive(Debug, Clone)]
pub struct Committed {
    /// The events the command produced (or had produced, if it was a duplicate).
    pub events: Vec<StoredEvent>,
    /// How many times the command was decided: more than 1 after a conflict.
    pub attempts: u32,
    /// True when this command id had been applied before and nothing new was stored.
    pub duplicate: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum CommandError<R: std::error::Error> {
    #[error(transparent)]
    Rejected(R),
    #[error("gave up after {attempts} conflicting writes to {subject}")]
    Contention { subject: String, attempts: u32 },
    /// Another writer came between two events of this command: the first `stored` of its
    /// `decided` events are in the log, the rest are not.
    #[error("another writer interrupted the command on {subject}: {stored} of {decided} events stored")]
    Interrupted { subject: String, stored: usize, decided: usize },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl<R: std::error::Error> From<ReadError> for CommandError<R> {
    fn from(e: ReadError) -> Self {
        CommandError::Store(e.into())
    }
}

impl<R: std::error::Error> From<AppendError> for CommandError<R> {
    fn from(e: AppendError) -> Self {
        CommandError::Store(e.into())
    }
}

/// How many folded aggregates are kept in memory by default.
pub const CACHED_AGGREGATES: usize = 100_000;

#[derive(Debug, Clone)]
pub struct CommandHandler {
    store: EventStore,
    max_attempts: u32,
    cache: Arc<Cache>,
}

impl CommandHandler {
    pub fn new(store: EventStore) -> CommandHandler {
        CommandHandler::with_cache(store, CACHED_AGGREGATES)
    }

    /// A handler keeping at most `capacity` folded aggregates in memory (0: none).
    pub fn with_cache(store: EventStore, capacity: usize) -> CommandHandler {
        CommandHandler { store, max_attempts: 8, cache: Arc::new(Cache::new(capacity)) }
    }

    pub fn store(&self) -> &EventStore {
        &self.store
    }

    /// Aggregate `id` of type `A` as the log has it now. One direct get of the subject's last
    /// event tells whether the cached fold is still current.
    pub async fn state<A: Aggregate>(&self, tenant: &str, id: &str) -> Result<A, StoreError> {
        self.read(tenant, id, A::clone).await
    }

    /// `look` at aggregate `id` of type `A` as the log has it now, or later, without copying
    /// it. The direct get that tells whether the cached fold is current is made before the
    /// fold is locked, so readers of one aggregate do not wait on each other's round trips.
    pub async fn read<A: Aggregate, T>(
        &self,
        tenant: &str,
        id: &str,
        look: impl FnOnce(&A) -> T,
    ) -> Result<T, StoreError> {
        let subject = events::subject::aggregate(tenant, A::TYPE, id);
        let last = self.store.last_sequence_of(&subject).await?;
        let slot = self.cache.slot(&subject);
        let mut held = slot.lock().await;
        match held.as_ref().and_then(|c| c.downcast_ref::<Current<A>>()) {
            Some(current) if current.last_sequence >= last => Ok(look(&current.state)),
            _ => {
                let current = Current::<A>::load(&self.store, &subject).await?;
                let seen = look(&current.state);
                *held = Some(Box::new(current));
                Ok(seen)
            }
        }
    }

    /// `look` at aggregate `id` of type `A` as this engine last folded it, if it has: no round
    /// trip, but maybe behind the log (another engine wrote since).
    pub async fn peek<A: Aggregate, T>(&self, tenant: &str, id: &str, look: impl FnOnce(&A) -> T) -> Option<T> {
        let subject = events::subject::aggregate(tenant, A::TYPE, id);
        let slot = self.cache.slot(&subject);
        let held = slot.lock().await;
        held.as_ref().and_then(|c| c.downcast_ref::<Current<A>>()).map(|current| look(&current.state))
    }

    /// Decides `command` on aggregate `id` and appends what it decided.
    pub async fn execute<A: Aggregate>(
        &self,
        id: &str,
        command: &A::Command,
        meta: &CommandMeta,
    ) -> Result<Committed, CommandError<A::Rejection>> {
        let subject = events::subject::aggregate(&meta.tenant, A::TYPE, id);
        let slot = self.cache.slot(&subject);
        // Commands on one aggregate take turns. The fold stays out of the cache while one
        // runs, and goes back only when it is known to match the log.
        let mut held = slot.lock().await;
        let cached = held.take().and_then(|c| c.downcast::<Current<A>>().ok()).map(|c| *c);
        self.decide_and_append(&mut held, cached, subject, id, command, meta).await
    }

    /// Decides on `loaded`, which may already be stale: a conflict reloads and decides again,
    /// at most `max_attempts` times.
    pub async fn execute_from<A: Aggregate>(
        &self,
        loaded: Loaded,
        id: &str,
        command: &A::Command,
        meta: &CommandMeta,
    ) -> Result<Committed, CommandError<A::Rejection>> {
        let slot = self.cache.slot(&loaded.subject);
        let mut held = slot.lock().await;
        let current = Current::<A>::from_loaded(&loaded)?;
        self.decide_and_append(&mut held, Some(current), loaded.subject, id, command, meta).await
    }

    async fn decide_and_append<A: Aggregate>(
        &self,
        held: &mut Option<Box<dyn Any + Send>>,
        cached: Option<Current<A>>,
        subject: String,
        id: &str,
        command: &A::Command,
        meta: &CommandMeta,
    ) -> Result<Committed, CommandError<A::Rejection>> {
        // An aggregate not in the cache is first taken for a new one: a command that creates it
        // costs one append expecting an empty subject, and any history there shows as a
        // conflict, or as a refusal checked against the log like any other. Until the log has
        // been read, the fold is a guess.
        let mut current = cached.unwrap_or_else(Current::empty);
        let mut fresh = false;
        for attempt in 1..=self.max_attempts {
            if let Some(sequences) = current.commands.get(&meta.command_id) {
                let events = self.store.events_at(sequences).await?;
                *held = Some(Box::new(current));
                return Ok(Committed { events, attempts: attempt, duplicate: true });
            }
            let ctx = Ctx { now: Utc::now() };
            let decided = match current.state.decide(command, &ctx) {
                Ok(decided) if !decided.is_empty() => decided,
                // A refusal, or nothing to do, is only trusted on a fold known to be current:
                // no append will prove the cached one right, so the log's last sequence does.
                _ if !fresh => {
                    let last = self.store.last_sequence_of(&subject).await?;
                    if last != current.last_sequence {
                        current = Current::load(&self.store, &subject).await?;
                    }
                    fresh = true;
                    continue;
                }
                Err(rejection) => {
                    *held = Some(Box::new(current));
                    return Err(CommandError::Rejected(rejection));
                }
                Ok(_) => {
                    *held = Some(Box::new(current));
                    return Ok(Committed { events: vec![], attempts: attempt, duplicate: false });
                }
            };
            let stored = wrap::<A>(&self.store, current.last_hash.clone(), id, meta, &decided, &ctx);
            let outgoing = stored
                .iter()
                .enumerate()
                .map(|(i, e)| Outgoing { msg_id: msg_id(meta, &subject, i), bytes: e.bytes.clone() })
                .collect();
            match self.store.append(&subject, current.last_sequence, outgoing).await {
                Ok(sequences) => {
                    let events: Vec<StoredEvent> =
                        stored.into_iter().zip(sequences).map(|(e, sequence)| StoredEvent { sequence, ..e }).collect();
                    current.record(&events, &decided);
                    *held = Some(Box::new(current));
                    return Ok(Committed { events, attempts: attempt, duplicate: false });
                }
                Err(AppendError::Conflict { appended, .. }) if appended > 0 => {
                    return Err(CommandError::Interrupted { subject, stored: appended, decided: stored.len() });
                }
                // Another writer came first, or this command was stored before (through
                // another engine): the log says which.
                Err(AppendError::Conflict { .. } | AppendError::Duplicate { .. }) => {
                    tracing::debug!(%subject, attempt, "conflict, deciding again");
                    current = Current::load(&self.store, &subject).await?;
                    fresh = true;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(CommandError::Contention { subject, attempts: self.max_attempts })
    }
}

/// A folded aggregate as of stream sequence `last_sequence`, with what a next command needs:
/// the hash to chain to and the ids of the commands already applied.
struct Current<A> {
    state: A,
    last_sequence: u64,
    last_hash: Option<String>,
    /// Each applied command's id and the sequences of its events.
    commands: HashMap<Uuid, Vec<u64>>,
}

impl<A: Aggregate> Current<A> {
    fn empty() -> Current<A> {
        Current { state: A::default(), last_sequence: 0, last_hash: None, commands: HashMap::new() }
    }

    async fn load(store: &EventStore, subject: &str) -> Result<Current<A>, StoreError> {
        Current::from_loaded(&store.load(subject).await?)
    }

    fn from_loaded(loaded: &Loaded) -> Result<Current<A>, StoreError> {
        let mut commands: HashMap<Uuid, Vec<u64>> = HashMap::new();
        for event in &loaded.events {
            commands.entry(event.envelope.causation_id).or_default().push(event.sequence);
        }
        Ok(Current {
            state: fold::<A>(loaded)?,
            last_sequence: loaded.last_sequence,
            last_hash: loaded.last_hash(),
            commands,
        })
    }

    /// Takes in events just appended.
    fn record(&mut self, appended: &[StoredEvent], decided: &[A::Event]) {
        for (stored, event) in appended.iter().zip(decided) {
            self.state = std::mem::take(&mut self.state).evolve(event);
            self.commands.entry(stored.envelope.causation_id).or_default().push(stored.sequence);
            self.last_sequence = stored.sequence;
            self.last_hash = Some(chain_hash(&stored.bytes));
        }
    }
}

type Slot = Arc<tokio::sync::Mutex<Option<Box<dyn Any + Send>>>>;

/// The folded aggregates kept between commands, by subject, each behind the lock that makes
/// commands on it take turns.
struct Cache {
    capacity: usize,
    slots: Mutex<HashMap<String, Slot>>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache").field("capacity", &self.capacity).finish_non_exhaustive()
    }
}

impl Cache {
    fn new(capacity: usize) -> Cache {
        Cache { capacity, slots: Mutex::new(HashMap::new()) }
    }

    /// The slot of `subject`. Over capacity, every slot nobody holds is let go at once.
    fn slot(&self, subject: &str) -> Slot {
        let mut slots = self.slots.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(slot) = slots.get(subject) {
            return slot.clone();
        }
        let slot = Slot::default();
        if self.capacity == 0 {
            return slot;
        }
        if slots.len() >= self.capacity {
            slots.retain(|_, slot| Arc::strong_count(slot) > 1);
        }
        slots.insert(subject.to_owned(), slot.clone());
        slot
    }
}

/// Folds the loaded events into the aggregate's state.
pub fn fold<A: Aggregate>(loaded: &Loaded) -> Result<A, StoreError> {
    loaded.events.iter().try_fold(A::default(), |state, stored| {
        let event: A::Event =
            stored.envelope.event().map_err(|source| ReadError::Corrupt { sequence: stored.sequence, source })?;
        Ok(state.evolve(&event))
    })
}

/// The dedup id of the `index`th event of a command on a subject: the same command retried
/// gives the same ids.
fn msg_id(meta: &CommandMeta, subject: &str, index: usize) -> String {
    format!("{}:{subject}:{index}", meta.command_id)
}

/// Wraps decided events into envelopes chained to the loaded history (sequences not known yet).
fn wrap<A: Aggregate>(
    store: &EventStore,
    mut prev_hash: Option<String>,
    id: &str,
    meta: &CommandMeta,
    decided: &[A::Event],
    ctx: &Ctx,
) -> Vec<StoredEvent> {
    let metadata = Metadata {
        tenant: meta.tenant.clone(),
        actor: meta.actor.clone(),
        correlation_id: meta.correlation_id,
        causation_id: meta.command_id,
    };
    decided
        .iter()
        .map(|event| {
            let envelope = Envelope::new(Uuid::now_v7(), ctx.now, A::TYPE, id, &metadata, event, prev_hash.take());
            let envelope = store.seal(envelope);
            let bytes = Bytes::from(envelope.encode());
            prev_hash = Some(chain_hash(&bytes));
            StoredEvent { sequence: 0, envelope, bytes }
        })
        .collect()
}
