//! The auditors' tool: reads the whole event log, in order, with bounded memory, and answers
//! from it alone: whether its hash chains are whole ([`verify`]), who did what, when
//! ([`audit`]), and what the read models must say ([`rebuild`]).

pub mod at;
pub mod audit;
pub mod rebuild;
pub mod verify;

use std::io::IsTerminal;

use futures::StreamExt;

use bus::store::{EventStore, StoredEvent};

/// Hands `each` every event of the stream from sequence `from` to the last one there is now,
/// with its subject, in stream order; returns how many there were. Progress is shown on a
/// terminal.
pub async fn each_event(
    store: &EventStore,
    from: u64,
    mut each: impl FnMut(&str, StoredEvent) -> anyhow::Result<()>,
) -> anyhow::Result<u64> {
    let last = store.last_sequence().await?;
    if last < from.max(1) {
        return Ok(0);
    }
    let progress = match std::io::stderr().is_terminal() {
        true => indicatif::ProgressBar::new(last),
        false => indicatif::ProgressBar::hidden(),
    };
    progress.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} events, {per_sec}, {eta} left")
            .expect("a valid template"),
    );
    let messages = bus::tail::tail(store, from).await.map_err(|e| anyhow::anyhow!("reading the log: {e}"))?;
    let mut messages = std::pin::pin!(messages);
    let mut count = 0;
    while let Some(message) = messages.next().await {
        let sequence = message.sequence;
        each(&message.subject, StoredEvent::decode(sequence, message.payload)?)?;
        count += 1;
        progress.set_position(sequence);
        // The log never ends: stop at the end read beforehand.
        if sequence >= last {
            break;
        }
    }
    progress.finish_and_clear();
    Ok(count)
}

/// Hands `each` every event appended from now on (or from `from` when given), with its
/// subject, as it comes, until `each` fails; a lost link or server is waited out.
pub async fn follow(
    store: &EventStore,
    from: Option<u64>,
    mut each: impl FnMut(&str, StoredEvent) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let from = match from {
        Some(from) => from,
        None => store.last_sequence().await? + 1,
    };
    let messages = bus::tail::tail(store, from).await.map_err(|e| anyhow::anyhow!("reading the log: {e}"))?;
    let mut messages = std::pin::pin!(messages);
    while let Some(message) = messages.next().await {
        each(&message.subject, StoredEvent::decode(message.sequence, message.payload)?)?;
    }
    Ok(())
}
