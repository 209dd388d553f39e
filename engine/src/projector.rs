//! The projector: one reader of the whole log, in order ([`bus::tail`]), that decodes each
//! event once and folds it into every read model (`events::projection`, where each is
//! declared), all in one sled tree. The checkpoint (last stream sequence folded) is written in
//! the same atomic batch as the read models' changes, so a crash never applies an event twice
//! or skips one. Delete the sled directory and the projector folds the tree again from
//! sequence 1; [`rebuild`] is the same fold up to a given sequence, which `replay` runs into a
//! fresh tree.
//!
//! # Batches
//!
//! A batch is committed when full ([`ProjectorConfig::batch_size`]); when the reader has
//! caught up with the stream, as long as commits take under a fifth of the projector's time
//! (a batch held back by that is committed once it allows, if nothing comes meanwhile), or
//! at once if the batch changed a deployment's status or made a new one, which readers wait
//! for (`events::projection::Store::show_now`); and at the latest when the stream pauses for
//! a millisecond. A value changed by several events of a batch (a deployment's header, with
//! each report) stays decoded until the batch is committed ([`Overlay`]).
//!
//! # No filter
//!
//! The projector reads the whole stream with no filter and matches the subjects the read
//! models fold (`events::projection::SUBJECTS`) itself; the payload of any other event (the
//! nodes' reports) is never decoded, nor that of work addressed to a native node (only a
//! Margo device's is folded). With a filter, the server matched every message against
//! every subject of the stream, and a rebuild ran at a seventh of the raw read (42k against
//! 313k events/s; 175k without the filter).

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures::StreamExt;

use bus::dead::Letter;
use bus::store::{EventStore, ReadError, StoreError};
use events::fit::Unfit;
use events::projection::{Fact, ModelError, Store, Value};
use events::Envelope;

const CHECKPOINT_KEY: &[u8] = b"meta/checkpoint";

/// A batch in the making is committed once the stream has been quiet this long.
const IDLE_COMMIT: Duration = Duration::from_millis(1);

/// Pending changes over the read models' tree: reads see earlier writes of the same batch.
///
/// A value read or written stays decoded until the batch is committed, and only what was
/// written is encoded then: a deployment's header, changed by every report of a batch, is
/// decoded and encoded once per batch.
pub struct Overlay<'a> {
    tree: &'a sled::Tree,
    values: BTreeMap<String, Kept>,
    /// The batch holds a change readers wait for ([`Store::show_now`]).
    urgent: bool,
}

/// A value of a batch: `None` once removed; `written` when the commit must store it.
struct Kept {
    value: Option<Box<dyn Decoded>>,
    written: bool,
}

impl std::fmt::Debug for Overlay<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Overlay").field("values", &self.values.len()).finish()
    }
}

/// A value kept decoded in an overlay, encoded when needed.
trait Decoded: Any + Send {
    fn encode(&self) -> Result<Vec<u8>, serde_json::Error>;
    fn as_any(&self) -> &dyn Any;
    fn into_any(self: Box<Self>) -> Box<dyn Any>;
}

