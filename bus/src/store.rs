//! The event store on JetStream: the `EVENTS` stream, loads of one subject, and appends that
//! are conditional on the subject's last sequence and deduplicated by message id.
//!
//! The stream is kept in files, never expires, and denies deletes and purges. It allows a
//! million durable consumers ([`StoreConfig::max_consumers`]): one per edge node. nats-server
//! 2.15 gives a stream 1,000 unless told otherwise, which would stop a fleet at about a
//! thousand nodes; a stream made before with a lower limit is raised on open.
//!
//! Loading a subject leaves nothing on the server: it is read with batched direct gets
//! (`next_by_subj`, `batch`, `up_to_seq`; nats-server 2.11+), never with a consumer, so
//! commands under load cannot exhaust the server's consumers. A subject whose last event has
//! no `prev_hash` holds that event alone, so a new aggregate loads with one direct get.
//!
//! Requests to make or find a consumer give up after 2 s and are sent again
//! ([`EventStore::consumers`]): while a cluster elects a leader, a request can go unanswered.
//! A writer signs what it appends with its key ([`EventStore::signed_by`]).

use std::time::Duration;

use crate::dead::Letter;
use async_nats::jetstream::{self, context::PublishErrorKind, stream};
use bytes::Bytes;
use futures::StreamExt;

use events::{DecodeError, Envelope};

/// Events read per direct-get request when loading a subject.
const DIRECT_BATCH: usize = 1000;
const DIRECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a request to make or find a consumer waits for its answer. While a cluster elects
/// a new leader such a request can go unanswered: asking again soon is quicker than waiting.
const CONSUMER_TIMEOUT: Duration = Duration::from_secs(2);

/// The consumers the `EVENTS` stream allows by default: a fleet of a million nodes.
pub const MAX_CONSUMERS: i32 = 1_000_000;

/// How the `EVENTS` stream is created.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub stream: String,
    /// Copies of every event across a JetStream cluster (1 on a single server).
    pub replicas: usize,
    /// How long a `Nats-Msg-Id` is remembered: the horizon within which a retried append or a
    /// re-sent edge report is stored once.
    pub duplicate_window: Duration,
    /// Durable consumers the stream allows: one per edge node, and the engine's few. The
    /// server's own default (1,000 per stream since nats-server 2.15) would stop a fleet at
    /// about a thousand nodes.
    pub max_consumers: i32,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            stream: events::subject::STREAM.to_owned(),
            replicas: 1,
            duplicate_window: Duration::from_secs(120),
            max_consumers: MAX_CONSUMERS,
        }
    }
}

/// Opening the stream failed.
#[derive(Debug, thiserror::Error)]
#[error("opening stream {stream}: {reason}")]
pub struct OpenError {
    pub stream: String,
    pub reason: String,
}

/// A read of the log failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("event at stream sequence {sequence} does not decode: {source}")]
    Corrupt { sequence: u64, source: DecodeError },
    #[error("reading {what}: {reason}")]
    Failed { what: String, reason: String },
}

/// An append failed.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// Another writer appended first; `appended` of the messages were stored before that.
    #[error("another writer appended to {subject} first")]
    Conflict { subject: String, appended: usize },
    /// A message of the append had been stored before, under the same message id.
    #[error("{subject} already holds message {msg_id}")]
    Duplicate { subject: String, msg_id: String },
    #[error("appending to {subject}: {reason}")]
    Failed { subject: String, reason: String },
}

/// Making, finding or pulling a consumer failed.
#[derive(Debug, thiserror::Error)]
#[error("consumer {consumer}: {reason}")]
pub struct ConsumeError {
    pub consumer: String,
    pub reason: String,
}

