//! A backup of the log, and its restore into an empty stream.
//!
//! A backup is a file of JSON lines: a `begin` line (the stream, its first and last sequence,
//! when it was taken), one `message` line per message of the stream in order (its subject,
//! the headers it was published with, its bytes in base64), one `key` line per tenant's key
//! when the keys were asked for, and an `end` line counting them. A file without its `end`, or
//! whose counts or order do not hold, is refused whole before anything is written.
//!
//! Events are chained and signed by their content, not by where they sit in the stream: put
//! back in order into an empty stream, every chain and signature holds again, which `replay
//! verify` checks.

use std::io::{BufRead, Write};

use anyhow::Context;
use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use bus::store::EventStore;
use engine::secrets::TenantKeys;

/// What the first line says the file is.
pub const FORMAT: &str = "edge-orchestrator backup";
const VERSION: u32 = 1;
/// Messages asked for per direct get.
const BATCH: usize = 1000;

/// One line of a backup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "line", rename_all = "snake_case", deny_unknown_fields)]
pub enum Line {
    Begin { format: String, version: u32, stream: String, last_sequence: u64, taken_at: DateTime<Utc> },
    Message { sequence: u64, subject: String, headers: Vec<(String, String)>, data: String },
    Key { tenant: String, key: String },
    End { messages: u64, keys: u64 },
}

/// What a backup or a restore went through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    pub messages: u64,
    pub keys: u64,
}

fn write_line(out: &mut impl Write, line: &Line) -> anyhow::Result<()> {
    serde_json::to_writer(&mut *out, line)?;
    out.write_all(b"\n")?;
    Ok(())
}

/// Writes every message of `store`'s stream up to its last sequence now, and each tenant's
/// key when `keys` is given, to `out`.
pub async fn backup(store: &EventStore, keys: Option<&TenantKeys>, out: &mut impl Write) -> anyhow::Result<Counts> {
    let last = store.last_sequence().await?;
    let stream = store.stream().cached_info().config.name.clone();
    write_line(
        out,
        &Line::Begin { format: FORMAT.into(), version: VERSION, stream, last_sequence: last, taken_at: Utc::now() },
    )?;
    let mut counts = Counts::default();
    let mut from = 1;
    while from <= last {
        let batch = store.direct(events::subject::ALL, from, Some(last), BATCH).await?;
        let Some(after) = batch.last().map(|m| m.sequence.saturating_add(1)) else { break };
        for message in batch {
            let data = base64::engine::general_purpose::STANDARD.encode(&message.payload);
            let (sequence, subject, headers) = (message.sequence, message.subject, message.headers);
            write_line(out, &Line::Message { sequence, subject, headers, data })?;
            counts.messages = counts.messages.saturating_add(1);
        }
        from = after;
    }
    for (tenant, key) in match keys {
        Some(keys) => keys.export().await?,
        None => Vec::new(),
    } {
        write_line(out, &Line::Key { tenant, key: base64::engine::general_purpose::STANDARD.encode(key) })?;
        counts.keys = counts.keys.saturating_add(1);
    }
    write_line(out, &Line::End { messages: counts.messages, keys: counts.keys })?;
    out.flush()?;
    Ok(counts)
}

/// Reads a whole backup and checks it holds together: a `begin` of this format first,
/// messages in rising order of sequence with their bytes in base64, keys of 32 bytes, an
/// `end` last whose counts are what came before it. Names the line of the first fault.
pub fn check(input: impl BufRead) -> anyhow::Result<(String, Counts)> {
    let mut stream = None;
    let mut counts = Counts::default();
    let mut ended = false;
    let mut previous = 0;
    for (number, line) in input.lines().enumerate() {
        let number = number.saturating_add(1);
        let line = line.with_context(|| format!("reading line {number}"))?;
        anyhow::ensure!(!ended, "line {number}: something follows the `end` line");
        let line: Line =
            serde_json::from_str(&line).with_context(|| format!("line {number} is not a backup's line"))?;
        match line {
            Line::Begin { format, version, stream: name, .. } if number == 1 => {
                anyhow::ensure!(
                    format == FORMAT && version == VERSION,
                    "line 1: a backup of format `{format}` version {version}, not `{FORMAT}` version {VERSION}"
                );
                stream = Some(name);
            }
            _ if number == 1 => anyhow::bail!("line 1 is not the `begin` line: this is not a backup"),
            Line::Begin { .. } => anyhow::bail!("line {number}: a second `begin` line"),
            Line::Message { sequence, subject, data, .. } => {
                anyhow::ensure!(sequence > previous, "line {number}: sequence {sequence} does not follow {previous}");
                anyhow::ensure!(counts.keys == 0, "line {number}: a message after the keys");
                anyhow::ensure!(!subject.is_empty(), "line {number}: a message without a subject");
                base64::engine::general_purpose::STANDARD
                    .decode(data)
                    .with_context(|| format!("line {number}: the message's data is not base64"))?;
                (previous, counts.messages) = (sequence, counts.messages.saturating_add(1));
            }
            Line::Key { tenant, key } => {
                let key = base64::engine::general_purpose::STANDARD
                    .decode(key)
                    .with_context(|| format!("line {number}: tenant `{tenant}`'s key is not base64"))?;
                anyhow::ensure!(
                    key.len() == 32,
                    "line {number}: tenant `{tenant}`'s key is {} bytes, not 32",
                    key.len()
                );
                counts.keys = counts.keys.saturating_add(1);
            }
            Line::End { messages, keys } => {
                anyhow::ensure!(
                    Counts { messages, keys } == counts,
                    "line {number}: the end counts {messages} messages and {keys} keys, the file holds {} and {}",
                    counts.messages,
                    counts.keys
                );
                ended = true;
            }
        }
    }
    anyhow::ensure!(ended, "the backup has no `end` line: it was cut short");
    Ok((stream.unwrap_or_default(), counts))
}

/// Puts a backup [`check`]ed already back: every message, in order and with its headers (but
/// the orders to the server it was appended with), into `store`'s stream, which must be empty;
/// each key into `keys`.
pub async fn restore(store: &EventStore, keys: &TenantKeys, input: impl BufRead) -> anyhow::Result<Counts> {
    let held = store.last_sequence().await?;
    let name = store.stream().cached_info().config.name.clone();
    anyhow::ensure!(
        held == 0,
        "the stream {name} holds messages (up to sequence {held}): a backup goes into an empty one"
    );
    let js = store.jetstream();
    let mut counts = Counts::default();
    for line in input.lines() {
        match serde_json::from_str::<Line>(&line?)? {
            Line::Message { subject, headers, data, .. } => {
                let mut map = async_nats::HeaderMap::new();
                // `Nats-` headers are orders to the server (a dedup id, an expected sequence) that
                // held when the message was first appended, not now.
                for (header, value) in headers.iter().filter(|(h, _)| !h.starts_with("Nats-")) {
                    map.append(header.as_str(), value.as_str());
                }
                let data = base64::engine::general_purpose::STANDARD.decode(data)?;
                let ack = js.publish_with_headers(subject.clone(), map, data.into()).await?;
                ack.await.with_context(|| format!("putting back a message on {subject}"))?;
                counts.messages = counts.messages.saturating_add(1);
            }
            Line::Key { tenant, key } => {
                keys.import(&tenant, &base64::engine::general_purpose::STANDARD.decode(key)?).await?;
                counts.keys = counts.keys.saturating_add(1);
            }
            Line::Begin { .. } | Line::End { .. } => {}
        }
    }
    Ok(counts)
}
