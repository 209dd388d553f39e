//! The command path: load an aggregate, decide, append conditionally, re-decide on conflict.
//! The HTTP API, the report ingestor and the tests all go through here.
//!
//! [`CommandHandler`] loads the aggregate's subject, folds it, calls the pure `decide`, wraps
//! the events in envelopes chained by hash to the subject's previous event, and appends them
//! expecting the subject's last sequence. On a conflict it reloads and decides again, at most
//! 8 times ([`CommandError::Contention`]).
//!
//! Folded aggregates are kept in memory between commands (up to [`CACHED_AGGREGATES`] of them
//! and [`CACHED_BYTES`] in all, each weighed by the bytes of the events folded into it), each
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
//! Their events are appended one by one, each expecting the previous one's sequence. A crash
//! between two appends, or another writer coming between them ([`CommandError::Interrupted`]),
//! leaves the first events alone, which is a valid history; the rest of the command is not
//! retried and the caller is told. The stream does not allow atomic batches
//! (`allow_atomic`), which would store them all or none in one round trip.

use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use chrono::Utc;
use uuid::Uuid;

use events::envelope::{chain_hash, Metadata};
use events::{Aggregate, Ctx, Envelope};

use bus::store::{AppendError, EventStore, Loaded, Outgoing, ReadError, StoreError, StoredEvent};

use crate::metrics::CommandMetrics;

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
/// How much memory the folded aggregates kept take by default, at most, as weighed by
/// [`Current::weight`].
pub const CACHED_BYTES: usize = 256 << 20;

#[derive(Debug, Clone)]
pub struct CommandHandler {
    store: EventStore,
    max_attempts: u32,
    cache: Arc<Cache>,
    metrics: CommandMetrics,
}

impl CommandHandler {
    pub fn new(store: EventStore) -> CommandHandler {
        CommandHandler::with_cache(store, CACHED_AGGREGATES, CACHED_BYTES)
    }

    /// A handler keeping at most `capacity` folded aggregates (0: none) and `bytes` of them in
    /// memory.
    pub fn with_cache(store: EventStore, capacity: usize, bytes: usize) -> CommandHandler {
        CommandHandler {
            store,
            max_attempts: 8,
            cache: Arc::new(Cache::new(capacity, bytes)),
            metrics: CommandMetrics::default(),
        }
    }

