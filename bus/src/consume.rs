//! A durable consumer read for as long as its reader runs: the loop the engine's workers and
//! every edge node share.
//!
//! It pulls with a heartbeat. A pull left on a server that died, or on a consumer whose leader
//! moved in a cluster, is noticed at the first missed heartbeat and sent again, which reaches
//! the consumer's leader wherever it is now. A consumer the server no longer knows (deleted,
//! or its stream gone with a server) is found or made again, trying again with a growing pause
//! while that fails. Nothing is acked here: the reader acks what it handled, and what it did
//! not comes again after the consumer's ack wait.
//!
//! While the connection is down, nothing is asked and nothing backs off: a pull asked then
//! would be lost with the link (and waited on until its heartbeats were missed), and a pause
//! grown through a long outage would be slept after the link came back. The reader waits for
//! the link instead, and pulls as soon as it is back.

use std::future::Future;
use std::time::Duration;

use async_nats::connection::State;
use async_nats::jetstream::{self, consumer::pull};
use futures::{Stream, StreamExt};

use crate::store::ConsumeError;

/// How one pull waits, how often the server says it is alive, and how many messages it asks
/// for at once.
#[derive(Debug, Clone, Copy)]
pub struct Pull {
    pub expires: Duration,
    pub heartbeat: Duration,
    pub batch: usize,
}

/// The longest pause between attempts to find or make the consumer.
const MAX_PAUSE: Duration = Duration::from_secs(5);
/// The first pause, and the one after the link came back.
const FIRST_PAUSE: Duration = Duration::from_millis(100);
/// How often a reader whose link is down looks whether it is back.
const LINK_LOOK: Duration = Duration::from_millis(20);

/// Every message of the consumer that `find` finds (or makes) through `link` (the connection
/// it is read on), through lost links, restarted servers and consumers made again, without end.
pub fn durable<F, FFut>(
    name: &str,
    link: async_nats::Client,
    pull: Pull,
    find: F,
) -> impl Stream<Item = jetstream::Message> + use<F, FFut>
where
    F: FnMut() -> FFut,
    FFut: Future<Output = Result<jetstream::consumer::PullConsumer, ConsumeError>>,
{
    let reader = Reader { name: name.to_owned(), link, pull, find, consumer: None, messages: None };
    futures::stream::unfold(reader, |mut reader| async move {
        let message = reader.next().await;
        Some((message, reader))
    })
}

struct Reader<F> {
    name: String,
    link: async_nats::Client,
    pull: Pull,
    find: F,
    consumer: Option<jetstream::consumer::PullConsumer>,
    messages: Option<pull::Stream>,
}

impl<F, FFut> Reader<F>
where
    F: FnMut() -> FFut,
    FFut: Future<Output = Result<jetstream::consumer::PullConsumer, ConsumeError>>,
{
    async fn next(&mut self) -> jetstream::Message {
        let name = self.name.clone();
        let mut pause = FIRST_PAUSE;
        loop {
            let Some(consumer) = &self.consumer else {
                self.linked(&mut pause).await;
                match (self.find)().await {
                    Ok(consumer) => self.consumer = Some(consumer),
                    Err(e) => {
                        tracing::info!(consumer = name, error = %e, "waiting for the consumer");
                        self.rest(&mut pause).await;
                    }
                }
                continue;
            };
            let Some(messages) = self.messages.as_mut() else {
                let Pull { expires, heartbeat, batch } = self.pull;
                let pulled = consumer.stream().max_messages_per_batch(batch).expires(expires).heartbeat(heartbeat);
                self.linked(&mut pause).await;
                tracing::debug!(consumer = name, "pulling");
                match pulled.messages().await {
                    Ok(messages) => self.messages = Some(messages),
                    Err(e) => {
                        tracing::warn!(consumer = name, error = %e, "pulling; the consumer is found again");
                        self.consumer = None;
                        self.rest(&mut pause).await;
                    }
                }
                continue;
            };
            match messages.next().await {
                Some(Ok(message)) => return message,
                Some(Err(e)) if !gone(&e) => {
                    // Not too soon: an error that comes back at once (too many pulls waiting)
                    // must not spin.
                    tracing::warn!(consumer = name, error = %e, "pulling again");
                    self.rest(&mut pause).await;
                }
                Some(Err(e)) => {
                    tracing::warn!(consumer = name, error = %e, "the consumer is found again");
                    self.consumer = None;
                }
                None => {
                    tracing::warn!(consumer = name, "the pull ended; the consumer is found again");
                    self.consumer = None;
                }
            }
            self.messages = None;
        }
    }
}

impl<F> Reader<F> {
    /// Waits while the link is down; a pause grown before it went down starts again small.
    async fn linked(&self, pause: &mut Duration) {
        if self.link.connection_state() == State::Connected {
            return;
        }
        while self.link.connection_state() != State::Connected {
            tokio::time::sleep(LINK_LOOK).await;
        }
        *pause = FIRST_PAUSE;
    }

    /// After a failure: the growing pause while the link is up, or until it is back.
    async fn rest(&self, pause: &mut Duration) {
        if self.link.connection_state() != State::Connected {
            return self.linked(pause).await;
        }
        tokio::time::sleep(*pause).await;
        *pause = pause.saturating_mul(2).min(MAX_PAUSE);
    }
}

/// Whether a pull failed because the server no longer knows the consumer.
fn gone(e: &pull::MessagesError) -> bool {
    matches!(e.kind(), pull::MessagesErrorKind::ConsumerDeleted | pull::MessagesErrorKind::NoResponders)
}