/// Any failure of the store, for a caller that hands it on whole.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error(transparent)]
    Append(#[from] AppendError),
    #[error(transparent)]
    Consume(#[from] ConsumeError),
}

fn read(what: impl std::fmt::Display) -> impl FnOnce(String) -> ReadError {
    move |reason| ReadError::Failed { what: what.to_string(), reason }
}

/// One event as stored: its stream sequence, its envelope and the exact bytes (the hash chain
/// is over those).
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub sequence: u64,
    pub envelope: Envelope,
    pub bytes: Bytes,
}

impl StoredEvent {
    pub fn decode(sequence: u64, bytes: Bytes) -> Result<StoredEvent, ReadError> {
        let envelope = Envelope::decode(&bytes).map_err(|source| ReadError::Corrupt { sequence, source })?;
        Ok(StoredEvent { sequence, envelope, bytes })
    }
}

/// The headers a message was published with, in order: those the server adds to a direct
/// get's answer (`Nats-Sequence`, `Nats-Subject`, `Nats-Time-Stamp`, ...) left out.
fn own_headers(headers: Option<&async_nats::HeaderMap>) -> Vec<(String, String)> {
    const SERVERS: [&str; 7] = [
        "Nats-Stream",
        "Nats-Sequence",
        "Nats-Subject",
        "Nats-Time-Stamp",
        "Nats-Num-Pending",
        "Nats-Last-Sequence",
        "Nats-UpTo-Sequence",
    ];
    let Some(headers) = headers else { return Vec::new() };
    let mut own: Vec<(String, String)> = headers
        .iter()
        .filter(|(name, _)| !SERVERS.iter().any(|s| s.eq_ignore_ascii_case(name.as_ref())))
        .flat_map(|(name, values)| values.iter().map(move |v| (name.to_string(), v.as_str().to_owned())))
        .collect();
    own.sort();
    own
}

impl From<async_nats::jetstream::message::StreamMessage> for RawMessage {
    fn from(message: async_nats::jetstream::message::StreamMessage) -> RawMessage {
        RawMessage {
            headers: own_headers(Some(&message.headers)),
            sequence: message.sequence,
            subject: message.subject.to_string(),
            payload: message.payload,
            pending: None,
        }
    }
}

/// A message as a direct get hands it out.
#[derive(Debug, Clone)]
pub struct RawMessage {
    pub sequence: u64,
    pub subject: String,
    pub payload: Bytes,
    /// Messages on the filter after this one, when the server says.
    pub pending: Option<u64>,
    /// The headers it was published with (its id, its trace), sorted.
    pub headers: Vec<(String, String)>,
}

/// The events of one subject, and the sequence an append must expect.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    pub subject: String,
    pub events: Vec<StoredEvent>,
    /// The stream sequence of the subject's last message; 0 when it has none.
    pub last_sequence: u64,
}

/// The end of a subject, for a writer chaining onto it.
#[derive(Debug, Clone, Default)]
pub struct Head {
    /// The stream sequence of the subject's last message; 0 when it has none.
    pub last_sequence: u64,
    /// Its last event that fits there.
    pub last: Option<StoredEvent>,
}

impl Loaded {
    /// The hash the next event's `prev_hash` must carry.
    pub fn last_hash(&self) -> Option<String> {
        self.events.last().map(|e| events::envelope::chain_hash(&e.bytes))
    }
}

/// A message to append: its dedup id and its encoded envelope.
#[derive(Debug, Clone, Default)]
pub struct Outgoing {
    pub msg_id: String,
    pub bytes: Bytes,
    /// The correlation id of the command it comes from: its `traceparent` header's trace id.
    pub trace: Option<uuid::Uuid>,
}

impl Outgoing {
    fn build(self) -> (String, jetstream::message::PublishMessage) {
        let mut publish = jetstream::message::PublishMessage::build().payload(self.bytes).message_id(&self.msg_id);
        if let Some(trace) = self.trace {
            publish = publish.header(crate::trace::HEADER, crate::trace::traceparent(trace, &self.msg_id).as_str());
        }
        (self.msg_id, publish)
    }
}

