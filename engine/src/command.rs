//! The command path: load an aggregate, decide, append conditionally, re-decide on conflict.
//! The HTTP API, the report ingestor and the tests all go through here.

use bytes::Bytes;
use chrono::Utc;
use uuid::Uuid;

use events::envelope::{chain_hash, Metadata};
use events::{Aggregate, Ctx, Envelope};

use crate::store::{EventStore, Loaded, Outgoing, StoreError, StoredEvent};

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

#[derive(Debug, Clone)]
pub struct CommandHandler {
    store: EventStore,
    max_attempts: u32,
}

impl CommandHandler {
    pub fn new(store: EventStore) -> CommandHandler {
        CommandHandler { store, max_attempts: 8 }
    }

    pub fn store(&self) -> &EventStore {
        &self.store
    }

    /// Loads aggregate `id` of type `A` and folds it.
    pub async fn state<A: Aggregate>(&self, tenant: &str, id: &str) -> Result<A, StoreError> {
        let loaded = self.store.load(&events::subject::aggregate(tenant, A::TYPE, id)).await?;
        fold::<A>(&loaded)
    }

    pub async fn execute<A: Aggregate>(
        &self,
        id: &str,
        command: &A::Command,
        meta: &CommandMeta,
    ) -> Result<Committed, CommandError<A::Rejection>> {
        let loaded = self.store.load(&events::subject::aggregate(&meta.tenant, A::TYPE, id)).await?;
        self.execute_from::<A>(loaded, id, command, meta).await
    }

    /// Decides on `loaded`, which may already be stale: a conflict reloads and decides again,
    /// at most `max_attempts` times.
    pub async fn execute_from<A: Aggregate>(
        &self,
        mut loaded: Loaded,
        id: &str,
        command: &A::Command,
        meta: &CommandMeta,
    ) -> Result<Committed, CommandError<A::Rejection>> {
        for attempt in 1..=self.max_attempts {
            let earlier: Vec<StoredEvent> =
                loaded.events.iter().filter(|e| e.envelope.causation_id == meta.command_id).cloned().collect();
            if !earlier.is_empty() {
                return Ok(Committed { events: earlier, attempts: attempt, duplicate: true });
            }
            let state = fold::<A>(&loaded)?;
            let ctx = Ctx { now: Utc::now() };
            let decided = state.decide(command, &ctx).map_err(CommandError::Rejected)?;
            if decided.is_empty() {
                return Ok(Committed { events: vec![], attempts: attempt, duplicate: false });
            }
            let stored = wrap::<A>(&loaded, id, meta, &decided, &ctx);
            let outgoing = stored
                .iter()
                .enumerate()
                .map(|(i, e)| Outgoing { msg_id: msg_id(meta, &loaded.subject, i), bytes: e.bytes.clone() })
                .collect();
            match self.store.append(&loaded.subject, loaded.last_sequence, outgoing).await {
                Ok(sequences) => {
                    let events =
                        stored.into_iter().zip(sequences).map(|(e, sequence)| StoredEvent { sequence, ..e }).collect();
                    return Ok(Committed { events, attempts: attempt, duplicate: false });
                }
                Err(StoreError::Conflict { appended, .. }) if appended > 0 => {
                    let (subject, decided) = (loaded.subject, stored.len());
                    return Err(CommandError::Interrupted { subject, stored: appended, decided });
                }
                Err(StoreError::Conflict { .. }) => {
                    tracing::debug!(subject = %loaded.subject, attempt, "conflict, deciding again");
                    loaded = self.store.load(&loaded.subject).await?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(CommandError::Contention { subject: loaded.subject, attempts: self.max_attempts })
    }
}

/// Folds the loaded events into the aggregate's state.
pub fn fold<A: Aggregate>(loaded: &Loaded) -> Result<A, StoreError> {
    loaded.events.iter().try_fold(A::default(), |state, stored| {
        let event: A::Event =
            stored.envelope.event().map_err(|source| StoreError::Corrupt { sequence: stored.sequence, source })?;
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
    loaded: &Loaded,
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
    let mut prev_hash = loaded.last_hash();
    decided
        .iter()
        .map(|event| {
            let envelope = Envelope::new(Uuid::now_v7(), ctx.now, A::TYPE, id, &metadata, event, prev_hash.take());
            let bytes = Bytes::from(envelope.encode());
            prev_hash = Some(chain_hash(&bytes));
            StoredEvent { sequence: 0, envelope, bytes }
        })
        .collect()
}
