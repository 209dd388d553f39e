//! The log read in order from a sequence, through lost servers and links: what the projectors
//! and the auditors' tool read.
//!
//! A reader whose credential may make consumers (the engine) reads through one; one that may
//! not (an auditor: it writes nothing, not even a consumer) reads by batched direct gets,
//! asking again while it is at the end ([`EventStore::reading_by_direct_get`]).
//!
//! It is what JetStream calls an ordered consumer, kept by hand: an ephemeral consumer on one
//! server, in memory, without acks, pulled with heartbeats every second. When a heartbeat is
//! missed, a message is missing (the consumer sequence jumps) or the pull fails, the consumer
//! is dropped and made again from the sequence after the last one handed out. So nothing is
//! skipped and nothing comes twice, and a reader whose server died is reading again within
//! seconds. (The client's own ordered consumer waits for two missed heartbeats of fifteen
//! seconds, and only notices the second one when something else wakes it: on a cluster that lost
//! a server, a projector stood still for up to a minute and a half.)

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures::{Stream, StreamExt};

use crate::store::{ConsumeError, EventStore, StoreError};

/// One message of the log, as read.
#[derive(Debug, Clone)]
pub struct Entry {
    pub sequence: u64,
    pub subject: String,
    pub payload: bytes::Bytes,
    /// How many messages follow it in the stream, as far as the reader knows.
    pub pending: u64,
}

/// Messages asked for per direct get, and how long a reader at the end waits to ask again.
const DIRECT_BATCH: usize = 1000;
const DIRECT_POLL: Duration = Duration::from_millis(100);

/// How long one pull waits, and how often the server says the consumer is alive.
const PULL_EXPIRES: Duration = Duration::from_secs(5);
const PULL_HEARTBEAT: Duration = Duration::from_secs(1);
/// Messages asked for per pull.
const PULL_BATCH: usize = 500;
/// A consumer left behind (its reader gone) is removed by the server after this long.
const LEFT_BEHIND: Duration = Duration::from_secs(30);
/// Times the first consumer is asked for, each waiting 2 s for an answer.
const FIRST_ASKS: u32 = 15;

/// Every message of the stream from sequence `from` on, in order, without end. The first
/// consumer is made before this returns, so a missing stream is an error here (a request that
/// goes unanswered, while a cluster elects its leaders, is sent again for half a minute); any
/// failure after that is logged and ridden out.
pub async fn tail(store: &EventStore, from: u64) -> Result<impl Stream<Item = Entry> + Send + 'static, StoreError> {
    if store.reads_by_direct_get() {
        return Ok(direct(store.clone(), from).await?.left_stream());
    }
    Ok(consumed(store, from).await?.right_stream())
}

/// The log by batched direct gets: no consumer, nothing written.
async fn direct(store: EventStore, from: u64) -> Result<impl Stream<Item = Entry> + Send + 'static, StoreError> {
    let from = from.max(1);
    // The first answer says whether the stream is there and may be read.
    let first = store.direct(events::subject::ALL, from, None, DIRECT_BATCH).await?;
    let state = (store, from, std::collections::VecDeque::from(first));
    Ok(futures::stream::unfold(state, |(store, mut next, mut buffered)| async move {
        let mut retry = DIRECT_POLL;
        loop {
            if let Some(raw) = buffered.pop_front() {
                // What comes again, or out of order, was read already.
                if raw.sequence < next {
                    continue;
                }
                next = raw.sequence.saturating_add(1);
                let pending = raw.pending.unwrap_or(buffered.len() as u64);
                let entry = Entry { sequence: raw.sequence, subject: raw.subject, payload: raw.payload, pending };
                return Some((entry, (store, next, buffered)));
            }
            match store.direct(events::subject::ALL, next, None, DIRECT_BATCH).await {
                Ok(batch) if batch.is_empty() => tokio::time::sleep(DIRECT_POLL).await,
                Ok(batch) => {
                    buffered.extend(batch);
                    retry = DIRECT_POLL;
                }
                Err(e) => {
                    tracing::warn!(from = next, error = %e, "reading the log; trying again");
                    tokio::time::sleep(retry).await;
                    retry = retry.saturating_mul(2).min(Duration::from_secs(2));
                }
            }
        }
    }))
}