impl<T: serde::Serialize + Any + Send> Decoded for T {
    fn encode(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

fn model_error(e: impl std::fmt::Display) -> ModelError {
    ModelError(e.to_string())
}

impl<'a> Overlay<'a> {
    /// A batch over `tree`; one that is never committed reads the read models as they are.
    pub fn new(tree: &'a sled::Tree) -> Self {
        Overlay { tree, values: BTreeMap::new(), urgent: false }
    }

    /// Writes the changes and the checkpoint in one atomic batch.
    fn commit(self, checkpoint: u64) -> Result<(), ModelError> {
        let mut batch = sled::Batch::default();
        for (key, kept) in self.values.into_iter().filter(|(_, kept)| kept.written) {
            match kept.value {
                Some(value) => batch.insert(key.as_bytes(), value.encode()?),
                None => batch.remove(key.as_bytes()),
            }
        }
        batch.insert(CHECKPOINT_KEY, &checkpoint.to_be_bytes());
        self.tree.apply_batch(batch).map_err(model_error)
    }
}

impl Store for Overlay<'_> {
    fn get<T: Value>(&mut self, key: &str) -> Result<Option<T>, ModelError> {
        if let Some(kept) = self.values.get(key) {
            return match &kept.value {
                None => Ok(None),
                Some(value) => match value.as_any().downcast_ref::<T>() {
                    Some(value) => Ok(Some(value.clone())),
                    None => Err(ModelError(format!("{key} was kept as another type"))),
                },
            };
        }
        let Some(bytes) = self.tree.get(key.as_bytes()).map_err(model_error)? else { return Ok(None) };
        let value: T = serde_json::from_slice(&bytes)?;
        self.values.insert(key.to_owned(), Kept { value: Some(Box::new(value.clone())), written: false });
        Ok(Some(value))
    }

    fn take<T: Value>(&mut self, key: &str) -> Result<Option<T>, ModelError> {
        match self.values.remove(key) {
            Some(Kept { value: Some(value), .. }) => match value.into_any().downcast::<T>() {
                Ok(value) => Ok(Some(*value)),
                Err(_) => Err(ModelError(format!("{key} was kept as another type"))),
            },
            // Removed in this batch: it stays removed until put back.
            Some(removed) => {
                self.values.insert(key.to_owned(), removed);
                Ok(None)
            }
            None => match self.tree.get(key.as_bytes()).map_err(model_error)? {
                Some(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
                None => Ok(None),
            },
        }
    }

    fn put<T: Value>(&mut self, key: String, value: T) {
        self.values.insert(key, Kept { value: Some(Box::new(value)), written: true });
    }

    fn remove(&mut self, key: &str) {
        self.values.insert(key.to_owned(), Kept { value: None, written: true });
    }

    fn show_now(&mut self) {
        self.urgent = true;
    }

    fn keys(&mut self, prefix: &str) -> Result<Vec<String>, ModelError> {
        let mut keys = BTreeSet::new();
        for key in self.tree.scan_prefix(prefix.as_bytes()).keys() {
            keys.insert(String::from_utf8_lossy(&key.map_err(model_error)?).into_owned());
        }
        let batch = self.values.range(prefix.to_owned()..).take_while(|(k, _)| k.starts_with(prefix));
        for (key, kept) in batch {
            match kept.value {
                Some(_) => keys.insert(key.clone()),
                None => keys.remove(key),
            };
        }
        Ok(keys.into_iter().collect())
    }
}

/// The last stream sequence folded into `tree`; 0 for a fresh one.
pub fn checkpoint(tree: &sled::Tree) -> sled::Result<u64> {
    Ok(tree
        .get(CHECKPOINT_KEY)?
        .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0))
}

#[derive(Debug, Clone)]
pub struct ProjectorConfig {
    /// At most this many events per sled batch.
    pub batch_size: usize,
}

impl Default for ProjectorConfig {
    fn default() -> Self {
        ProjectorConfig { batch_size: 512 }
    }
}

/// Runs the read models (`events::projection`) on `tree` from its checkpoint, forever (until
/// the task is dropped).
pub async fn run(store: EventStore, tree: sled::Tree, config: ProjectorConfig) -> anyhow::Result<()> {
    fold(&store, &tree, &config, None).await?;
    anyhow::bail!("the projector's reader ended")
}

/// Folds the stream into `tree` from its checkpoint up to stream sequence `until` (the
/// stream's last sequence read beforehand, say), then returns how many events it read: a
/// rebuild by the same code as the live projection.
pub async fn rebuild(
    store: &EventStore,
    tree: &sled::Tree,
    config: &ProjectorConfig,
    until: u64,
) -> anyhow::Result<u64> {
    if checkpoint(tree)? >= until {
        return Ok(0);
    }
    fold(store, tree, config, Some(until)).await
}

async fn fold(
    store: &EventStore,
    tree: &sled::Tree,
    config: &ProjectorConfig,
    until: Option<u64>,
) -> anyhow::Result<u64> {
    let tree = tree.clone();
    let start = checkpoint(&tree)?.saturating_add(1);
    tracing::info!(start, "projector starting");
    // A rebuild with nothing left to read in the stream is done already.
    if until.is_some() && store.last_sequence().await? < start {
        return Ok(0);
    }
    let messages = bus::tail::tail(store, start).await.map_err(|e| anyhow::anyhow!("projector: {e}"))?;
    let mut messages = std::pin::pin!(messages);
    let mut batch = Overlay::new(&tree);
    let mut in_batch = 0usize;
    let mut last = 0;
    // How many messages followed the last one read, as far as the reader knew.
    let mut pending_last = u64::MAX;
    let mut read = 0u64;
    let mut pace = Pace::default();
    loop {
        // A batch is committed when full; when the consumer has caught up with the stream, if
        // commits have been cheap; and at the latest once the stream pauses. Under a steady
        // flow the consumer catches up at every event: the pace keeps commits to a fifth of
        // the projector's time.
        let next = if in_batch == 0 {
            messages.next().await
        } else {
            // Caught up, a batch held back by the pace is committed as soon as the pace allows.
            let wait = if pending_last == 0 { pace.until_early().min(IDLE_COMMIT) } else { IDLE_COMMIT };
            match tokio::time::timeout(wait, messages.next()).await {
                Ok(next) => next,
                Err(_) => {
                    pace.commit(std::mem::replace(&mut batch, Overlay::new(&tree)), last)?;
                    in_batch = 0;
                    continue;
                }
            }
        };
        let Some(message) = next else { break };
        let (sequence, pending) = (message.sequence, message.pending);
        (last, pending_last) = (sequence, pending);
        let folded =
            events::projection::SUBJECTS.iter().any(|pattern| events::subject::matches(pattern, &message.subject));
        if folded {
            let fact = Envelope::decode(&message.payload)
                .map_err(Unfit::NotAnEvent)
                .and_then(|envelope| events::fit::placed(&message.subject, &envelope).map(|()| envelope))
                .and_then(|envelope| Fact::of(&envelope).map(|fact| (envelope, fact)).map_err(Unfit::Payload));
            match fact {
                Ok((envelope, fact)) => events::projection::fold(&mut batch, &envelope, &fact)
                    .map_err(|e| anyhow::anyhow!("at stream sequence {sequence}: {e}"))?,
                Err(unfit) => {
                    let letter = Letter::new("projector", &message.subject, Some(sequence), &message.payload, unfit);
                    store.dead_letters().set_aside(letter).await;
                }
            }
        }
        in_batch = in_batch.saturating_add(1);
        read = read.saturating_add(1);
        // Done at the end read beforehand, or when nothing is left in the stream.
        if until.is_some_and(|until| sequence >= until || pending == 0) {
            batch.commit(sequence)?;
            return Ok(read);
        }
        if in_batch >= config.batch_size || (pending == 0 && (batch.urgent || pace.may_commit_early())) {
            pace.commit(std::mem::replace(&mut batch, Overlay::new(&tree)), sequence)?;
            in_batch = 0;
        }
    }
    Ok(read)
}

/// How long the last commit took, and when it ended.
#[derive(Debug)]
struct Pace {
    cost: Duration,
    ended: std::time::Instant,
}

impl Default for Pace {
    fn default() -> Self {
        Pace { cost: Duration::ZERO, ended: std::time::Instant::now() }
    }
}

impl Pace {
    /// True once four times the last commit's cost has passed since it ended.
    fn may_commit_early(&self) -> bool {
        self.until_early().is_zero()
    }

