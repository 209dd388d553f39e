//! The vocabulary of the orchestration engine and its pure decisions.
//!
//! This crate holds the event envelope, the subjects, the aggregates (`application`, `node`,
//! `deployment`) as `decide`/`evolve` pairs, the node protocol (`work` sent to a node,
//! `report` sent back) and the projection folds shared by the engine and `replay`.
//!
//! It deliberately does no I/O: no clock, no random ids, no network, no disk. The time comes
//! in through [`Ctx`], ids are chosen by the caller, so folding the same events always gives
//! the same state.
//!
//! Everything here reads what comes from outside (the log, nodes, the API): no arithmetic that
//! can overflow, no indexing that can panic, no slicing of a string off a character boundary.

#![cfg_attr(not(test), deny(clippy::arithmetic_side_effects, clippy::indexing_slicing, clippy::string_slice))]

pub mod aggregate;
pub mod application;
pub mod compose;
pub mod deployment;
pub mod deployment_node;
pub mod envelope;
pub mod fit;
pub mod logs;
pub mod margo;
pub mod node;
pub mod policy;
pub mod projection;
pub mod report;
pub mod status;
pub mod subject;
pub mod telemetry;
pub mod tenant;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod token;
pub mod work;

pub use aggregate::{Aggregate, Ctx, EventPayload};

/// What is shown in place of a secret's value, everywhere.
pub const REDACTED: &str = "***";

/// `value` (an event's payload, as JSON) with every value of every `secrets` map in it shown
/// as [`REDACTED`]: sealed values are not secrets in clear, but they are nobody's business.
pub fn redact(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, inner) in map.iter_mut() {
                match inner {
                    serde_json::Value::Object(secrets) if key == "secrets" => {
                        for sealed in secrets.values_mut() {
                            *sealed = serde_json::Value::String(REDACTED.to_owned());
                        }
                    }
                    _ => redact(inner),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(redact),
        _ => {}
    }
}
pub use envelope::{DecodeError, Envelope, Sign, SignatureError};
pub use status::{ContainerStatus, Containers, Failure, Status};

/// The word of `among` nearest to `word`, if one is within `distance` edits of it: what "did
/// you mean" suggests.
pub fn nearest<'a>(word: &str, among: &[&'a str], distance: usize) -> Option<&'a str> {
    among.iter().map(|w| (strsim::levenshtein(word, w), *w)).filter(|(d, _)| *d <= distance).min().map(|(_, w)| w)
}
