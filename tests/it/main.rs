//! Integration tests on a real nats-server (one per test) and the real Docker engine.

mod api;
mod auth;
mod chaos;
mod cli;
mod cluster;
mod compose;
mod cross;
mod dashboard;
mod deploy;
pub(crate) mod faults;
mod harness;
mod ingest;
mod install;
mod margo;
mod metrics;
mod policy;
mod production;
mod projector;
mod replay;
mod robustness;
mod rollout;
mod secrets;
mod store;
mod trace;
mod trust;