    /// How long until [`Pace::may_commit_early`] holds.
    fn until_early(&self) -> Duration {
        self.cost.saturating_mul(4).saturating_sub(self.ended.elapsed())
    }

    fn commit(&mut self, batch: Overlay<'_>, checkpoint: u64) -> Result<(), ModelError> {
        let start = std::time::Instant::now();
        batch.commit(checkpoint)?;
        self.ended = std::time::Instant::now();
        self.cost = self.ended.saturating_duration_since(start);
        Ok(())
    }
}

/// Waits until `tree` has folded the stream up to `sequence`; false if `timeout` passed first.
/// Woken by each commit (every commit writes the checkpoint), not by a timer.
pub async fn wait_for(tree: &sled::Tree, sequence: u64, timeout: Duration) -> Result<bool, StoreError> {
    let folded = || {
        checkpoint(tree)
            .map(|checkpoint| checkpoint >= sequence)
            .map_err(|e| ReadError::Failed { what: "a checkpoint".into(), reason: e.to_string() })
    };
    // Told of the commits from before the first look, so that one in between still wakes it.
    // Each is taken as it comes: sled holds at most 1,024 for a subscriber, then makes the
    // projector wait.
    let mut commits = tree.watch_prefix(CHECKPOINT_KEY);
    let reached = async {
        // Until folded, or the read models are closed.
        while !folded()? {
            if (&mut commits).await.is_none() {
                break;
            }
        }
        folded()
    };
    match tokio::time::timeout(timeout, reached).await {
        Ok(reached) => Ok(reached?),
        Err(_) => Ok(folded()?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_wait_ends_with_the_commit_that_reaches_its_sequence_and_not_with_an_earlier_one() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let tree = db.open_tree("models").unwrap();
        let (early, late) = (wait_for(&tree, 7, Duration::from_secs(60)), wait_for(&tree, 8, Duration::from_secs(60)));
        let writer = tree.clone();
        let commits = async move {
            for checkpoint in [3, 7] {
                tokio::task::yield_now().await;
                Overlay::new(&writer).commit(checkpoint).unwrap();
            }
        };
        let (early, late, ()) = tokio::join!(early, tokio::time::timeout(Duration::from_millis(300), late), commits);
        assert!(early.unwrap(), "folded up to 7 once 7 is committed");
        assert!(late.is_err(), "still waiting for 8: {late:?}");
        assert!(!wait_for(&tree, 8, Duration::from_millis(20)).await.unwrap(), "not folded within its time");
        assert!(wait_for(&tree, 7, Duration::ZERO).await.unwrap(), "already folded: no wait");
    }
}