/// The log through an ephemeral consumer, made again as needed.
async fn consumed(store: &EventStore, from: u64) -> Result<impl Stream<Item = Entry> + Send + 'static, StoreError> {
    let mut reader = Reader { stream: store.consumers().clone(), next: from.max(1), delivered: 0, messages: None };
    let mut unanswered = 0;
    let first = loop {
        match reader.pull().await {
            Ok(messages) => break messages,
            Err(Unmade::Unanswered) if unanswered < FIRST_ASKS => unanswered = unanswered.saturating_add(1),
            Err(e) => {
                return Err(ConsumeError { consumer: format!("a reader from {from}"), reason: e.to_string() }.into())
            }
        }
    };
    reader.messages = Some(first);
    Ok(futures::stream::unfold(reader, |mut reader| async move {
        let message = reader.next().await;
        Some((message, reader))
    }))
}

/// Why a consumer was not made.
enum Unmade {
    /// The request went unanswered.
    Unanswered,
    Refused(String),
}

impl std::fmt::Display for Unmade {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unmade::Unanswered => write!(f, "making a consumer: no answer"),
            Unmade::Refused(why) => write!(f, "making a consumer: {why}"),
        }
    }
}

struct Reader {
    stream: jetstream::stream::Stream<()>,
    /// The stream sequence of the next message to hand out.
    next: u64,
    /// The consumer sequence of the last message the current consumer delivered.
    delivered: u64,
    messages: Option<consumer::pull::Stream>,
}

impl Reader {
    /// A new consumer from `next`, and its pull.
    async fn pull(&mut self) -> Result<consumer::pull::Stream, Unmade> {
        let config = consumer::pull::Config {
            deliver_policy: consumer::DeliverPolicy::ByStartSequence { start_sequence: self.next },
            ack_policy: consumer::AckPolicy::None,
            max_deliver: 1,
            num_replicas: 1,
            memory_storage: true,
            inactive_threshold: LEFT_BEHIND,
            ..Default::default()
        };
        let consumer = self.stream.create_consumer(config).await.map_err(|e| match e.kind() {
            jetstream::stream::ConsumerErrorKind::TimedOut => Unmade::Unanswered,
            _ => Unmade::Refused(e.to_string()),
        })?;
        self.delivered = 0;
        consumer
            .stream()
            .max_messages_per_batch(PULL_BATCH)
            .expires(PULL_EXPIRES)
            .heartbeat(PULL_HEARTBEAT)
            .messages()
            .await
            .map_err(|e| Unmade::Refused(e.to_string()))
    }

    /// The next message, however long the server takes to be back.
    async fn next(&mut self) -> Entry {
        let mut retry = Duration::from_millis(100);
        loop {
            let Some(messages) = self.messages.as_mut() else {
                match self.pull().await {
                    Ok(messages) => {
                        self.messages = Some(messages);
                        retry = Duration::from_millis(100);
                    }
                    Err(e) => {
                        tracing::warn!(from = self.next, error = %e, "reading the log; trying again");
                        tokio::time::sleep(retry).await;
                        retry = retry.saturating_mul(2).min(Duration::from_secs(2));
                    }
                }
                continue;
            };
            let problem = match messages.next().await {
                Some(Ok(message)) => match message.info() {
                    Ok(info)
                        if Some(info.consumer_sequence) == self.delivered.checked_add(1)
                            && info.stream_sequence >= self.next =>
                    {
                        self.delivered = info.consumer_sequence;
                        self.next = info.stream_sequence.saturating_add(1);
                        let (sequence, pending) = (info.stream_sequence, info.pending);
                        let subject = message.subject.to_string();
                        return Entry { sequence, subject, payload: message.payload.clone(), pending };
                    }
                    Ok(info) => format!("consumer sequence {} after {}", info.consumer_sequence, self.delivered),
                    Err(e) => e.to_string(),
                },
                Some(Err(e)) => e.to_string(),
                None => "the pull ended".to_owned(),
            };
            tracing::warn!(from = self.next, problem, "reading the log again");
            self.messages = None;
        }
    }
}
