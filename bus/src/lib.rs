//! The log's plumbing, shared by the engine, the edge node and `replay`: the authenticated
//! connection to NATS ([`Connection`]), the event store on JetStream ([`store`]), the log read
//! in order ([`tail`]), the durable-consumer loop ([`consume`]) and NATS credentials
//! ([`creds`]). Its errors are typed per operation: opening, reading, appending, consuming.
//!
//! It knows the envelope and the subjects (`events`) but no aggregate, projection or worker:
//! what is folded from the log, and why, is the services' business.
//!
//! Everything here reads what comes from the server, which may be hostile: no arithmetic that
//! can overflow, no indexing that can panic, no slicing of a string off a character boundary.

#![cfg_attr(not(test), deny(clippy::arithmetic_side_effects, clippy::indexing_slicing, clippy::string_slice))]

pub mod consume;
pub mod creds;
pub mod dead;
pub mod seal;
pub mod settings;
pub mod store;
pub mod tail;
pub mod trace;

use std::path::PathBuf;

pub use creds::{Credentials, CredsError};

/// The JetStream API as the outside account (nodes, subscribers, auditors) sees it: the
/// services the engine's account exports to it, renamed so that they never meet the outside
/// account's own `$JS.API`, which has no JetStream behind it.
pub const OUTSIDE_API: &str = "JS.EDGE.API";
/// The JetStream API in the account that holds the streams.
pub const API: &str = "$JS.API";

/// How to reach NATS: the servers, who we are, and whom to trust.
#[derive(Debug, Clone, Default)]
pub struct Connection {
    /// One server, or a cluster's members separated by commas (`tls://a:4222,tls://b:4222`).
    pub servers: String,
    /// The credentials of this connection; the server refuses anonymous ones.
    pub credentials: Option<Credentials>,
    /// The certificate authority the servers' certificates are checked against. When given,
    /// the connection must be TLS, whatever the URL says.
    pub ca: Option<PathBuf>,
    /// The name the server shows for this connection.
    pub name: String,
    /// The prefix of this connection's reply subjects, when its permissions only let it
    /// receive on its own (`_INBOX_node.<tenant>.<node>`); by default, the one its
    /// credentials allow.
    pub inbox_prefix: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("`{address}` is not a NATS server address: {reason}")]
    Address { address: String, reason: String },
    #[error("connecting to {servers}: {reason}")]
    Connect { servers: String, reason: String },
}

impl Connection {
    pub fn new(servers: impl Into<String>) -> Connection {
        Connection { servers: servers.into(), ..Connection::default() }
    }

    /// The servers as addresses.
    pub fn addresses(&self) -> Result<Vec<async_nats::ServerAddr>, ConnectError> {
        self.servers
            .split(',')
            .map(|u| {
                u.trim()
                    .parse()
                    .map_err(|e: std::io::Error| ConnectError::Address { address: u.to_owned(), reason: e.to_string() })
            })
            .collect()
    }

    /// Options carrying the credentials, TLS and inbox of this connection, for a caller to add
    /// its own (event callbacks, reconnect delays) before [`Connection::connect_with`].
    pub fn options(&self) -> async_nats::ConnectOptions {
        let mut options = match &self.credentials {
            Some(credentials) => credentials.options(),
            None => async_nats::ConnectOptions::new(),
        };
        if let Some(ca) = &self.ca {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        if self.servers.split(',').any(|u| u.trim().starts_with("tls://")) {
            options = options.require_tls(true);
        }
        let allowed = self.credentials.as_ref().and_then(Credentials::inbox_prefix);
        if let Some(prefix) = self.inbox_prefix.clone().or(allowed) {
            options = options.custom_inbox_prefix(prefix);
        }
        if !self.name.is_empty() {
            options = options.name(&self.name);
        }
        options
    }

    /// The prefix of the JetStream API for this connection: [`OUTSIDE_API`] when its
    /// credentials are those of an outside party, [`API`] otherwise.
    pub fn api_prefix(&self) -> &'static str {
        match &self.credentials {
            Some(credentials) if credentials.is_outside() => OUTSIDE_API,
            _ => API,
        }
    }

    /// The JetStream context of `client` (made from this connection), with its API prefix.
    pub fn jetstream(&self, client: async_nats::Client) -> async_nats::jetstream::Context {
        async_nats::jetstream::with_prefix(client, self.api_prefix())
    }

    /// Connects with [`Connection::options`], waiting for a server that is not up yet.
    pub async fn connect(&self) -> Result<async_nats::Client, ConnectError> {
        self.connect_with(self.options().retry_on_initial_connect()).await
    }

    /// Connects with `options` (made from [`Connection::options`]).
    pub async fn connect_with(&self, options: async_nats::ConnectOptions) -> Result<async_nats::Client, ConnectError> {
        options
            .connect(self.addresses()?)
            .await
            .map_err(|e| ConnectError::Connect { servers: self.servers.clone(), reason: e.to_string() })
    }
}

/// Whether `event` says the server revoked this connection's credentials: every reconnect
/// will be refused, so the holder should stop rather than try for ever.
pub fn is_revocation(event: &async_nats::Event) -> bool {
    match event {
        async_nats::Event::ServerError(async_nats::ServerError::Other(text)) => {
            text.to_ascii_lowercase().contains("revoked")
        }
        _ => false,
    }
}