    /// What this handler counts and times: commands by outcome, appends by duration.
    pub fn metrics(&self) -> &CommandMetrics {
        &self.metrics
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
                self.cache.keep(&subject, &mut held, current);
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
    #[tracing::instrument(
        name = "command",
        skip_all,
        fields(aggregate = A::TYPE, id, tenant = %meta.tenant, correlation = %meta.correlation_id.simple()),
    )]
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
        let outcome = self.decide_and_append(&mut held, cached, subject, id, command, meta).await;
        self.count::<A>(&outcome);
        outcome
    }

    /// Decides on `loaded`, which may already be stale: a conflict reloads and decides again,
    /// at most `max_attempts` times.
    #[tracing::instrument(
        name = "command",
        skip_all,
        fields(aggregate = A::TYPE, id, tenant = %meta.tenant, correlation = %meta.correlation_id.simple()),
    )]
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
        let outcome = self.decide_and_append(&mut held, Some(current), loaded.subject, id, command, meta).await;
        self.count::<A>(&outcome);
        outcome
    }

    /// Counts what became of a command.
    fn count<A: Aggregate>(&self, outcome: &Result<Committed, CommandError<A::Rejection>>) {
        let outcome = match outcome {
            Ok(committed) if committed.duplicate => "duplicate",
            Ok(committed) if committed.events.is_empty() => "unchanged",
            Ok(_) => "applied",
            Err(CommandError::Rejected(_)) => "rejected",
            Err(_) => "failed",
        };
        self.metrics.command(A::TYPE, outcome);
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
                self.cache.keep(&subject, held, current);
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
                    self.cache.keep(&subject, held, current);
                    return Err(CommandError::Rejected(rejection));
                }
                Ok(_) => {
                    self.cache.keep(&subject, held, current);
                    return Ok(Committed { events: vec![], attempts: attempt, duplicate: false });
                }
            };
            let stored = wrap::<A>(&self.store, current.last_hash.clone(), id, meta, &decided, &ctx);
            let outgoing = stored
                .iter()
                .enumerate()
                .map(|(i, e)| Outgoing {
                    msg_id: msg_id(meta, &subject, i),
                    bytes: e.bytes.clone(),
                    trace: Some(meta.correlation_id),
                })
                .collect();
            let appending = std::time::Instant::now();
            let appended = self.store.append(&subject, current.last_sequence, outgoing).await;
            self.metrics.append(appending.elapsed());
            match appended {
                Ok(sequences) => {
                    let events: Vec<StoredEvent> =
                        stored.into_iter().zip(sequences).map(|(e, sequence)| StoredEvent { sequence, ..e }).collect();
                    current.record(&events, &decided);
                    self.cache.keep(&subject, held, current);
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
    /// What it weighs in the cache: the bytes of the events folded into it, and a little for
    /// each command kept. A guess, but one that grows as the state and its commands do.
    weight: usize,
}

/// What one applied command kept with a fold weighs, beyond its events: its id, the vector of
/// its sequences and its place in the map.
const COMMAND_WEIGHT: usize = 64;

impl<A: Aggregate> Current<A> {
    fn empty() -> Current<A> {
        Current { state: A::default(), last_sequence: 0, last_hash: None, commands: HashMap::new(), weight: 0 }
    }

    async fn load(store: &EventStore, subject: &str) -> Result<Current<A>, StoreError> {
        Current::from_loaded(&store.load(subject).await?)
    }

    fn from_loaded(loaded: &Loaded) -> Result<Current<A>, StoreError> {
        let mut commands: HashMap<Uuid, Vec<u64>> = HashMap::new();
        let mut weight = 0usize;
        for event in &loaded.events {
            commands.entry(event.envelope.causation_id).or_default().push(event.sequence);
            weight = weight.saturating_add(event.bytes.len());
        }
        Ok(Current {
            state: fold::<A>(loaded)?,
            last_sequence: loaded.last_sequence,
            last_hash: loaded.last_hash(),
            weight: weight.saturating_add(commands.len().saturating_mul(COMMAND_WEIGHT)),
            commands,
        })
    }

    /// Takes in events just appended.
    fn record(&mut self, appended: &[StoredEvent], decided: &[A::Event]) {
        for (stored, event) in appended.iter().zip(decided) {
            self.state = std::mem::take(&mut self.state).evolve(event);
            let sequences = self.commands.entry(stored.envelope.causation_id).or_default();
            if sequences.is_empty() {
                self.weight = self.weight.saturating_add(COMMAND_WEIGHT);
            }
            sequences.push(stored.sequence);
            self.weight = self.weight.saturating_add(stored.bytes.len());
            self.last_sequence = stored.sequence;
            self.last_hash = Some(chain_hash(&stored.bytes));
        }
    }
}

type Slot = Arc<tokio::sync::Mutex<Option<Box<dyn Any + Send>>>>;

/// The folded aggregates kept between commands, by subject, each behind the lock that makes
/// commands on it take turns, with what each weighs.
struct Cache {
    capacity: usize,
    bytes: usize,
    slots: Mutex<Slots>,
}

#[derive(Default)]
struct Slots {
    by_subject: HashMap<String, (Slot, usize)>,
    weight: usize,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache").field("capacity", &self.capacity).field("bytes", &self.bytes).finish_non_exhaustive()
    }
}

