//! The dead letters: what a reader found on the bus and could not take (bytes that are not an
//! envelope, an envelope on a subject not its own, a payload of the wrong type, a heartbeat
//! that does not decode), set aside so that the reader goes on without it.
//!
//! Each is copied to the `DEADLETTER` stream, limited by size and age, on `dead.<reader>`, its
//! bytes untouched and the headers saying where it was found ([`SUBJECT`], [`SEQUENCE`]) and
//! why ([`REASON`]). It is counted and logged once; a message of the log that several readers
//! set aside is kept once (its message id is its sequence). A reader that may not write (an
//! auditor, a node) only logs and counts.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use async_nats::HeaderMap;
use bytes::Bytes;

use crate::store::{OpenError, ReadError};

pub const STREAM: &str = "DEADLETTER";
pub const ALL: &str = "dead.>";
/// The stream keeps this many bytes at most, the oldest letters going first...
pub const MAX_BYTES: i64 = 256 * 1024 * 1024;
/// ...and no letter longer than this.
pub const MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);

/// The header naming the subject a letter was found on.
pub const SUBJECT: &str = "Dead-Subject";
/// The header with its stream sequence, when it was read from a stream.
pub const SEQUENCE: &str = "Dead-Sequence";
/// The header saying why it was set aside.
pub const REASON: &str = "Dead-Reason";
/// The reader that set it aside.
pub const READER: &str = "Dead-Reader";

/// How many letters a reader remembers having logged: past that, it starts afresh.
const REMEMBERED: usize = 4096;

/// Where a letter was found: its subject and sequence.
type Place = (String, Option<u64>);

/// A message set aside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Letter {
    pub subject: String,
    /// Its sequence in the stream it was read from; none for a message of no stream.
    pub sequence: Option<u64>,
    pub reason: String,
    pub reader: String,
    pub payload: Bytes,
}

impl Letter {
    /// `payload`, found on `subject` (at `sequence` of its stream), set aside by `reader`.
    pub fn new(
        reader: &str,
        subject: &str,
        sequence: Option<u64>,
        payload: &Bytes,
        reason: impl std::fmt::Display,
    ) -> Letter {
        Letter {
            subject: subject.to_owned(),
            sequence,
            reason: reason.to_string(),
            reader: reader.to_owned(),
            payload: payload.clone(),
        }
    }
}

/// Where a reader sets aside what it cannot take. Cloning shares the count. The default only
/// logs and counts, for a reader that may not write.
#[derive(Debug, Clone, Default)]
pub struct DeadLetters {
    /// Where the letters go; `None` for a reader that may not write.
    js: Option<jetstream::Context>,
    seen: Arc<Mutex<HashSet<Place>>>,
    count: Arc<AtomicU64>,
}

impl DeadLetters {
    /// Letters kept in the `DEADLETTER` stream, made if missing.
    pub async fn open(js: jetstream::Context, replicas: usize) -> Result<DeadLetters, OpenError> {
        js.get_or_create_stream(stream::Config {
            name: STREAM.to_owned(),
            subjects: vec![ALL.to_owned()],
            storage: stream::StorageType::File,
            num_replicas: replicas,
            max_bytes: MAX_BYTES,
            max_age: MAX_AGE,
            discard: stream::DiscardPolicy::Old,
            allow_direct: true,
            ..Default::default()
        })
        .await
        .map_err(|e| OpenError { stream: STREAM.to_owned(), reason: e.to_string() })?;
        Ok(DeadLetters { js: Some(js), ..DeadLetters::default() })
    }

    /// How many letters were set aside through this (and its clones).
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Sets `letter` aside: logged and counted the first time this process sees it, copied to
    /// the stream. A failure to copy is logged; the reader goes on either way.
    pub async fn set_aside(&self, letter: Letter) {
        let first = {
            let mut seen = self.seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if seen.len() >= REMEMBERED {
                seen.clear();
            }
            seen.insert((letter.subject.clone(), letter.sequence))
        };
        if !first {
            return;
        }
        let count = self.count.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        tracing::error!(
            reader = letter.reader,
            subject = letter.subject,
            sequence = letter.sequence,
            reason = letter.reason,
            count,
            "set aside as a dead letter"
        );
        let Some(js) = &self.js else { return };
        let mut headers = HeaderMap::new();
        headers.insert(SUBJECT, header_value(&letter.subject).as_str());
        headers.insert(REASON, header_value(&letter.reason).as_str());
        headers.insert(READER, header_value(&letter.reader).as_str());
        if let Some(sequence) = letter.sequence {
            headers.insert(SEQUENCE, sequence.to_string().as_str());
            headers.insert(async_nats::header::NATS_MESSAGE_ID, format!("{sequence}:{}", letter.subject).as_str());
        }
        let subject = format!("dead.{}", token(&letter.reader));
        let copied = match js.publish_with_headers(subject, headers, letter.payload).await {
            Ok(ack) => ack.await.map(drop).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(error) = copied {
            tracing::error!(subject = letter.subject, sequence = letter.sequence, error, "copying a dead letter");
        }
    }
}

/// Every letter in the stream now, oldest first.
pub async fn letters(js: &jetstream::Context) -> Result<Vec<Letter>, ReadError> {
    let failed = |e: String| ReadError::Failed { what: "the dead letters".to_owned(), reason: e };
    let stream = js.get_stream(STREAM).await.map_err(|e| failed(e.to_string()))?;
    let state = stream.get_info().await.map_err(|e| failed(e.to_string()))?.state;
    let mut letters = Vec::new();
    for sequence in state.first_sequence..=state.last_sequence {
        let Ok(message) = stream.get_raw_message(sequence).await else { continue };
        let header = |name: &str| message.headers.get(name).map(|v| v.as_str().to_owned()).unwrap_or_default();
        letters.push(Letter {
            subject: header(SUBJECT),
            sequence: header(SEQUENCE).parse().ok(),
            reason: header(REASON),
            reader: header(READER),
            payload: message.payload,
        });
    }
    Ok(letters)
}

/// `text` fit for a header value: one line, at most 1 KiB.
fn header_value(text: &str) -> String {
    let line: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    let mut end = line.len().min(1024);
    while !line.is_char_boundary(end) {
        end = end.saturating_sub(1);
    }
    line.get(..end).unwrap_or_default().to_owned()
}

/// `text` fit for one subject token.
fn token(text: &str) -> String {
    let token: String =
        text.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
    if token.is_empty() {
        "unknown".to_owned()
    } else {
        token
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_are_one_bounded_line() {
        assert_eq!(header_value("a\r\nb"), "a  b");
        let long = "é".repeat(1000);
        let value = header_value(&long);
        assert!(value.len() <= 1024 && value.chars().all(|c| c == 'é'));
    }

    #[test]
    fn a_reader_is_one_token() {
        assert_eq!(token("engine.ingest >"), "engine_ingest__");
        assert_eq!(token(""), "unknown");
    }
}
