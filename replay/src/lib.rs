//! The auditors' tool: reads the whole event log, in order, with bounded memory, and answers
//! from it alone: whether its hash chains are whole ([`verify`]), who did what, when
//! ([`audit`]), and what the read models must say ([`rebuild`]).
//!
//! The log it reads may hold anything: no arithmetic that can overflow, no indexing that can
//! panic, no slicing of a string off a character boundary.

#![cfg_attr(not(test), deny(clippy::arithmetic_side_effects, clippy::indexing_slicing, clippy::string_slice))]

pub mod at;
pub mod audit;
pub mod backup;
pub mod rebuild;
pub mod verify;

use std::io::IsTerminal;

use futures::StreamExt;

use bus::store::{EventStore, StoredEvent};

/// A message of the log as a reader finds it: an event that fits where it is, or one that does
/// not ([`events::fit`]), which every reader sets aside and goes on.
pub type Found = Result<StoredEvent, SetAside>;

/// A message that does not fit where it was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetAside {
    pub sequence: u64,
    pub reason: events::fit::Unfit,
}

impl std::fmt::Display for SetAside {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the message at sequence {} is set aside: {}", self.sequence, self.reason)
    }
}

fn found(sequence: u64, subject: &str, payload: bytes::Bytes) -> Found {
    match events::fit::read(subject, &payload) {
        Ok(envelope) => Ok(StoredEvent { sequence, envelope, bytes: payload }),
        Err(reason) => Err(SetAside { sequence, reason }),
    }
}

/// Hands `each` every event of the stream from sequence `from` to the last one there is now,
/// with its subject, in stream order; returns how many there were. A message that does not
/// fit where it is is logged and passed over. Progress is shown on a terminal.
pub async fn each_event(
    store: &EventStore,
    from: u64,
    mut each: impl FnMut(&str, StoredEvent) -> anyhow::Result<()>,
) -> anyhow::Result<u64> {
    each_message(store, from, |subject, found| match found {
        Ok(event) => each(subject, event),
        Err(set_aside) => {
            eprintln!("warning: {subject}: {set_aside}");
            Ok(())
        }
    })
    .await
}

/// A bar of events read out of `last`, on stderr when it is a terminal (hidden otherwise).
pub fn progress_bar(last: u64) -> indicatif::ProgressBar {
    let progress = match std::io::stderr().is_terminal() {
        true => indicatif::ProgressBar::new(last),
        false => indicatif::ProgressBar::hidden(),
    };
    progress.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} events, {per_sec}, {eta} left")
            .expect("a valid template"),
    );
    progress
}

/// Like [`each_event`], handing `each` every message, whether it fits or not; returns how many
/// there were.
pub async fn each_message(
    store: &EventStore,
    from: u64,
    mut each: impl FnMut(&str, Found) -> anyhow::Result<()>,
) -> anyhow::Result<u64> {
    let last = store.last_sequence().await?;
    if last < from.max(1) {
        return Ok(0);
    }
    let progress = progress_bar(last);
    let messages = bus::tail::tail(store, from).await.map_err(|e| anyhow::anyhow!("reading the log: {e}"))?;
    let mut messages = std::pin::pin!(messages);
    let mut count: u64 = 0;
    while let Some(message) = messages.next().await {
        let sequence = message.sequence;
        each(&message.subject, found(sequence, &message.subject, message.payload))?;
        count = count.saturating_add(1);
        progress.set_position(sequence);
        // The log never ends: stop at the end read beforehand.
        if sequence >= last {
            break;
        }
    }
    progress.finish_and_clear();
    Ok(count)
}

/// Hands `each` every message appended from now on (or from `from` when given), with its
/// subject, as it comes, until `each` fails; a lost link or server is waited out.
pub async fn follow(
    store: &EventStore,
    from: Option<u64>,
    mut each: impl FnMut(&str, Found) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let from = match from {
        Some(from) => from,
        None => store.last_sequence().await?.saturating_add(1),
    };
    let messages = bus::tail::tail(store, from).await.map_err(|e| anyhow::anyhow!("reading the log: {e}"))?;
    let mut messages = std::pin::pin!(messages);
    while let Some(message) = messages.next().await {
        each(&message.subject, found(message.sequence, &message.subject, message.payload))?;
    }
    Ok(())
}