#[derive(Clone)]
pub struct EventStore {
    client: async_nats::Client,
    js: jetstream::Context,
    stream: stream::Stream,
    consumers: stream::Stream<()>,
    name: String,
    /// The key that signs what this writer appends.
    signer: Option<std::sync::Arc<nkeys::KeyPair>>,
    /// Reads the log by direct gets: its credential may not make consumers.
    direct_reads: bool,
    /// Where what does not fit is set aside.
    dead: crate::dead::DeadLetters,
    /// The prefix of the JetStream API as this client's account sees it.
    api: &'static str,
}

impl std::fmt::Debug for EventStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStore").finish_non_exhaustive()
    }
}

impl EventStore {
    /// Opens the stream, creating it on first use.
    pub async fn open(client: async_nats::Client, config: &StoreConfig) -> Result<EventStore, OpenError> {
        let nats = |e: String| OpenError { stream: config.stream.clone(), reason: e };
        let js = jetstream::new(client.clone());
        let mut stream = js
            .get_or_create_stream(stream::Config {
                name: config.stream.clone(),
                subjects: vec![events::subject::ALL.to_owned()],
                storage: stream::StorageType::File,
                num_replicas: config.replicas,
                duplicate_window: config.duplicate_window,
                max_consumers: config.max_consumers,
                allow_direct: true,
                // The log is immutable: nothing is ever deleted from it.
                deny_delete: true,
                deny_purge: true,
                ..Default::default()
            })
            .await
            .map_err(|e| nats(e.to_string()))?;
        // A stream made before, with a lower limit, is given the one asked for.
        let made = stream.cached_info().config.clone();
        if made.max_consumers < config.max_consumers {
            let raised = stream::Config { max_consumers: config.max_consumers, ..made };
            js.update_stream(raised).await.map_err(|e| nats(e.to_string()))?;
            stream = js.get_stream(&config.stream).await.map_err(|e| nats(e.to_string()))?;
        }
        EventStore::assemble(client, js, stream, crate::API, config).await
    }

    /// The same store, signing the envelopes it seals with `key`.
    pub fn signed_by(self, key: std::sync::Arc<nkeys::KeyPair>) -> EventStore {
        EventStore { signer: Some(key), ..self }
    }

    /// The same store, reading the log by direct gets rather than through consumers: for an
    /// auditor's credential, which may make none.
    pub fn reading_by_direct_get(self) -> EventStore {
        EventStore { direct_reads: true, ..self }
    }

    /// The same store, copying what it sets aside to `dead`.
    pub fn setting_aside_to(self, dead: crate::dead::DeadLetters) -> EventStore {
        EventStore { dead, ..self }
    }

    /// Where this store's readers set aside what does not fit.
    pub fn dead_letters(&self) -> &crate::dead::DeadLetters {
        &self.dead
    }

    pub fn reads_by_direct_get(&self) -> bool {
        self.direct_reads
    }

    /// Opens the stream as a reader that writes nothing: it must exist already. `api` is the
    /// prefix of the JetStream API in the client's account ([`crate::Connection::api_prefix`]).
    pub async fn open_existing(
        client: async_nats::Client,
        api: &'static str,
        config: &StoreConfig,
    ) -> Result<EventStore, OpenError> {
        let nats = |e: String| OpenError { stream: config.stream.clone(), reason: e };
        let js = jetstream::with_prefix(client.clone(), api);
        let stream = js.get_stream(&config.stream).await.map_err(|e| nats(e.to_string()))?;
        EventStore::assemble(client, js, stream, api, config).await
    }