impl Cache {
    fn new(capacity: usize, bytes: usize) -> Cache {
        Cache { capacity, bytes, slots: Mutex::new(Slots::default()) }
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The slot of `subject`. Over capacity, every slot nobody holds is let go at once.
    fn slot(&self, subject: &str) -> Slot {
        let mut slots = self.slots();
        if let Some((slot, _)) = slots.by_subject.get(subject) {
            return slot.clone();
        }
        let slot = Slot::default();
        if self.capacity == 0 {
            return slot;
        }
        if slots.by_subject.len() >= self.capacity {
            slots.let_go();
        }
        slots.by_subject.insert(subject.to_owned(), (slot.clone(), 0));
        slot
    }

    /// Puts `current` back in `subject`'s slot, held by the caller, and weighs it. Over the
    /// memory budget, every other slot nobody holds is let go at once; a fold heavier than the
    /// whole budget is not kept at all.
    fn keep<A: Aggregate>(&self, subject: &str, held: &mut Option<Box<dyn Any + Send>>, current: Current<A>) {
        let weight = current.weight;
        let mut slots = self.slots();
        let Some(entry) = slots.by_subject.get_mut(subject) else {
            return;
        };
        if weight > self.bytes {
            *held = None;
            let was = std::mem::take(&mut entry.1);
            slots.weight = slots.weight.saturating_sub(was);
            return;
        }
        let was = std::mem::replace(&mut entry.1, weight);
        slots.weight = slots.weight.saturating_sub(was).saturating_add(weight);
        *held = Some(Box::new(current));
        if slots.weight > self.bytes {
            slots.let_go();
        }
    }

    /// How many folds are kept, and what they weigh in all.
    #[cfg(test)]
    fn kept(&self) -> (usize, usize) {
        let slots = self.slots();
        (slots.by_subject.len(), slots.weight)
    }
}

impl Slots {
    /// Lets go of every slot nobody holds.
    fn let_go(&mut self) {
        self.by_subject.retain(|_, (slot, _)| Arc::strong_count(slot) > 1);
        self.weight = self.by_subject.values().map(|(_, weight)| weight).sum();
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

#[cfg(test)]
mod tests {
    use events::node::Node;

    use super::*;

    fn weighing(weight: usize) -> Current<Node> {
        Current { weight, ..Current::empty() }
    }

    /// Keeps a fold of `weight` for `subject`, as a command does when it is done.
    async fn kept(cache: &Cache, subject: &str, weight: usize) {
        let slot = cache.slot(subject);
        let mut held = slot.lock().await;
        cache.keep(subject, &mut held, weighing(weight));
    }

    #[tokio::test]
    async fn the_cache_lets_go_of_folds_nobody_holds_once_over_its_memory_budget() {
        let cache = Cache::new(1_000, 10_000);
        for i in 0..4 {
            kept(&cache, &format!("s.{i}"), 2_000).await;
        }
        assert_eq!(cache.kept(), (4, 8_000), "under the budget, every fold stays");
        // One held by a command in progress is never let go.
        let busy = cache.slot("s.0");
        let guard = busy.lock().await;
        kept(&cache, "s.4", 3_000).await;
        assert_eq!(cache.kept(), (2, 5_000), "over it, only the one held and the one just kept stay");
        assert!(guard.is_some(), "the held fold is still there");
    }

    #[tokio::test]
    async fn a_fold_heavier_than_the_whole_budget_is_not_kept() {
        let cache = Cache::new(1_000, 10_000);
        kept(&cache, "light", 1_000).await;
        kept(&cache, "heavy", 20_000).await;
        assert_eq!(cache.kept(), (2, 1_000), "the heavy one weighs nothing: it is not kept");
        let slot = cache.slot("heavy");
        assert!(slot.lock().await.is_none(), "a command on it loads it again");
    }

    #[tokio::test]
    async fn a_fold_growing_is_weighed_again() {
        let cache = Cache::new(1_000, 10_000);
        kept(&cache, "grows", 1_000).await;
        kept(&cache, "grows", 4_000).await;
        assert_eq!(cache.kept(), (1, 4_000));
    }

    #[test]
    fn a_fold_weighs_the_events_folded_into_it_and_its_commands() {
        let mut current = Current::<Node>::empty();
        let event = events::node::NodeEvent::Revoked { public_key: "UKEY".to_owned() };
        let metadata = Metadata {
            tenant: "t".to_owned(),
            actor: "a".to_owned(),
            correlation_id: Uuid::nil(),
            causation_id: Uuid::nil(),
        };
        let envelope = Envelope::new(Uuid::now_v7(), Utc::now(), Node::TYPE, "n", &metadata, &event, None);
        let stored = StoredEvent { sequence: 1, envelope, bytes: Bytes::from(vec![0u8; 500]) };
        current.record(std::slice::from_ref(&stored), std::slice::from_ref(&event));
        assert_eq!(current.weight, 500 + COMMAND_WEIGHT);
        current.record(&[StoredEvent { sequence: 2, ..stored }], std::slice::from_ref(&event));
        assert_eq!(current.weight, 1_000 + COMMAND_WEIGHT, "a second event of the same command weighs its bytes");
    }
}
