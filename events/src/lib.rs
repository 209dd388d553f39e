//! The vocabulary of the orchestration engine and its pure decisions.
//!
//! This crate holds the event envelope, the subjects, the aggregates (`application`, `node`,
//! `deployment`) as `decide`/`evolve` pairs, the node protocol (`work` sent to a node,
//! `report` sent back) and the projection folds shared by the engine and `replay`.
//!
//! It deliberately does no I/O: no clock, no random ids, no network, no disk. The time comes
//! in through [`Ctx`], ids are chosen by the caller, so folding the same events always gives
//! the same state.

pub mod aggregate;
pub mod application;
pub mod compose;
pub mod deployment;
pub mod envelope;
pub mod logs;
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
pub use envelope::{DecodeError, Envelope, Sign, SignatureError};
pub use status::{ContainerStatus, Containers, Failure, Status};