    /// The store on `stream`, with the handle its consumers are made and found through.
    async fn assemble(
        client: async_nats::Client,
        js: jetstream::Context,
        stream: stream::Stream,
        api: &'static str,
        config: &StoreConfig,
    ) -> Result<EventStore, OpenError> {
        let mut quick = js.clone();
        quick.set_timeout(CONSUMER_TIMEOUT);
        let consumers = quick
            .get_stream_no_info(&config.stream)
            .await
            .map_err(|e| OpenError { stream: config.stream.clone(), reason: e.to_string() })?;
        let name = config.stream.clone();
        let (signer, direct_reads, dead) = (None, false, Default::default());
        Ok(EventStore { client, js, stream, consumers, name, signer, direct_reads, api, dead })
    }

    /// `envelope` signed by this writer's key, ready to encode.
    pub fn seal(&self, envelope: Envelope) -> Envelope {
        match &self.signer {
            Some(key) => envelope.signed(key.as_ref()),
            None => envelope,
        }
    }

    /// The public key this writer signs with.
    pub fn signer(&self) -> Option<String> {
        self.signer.as_ref().map(|k| k.public_key())
    }

    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    pub fn stream(&self) -> &stream::Stream {
        &self.stream
    }

    /// The stream, for making and finding its consumers: requests that give up after a couple
    /// of seconds, for callers that ask again.
    pub fn consumers(&self) -> &stream::Stream<()> {
        &self.consumers
    }

    /// The stream's last sequence now.
    pub async fn last_sequence(&self) -> Result<u64, ReadError> {
        let info = self.stream.get_info().await.map_err(|e| read("the stream's state")(e.to_string()))?;
        Ok(info.state.last_sequence)
    }

    /// Every subject of the stream that matches `filter` (wildcards allowed).
    pub async fn subjects(&self, filter: &str) -> Result<Vec<String>, ReadError> {
        let failed = |e: String| read(format!("the subjects of {filter}"))(e);
        let mut found = self.stream.info_with_subjects(filter).await.map_err(|e| failed(e.to_string()))?;
        let mut subjects = Vec::new();
        while let Some(entry) = found.next().await {
            subjects.push(entry.map_err(|e| failed(e.to_string()))?.0);
        }
        subjects.sort();
        Ok(subjects)
    }

    /// The last event of `subject`, if it has any.
    pub async fn last(&self, subject: &str) -> Result<Option<StoredEvent>, ReadError> {
        match self.stream.get_last_raw_message_by_subject(subject).await {
            Ok(message) => Ok(Some(StoredEvent::decode(message.sequence, message.payload)?)),
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(read(format!("the last event of {subject}"))(e.to_string())),
        }
    }

    /// The message at stream sequence `sequence` as stored, whatever it holds; `None` when the
    /// stream has none there.
    pub async fn raw_at(&self, sequence: u64) -> Result<Option<RawMessage>, ReadError> {
        match self.stream.get_raw_message(sequence).await {
            Ok(message) => Ok(Some(RawMessage::from(message))),
            Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(read(format!("stream sequence {sequence}"))(e.to_string())),
        }
    }

    /// The events at stream sequences `sequences`.
    pub async fn events_at(&self, sequences: &[u64]) -> Result<Vec<StoredEvent>, ReadError> {
        let mut events = Vec::with_capacity(sequences.len());
        for &sequence in sequences {
            let message = self
                .stream
                .get_raw_message(sequence)
                .await
                .map_err(|e| read(format!("stream sequence {sequence}"))(e.to_string()))?;
            events.push(StoredEvent::decode(message.sequence, message.payload)?);
        }
        Ok(events)
    }

    /// The stream sequence of the last message on `subject` (0 when it has none), whatever
    /// that message holds.
    pub async fn last_sequence_of(&self, subject: &str) -> Result<u64, ReadError> {
        Ok(self.last_raw(subject).await?.map_or(0, |m| m.sequence))
    }

    /// The last message of `subject` as stored, if it has any.
    async fn last_raw(&self, subject: &str) -> Result<Option<RawMessage>, ReadError> {
        match self.stream.get_last_raw_message_by_subject(subject).await {
            Ok(message) => Ok(Some(RawMessage::from(message))),
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(read(format!("the last event of {subject}"))(e.to_string())),
        }
    }

    /// What a writer chaining onto `subject` needs: the sequence of its last message and its
    /// last event that fits there ([`events::fit`]). Only when the last message does not fit
    /// is the subject read whole.
    pub async fn head(&self, subject: &str) -> Result<Head, ReadError> {
        let Some(last) = self.last_raw(subject).await? else {
            return Ok(Head::default());
        };
        if let Ok(envelope) = events::fit::read(subject, &last.payload) {
            let event = StoredEvent { sequence: last.sequence, envelope, bytes: last.payload };
            return Ok(Head { last_sequence: last.sequence, last: Some(event) });
        }
        let mut loaded = self.load(subject).await?;
        Ok(Head { last_sequence: loaded.last_sequence, last: loaded.events.pop() })
    }

    /// Every event of `subject`, in order. A message that does not fit there ([`events::fit`])
    /// is set aside ([`crate::dead`]) and left out: the history goes on without it.
    pub async fn load(&self, subject: &str) -> Result<Loaded, ReadError> {
        let mut loaded = Loaded { subject: subject.to_owned(), ..Loaded::default() };
        let Some(last) = self.last_raw(subject).await? else {
            return Ok(loaded);
        };
        loaded.last_sequence = last.sequence;
        // An event without a previous hash opens its chain: the subject holds it alone (or
        // after what was set aside), so a new aggregate loads without a consumer.
        if let Ok(envelope) = events::fit::read(subject, &last.payload) {
            if envelope.prev_hash.is_none() {
                loaded.events.push(StoredEvent { sequence: last.sequence, envelope, bytes: last.payload });
                return Ok(loaded);
            }
        }
        let mut from = 1;
        while from <= last.sequence {
            let batch = self.direct(subject, from, Some(last.sequence), DIRECT_BATCH).await?;
            let Some(end) = batch.last().map(|m| m.sequence) else {
                break;
            };
            loaded.events.extend(self.sort_out(batch).await);
            // A server that answers out of order does not keep this loop going.
            match end.checked_add(1) {
                Some(next) if next > from => from = next,
                _ => break,
            }
        }
        Ok(loaded)
    }

    /// Every event on `filter` (wildcards allowed) from sequence `from`, in stream order; what
    /// does not fit is set aside.
    pub async fn load_matching(&self, filter: &str, mut from: u64) -> Result<Vec<StoredEvent>, ReadError> {
        let mut events = Vec::new();
        loop {
            let batch = self.direct(filter, from, None, DIRECT_BATCH).await?;
            let Some(end) = batch.last().map(|m| m.sequence) else { return Ok(events) };
            events.extend(self.sort_out(batch).await);
            match end.checked_add(1) {
                Some(next) if next > from => from = next,
                _ => return Ok(events),
            }
        }
    }

    /// The messages that fit where they are, as events; the others are set aside.
    async fn sort_out(&self, batch: Vec<RawMessage>) -> Vec<StoredEvent> {
        let mut events = Vec::with_capacity(batch.len());
        for raw in batch {
            match events::fit::read(&raw.subject, &raw.payload) {
                Ok(envelope) => events.push(StoredEvent { sequence: raw.sequence, envelope, bytes: raw.payload }),
                Err(reason) => {
                    let letter = Letter::new("load", &raw.subject, Some(raw.sequence), &raw.payload, reason);
                    self.dead.set_aside(letter).await;
                }
            }
        }
        events
    }

    /// One batched direct get of the messages on `filter` (wildcards allowed) from sequence
    /// `from`, at most `batch` of them, none past `up_to`; empty when there are none (yet).
    pub async fn direct(
        &self,
        filter: &str,
        from: u64,
        up_to: Option<u64>,
        batch: usize,
    ) -> Result<Vec<RawMessage>, ReadError> {
        let failed = |reason: String| ReadError::Failed { what: format!("{filter} by direct get"), reason };
        let inbox = self.client.new_inbox();
        let mut replies = self.client.subscribe(inbox.clone()).await.map_err(|e| failed(e.to_string()))?;
        let request = match up_to {
            Some(up_to) => {
                serde_json::json!({ "seq": from, "next_by_subj": filter, "batch": batch, "up_to_seq": up_to })
            }
            None => serde_json::json!({ "seq": from, "next_by_subj": filter, "batch": batch }),
        };
        self.client
            .publish_with_reply(format!("{}.DIRECT.GET.{}", self.api, self.name), inbox, request.to_string().into())
            .await
            .map_err(|e| failed(e.to_string()))?;
        let mut messages = Vec::new();
        loop {
            let reply = tokio::time::timeout(DIRECT_TIMEOUT, replies.next())
                .await
                .map_err(|_| failed("no answer".to_owned()))?
                .ok_or_else(|| failed("the subscription ended".to_owned()))?;
            match reply.status {
                // The end of the batch (204), or nothing (more) on the subject (404).
                Some(status) if status.as_u16() == 204 || status == async_nats::StatusCode::NOT_FOUND => break,
                Some(status) if status != async_nats::StatusCode::OK => {
                    let why = reply.description.unwrap_or_default();
                    return Err(failed(format!("{status} {why}")));
                }
                _ => {}
            }
            let header = |name: &str| reply.headers.as_ref().and_then(|h| h.get(name)).map(|v| v.as_str().to_owned());
            let sequence = header("Nats-Sequence")
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| failed("a reply without Nats-Sequence".to_owned()))?;
            let subject = header("Nats-Subject").unwrap_or_default();
            let pending = header("Nats-Num-Pending").and_then(|v| v.parse::<u64>().ok());
            let headers = own_headers(reply.headers.as_ref());
            messages.push(RawMessage { sequence, subject, payload: reply.payload, pending, headers });
        }
        Ok(messages)
    }

    /// Appends `messages` to `subject` if its last sequence is still `expected_last`; each
    /// later message expects the one before it. Returns their stream sequences. A message
    /// whose id the stream has seen within its duplicate window is not stored again, and the
    /// append stops there with [`AppendError::Duplicate`].
    pub async fn append(
        &self,
        subject: &str,
        expected_last: u64,
        messages: Vec<Outgoing>,
    ) -> Result<Vec<u64>, AppendError> {
        let failed = |e: String| AppendError::Failed { subject: subject.to_owned(), reason: e };
        let mut expected = expected_last;
        let mut sequences = Vec::with_capacity(messages.len());
        for message in messages {
            let (msg_id, publish) = message.build();
            let publish = publish.expected_last_subject_sequence(expected);
            let ack = self.js.send_publish(subject.to_owned(), publish).await.map_err(|e| failed(e.to_string()))?;
            match ack.await {
                Ok(ack) if ack.duplicate => return Err(AppendError::Duplicate { subject: subject.to_owned(), msg_id }),
                Ok(ack) => {
                    expected = ack.sequence;
                    sequences.push(ack.sequence);
                }
                Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => {
                    return Err(AppendError::Conflict { subject: subject.to_owned(), appended: sequences.len() })
                }
                Err(e) => return Err(failed(e.to_string())),
            }
        }
        Ok(sequences)
    }

    /// Appends one message with no condition but its dedup id: for subjects with a single
    /// writer, such as a node's reports.
    pub async fn publish(&self, subject: &str, message: Outgoing) -> Result<u64, AppendError> {
        let failed = |e: String| AppendError::Failed { subject: subject.to_owned(), reason: e };
        let (_, publish) = message.build();
        let ack = self.js.send_publish(subject.to_owned(), publish).await.map_err(|e| failed(e.to_string()))?;
        Ok(ack.await.map_err(|e| failed(e.to_string()))?.sequence)
    }
}
