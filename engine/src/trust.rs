//! Who may do what on the bus. nats-server runs in operator mode: it trusts one operator with
//! two accounts. `EDGE` holds the streams and the engine alone; `OUTSIDE` holds every other
//! party (nodes, subscribers, auditors), has no JetStream of its own, and reaches `EDGE` only
//! through the services `EDGE` exports to it ([`Role::permissions`] narrows them further, per
//! party). A request that crosses accounts has its reply subject replaced by the server, so a
//! party cannot make the server answer into the stream, whatever reply it names.
//!
//! Every connection presents a user JWT signed by an account signing key, which the engine
//! holds. So the engine mints a credential for a new node, subscriber or auditor without
//! touching nats-server, and the permissions in the JWT are enforced by the server. A
//! revocation is a new `OUTSIDE` account JWT, signed by the operator key and pushed through the
//! system account: the server cuts the user off at once and refuses it from then on.
//!
//! `Trust::init` makes the keys, the certificate authority and the server's certificate, and
//! the server's configuration, in a directory of their own; secrets are written mode 0600.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use nkeys::KeyPair;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use bus::{Connection, Credentials};

/// The account of the streams and the engine.
pub const ACCOUNT: &str = "EDGE";
/// The account of every other party: nodes, subscribers and auditors.
pub const OUTSIDE: &str = "OUTSIDE";
/// The largest message the server takes. An account JWT grows by about 93 bytes per revoked
/// key: 4 MB hold some 45,000 revocations.
pub const MAX_PAYLOAD: &str = "4MB";

const FACTS: &str = "trust.json";
const OPERATOR_SEED: &str = "operator.nk";
const SIGNING_SEED: &str = "signing.nk";
const OUTSIDE_SIGNING_SEED: &str = "outside-signing.nk";
const ENGINE_CREDS: &str = "engine.creds";
const SYSTEM_CREDS: &str = "system.creds";
const CA: &str = "ca.pem";
const CA_KEY: &str = "ca-key.pem";
const SERVER_CERT: &str = "server.pem";
const SERVER_KEY: &str = "server-key.pem";
const SERVER_CONFIG: &str = "nats.conf";

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path} is not a trust directory made by `engine trust init`: {reason}")]
    Invalid { path: String, reason: String },
    #[error("making the certificates: {0}")]
    Certificate(String),
    #[error("credentials {path}: {source}")]
    Credentials { path: String, source: bus::CredsError },
    #[error("the server did not take the account's new claims: {0}")]
    Push(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TrustError + '_ {
    move |source| TrustError::Io { path: path.display().to_string(), source }
}

/// The public half of the trust directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Facts {
    pub operator: String,
    pub account: String,
    pub system_account: String,
    /// The account of every party but the engine.
    pub outside_account: String,
    /// The key that signs the engine's user.
    pub signing_key: String,
    /// The key that signs every user of the outside account.
    pub outside_signing_key: String,
    /// The engine's user key: it signs the engine's events.
    pub engine: String,
    /// The accounts' JWTs as first made (no revocations), and the system account's.
    pub account_jwt: String,
    pub outside_account_jwt: String,
    pub system_account_jwt: String,
    pub operator_jwt: String,
}

/// The keys and files of a trust directory.
#[derive(Clone)]
pub struct Trust {
    dir: PathBuf,
    operator: Arc<KeyPair>,
    outside_signing: Arc<KeyPair>,
    facts: Facts,
    engine: Credentials,
    system: Credentials,
}

impl std::fmt::Debug for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trust").field("dir", &self.dir).field("facts", &self.facts).finish_non_exhaustive()
    }
}

/// A party that gets a credential, and what nats-server lets it do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// An edge node: its own reports, telemetry, work consumer and log requests.
    Node { tenant: String, node: String },
    /// Reads one tenant's events through its own consumer, which the engine makes; writes
    /// nothing.
    Subscriber { tenant: String, id: String },
    /// Reads every event by direct get; writes nothing, makes no consumer.
    Auditor { id: String },
}

/// Subject permissions of a user JWT: what it may publish and subscribe to, and whether it
/// may answer one request it received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permissions {
    pub publish: Vec<String>,
    pub subscribe: Vec<String>,
    pub respond: bool,
}

impl Role {
    pub fn name(&self) -> String {
        match self {
            Role::Node { tenant, node } => format!("node {tenant}/{node}"),
            Role::Subscriber { tenant, id } => format!("subscriber {tenant}/{id}"),
            Role::Auditor { id } => format!("auditor {id}"),
        }
    }

    /// The prefix of its reply subjects: it may receive on those alone.
    pub fn inbox_prefix(&self) -> String {
        match self {
            Role::Node { tenant, node } => events::subject::node_inbox(tenant, node),
            Role::Subscriber { tenant, id } => format!("_INBOX_sub.{tenant}.{id}"),
            Role::Auditor { id } => format!("_INBOX_audit.{id}"),
        }
    }

    /// The name of the consumer it reads through, if it has one.
    pub fn consumer(&self) -> Option<String> {
        match self {
            Role::Node { tenant, node } => Some(events::subject::node_consumer(tenant, node)),
            Role::Subscriber { tenant, id } => Some(subscriber_consumer(tenant, id)),
            Role::Auditor { .. } => None,
        }
    }

    /// What nats-server lets it do in the outside account (ARCHITECTURE.md, "Who may do what
    /// on the bus"): the JetStream API is the one `EDGE` exports, under [`bus::OUTSIDE_API`].
    pub fn permissions(&self) -> Permissions {
        let stream = events::subject::STREAM;
        let api = bus::OUTSIDE_API;
        let inbox = format!("{}.>", self.inbox_prefix());
        match self {
            Role::Node { tenant, node } => {
                let consumer = events::subject::node_consumer(tenant, node);
                Permissions {
                    publish: vec![
                        events::subject::node_reports(tenant, node),
                        events::telemetry::subject(tenant, node),
                        format!("{api}.CONSUMER.INFO.{stream}.{consumer}"),
                        format!("{api}.CONSUMER.MSG.NEXT.{stream}.{consumer}"),
                        format!("$JS.ACK.{stream}.{consumer}.>"),
                    ],
                    subscribe: vec![inbox, events::logs::subject(tenant, node)],
                    respond: true,
                }
            }
            Role::Subscriber { tenant, id } => {
                // The engine makes its consumer, filtered to the tenant's events.
                let consumer = subscriber_consumer(tenant, id);
                Permissions {
                    publish: vec![
                        format!("{api}.CONSUMER.INFO.{stream}.{consumer}"),
                        format!("{api}.CONSUMER.MSG.NEXT.{stream}.{consumer}"),
                        format!("$JS.ACK.{stream}.{consumer}.>"),
                    ],
                    subscribe: vec![inbox],
                    respond: false,
                }
            }
            Role::Auditor { .. } => Permissions {
                publish: vec![
                    format!("{api}.STREAM.INFO.{stream}"),
                    format!("{api}.DIRECT.GET.{stream}"),
                    format!("{api}.DIRECT.GET.{stream}.>"),
                ],
                subscribe: vec![inbox],
                respond: false,
            },
        }
    }
}

/// A subscriber's consumer: the tenant's length first, as for a node's, so that no two
/// tenants' subscribers share a name.
fn subscriber_consumer(tenant: &str, id: &str) -> String {
    format!("sub-{}-{tenant}-{id}", tenant.len())
}

impl Trust {
    /// Makes a trust directory in `dir`, or loads the one there. `hosts` are the names and
    /// addresses the server's certificate is valid for.
    pub fn init(dir: &Path, hosts: &[&str]) -> Result<Trust, TrustError> {
        if dir.join(FACTS).exists() {
            return Trust::load(dir);
        }
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let operator = KeyPair::new_operator();
        let account = KeyPair::new_account();
        let signing = KeyPair::new_account();
        let outside = KeyPair::new_account();
        let outside_signing = KeyPair::new_account();
        let system_account = KeyPair::new_account();
        let engine = KeyPair::new_user();
        let system = KeyPair::new_user();

        let operator_jwt = encode(
            &operator,
            &operator.public_key(),
            "edge-orchestrator",
            json!({"type": "operator", "version": 2, "system_account": system_account.public_key()}),
        );
        let system_account_jwt = encode(
            &operator,
            &system_account.public_key(),
            "SYS",
            json!({"type": "account", "version": 2, "limits": limits(false)}),
        );
        let facts = Facts {
            operator: operator.public_key(),
            account: account.public_key(),
            system_account: system_account.public_key(),
            outside_account: outside.public_key(),
            signing_key: signing.public_key(),
            outside_signing_key: outside_signing.public_key(),
            engine: engine.public_key(),
            account_jwt: String::new(),
            outside_account_jwt: String::new(),
            system_account_jwt,
            operator_jwt,
        };
        let facts = Facts {
            account_jwt: account_claims(&operator, &facts),
            outside_account_jwt: outside_claims(&operator, &facts, &BTreeMap::new()),
            ..facts
        };
        let engine_jwt = user(&signing, &facts.account, &engine.public_key(), "engine", None);
        let system_jwt = encode(
            &system_account,
            &system.public_key(),
            "system",
            json!({"type": "user", "version": 2, "subs": -1, "data": -1, "payload": -1, "bearer_token": false}),
        );

        secret(&dir.join(OPERATOR_SEED), &seed(&operator))?;
        secret(&dir.join(SIGNING_SEED), &seed(&signing))?;
        secret(&dir.join(OUTSIDE_SIGNING_SEED), &seed(&outside_signing))?;
        secret(&dir.join(ENGINE_CREDS), &Credentials::format(&engine_jwt, Some(&seed(&engine))))?;
        secret(&dir.join(SYSTEM_CREDS), &Credentials::format(&system_jwt, Some(&seed(&system))))?;
        certificates(dir, hosts)?;
        let text = serde_json::to_string_pretty(&facts).expect("facts serialize");
        std::fs::write(dir.join(FACTS), text).map_err(io(&dir.join(FACTS)))?;
        let trust = Trust::load(dir)?;
        let config = trust.server_config(&dir.join("jwt"));
        std::fs::write(dir.join(SERVER_CONFIG), config).map_err(io(&dir.join(SERVER_CONFIG)))?;
        Ok(trust)
    }

    /// Loads the trust directory `dir`.
    pub fn load(dir: &Path) -> Result<Trust, TrustError> {
        let invalid = |reason: String| TrustError::Invalid { path: dir.display().to_string(), reason };
        let path = dir.join(FACTS);
        let facts: Facts = serde_json::from_slice(&std::fs::read(&path).map_err(io(&path))?)
            .map_err(|e| invalid(format!("{FACTS}: {e}")))?;
        let key = |name: &str| -> Result<Arc<KeyPair>, TrustError> {
            let path = dir.join(name);
            let text = std::fs::read_to_string(&path).map_err(io(&path))?;
            KeyPair::from_seed(text.trim()).map(Arc::new).map_err(|e| invalid(format!("{name}: {e}")))
        };
        let creds = |name: &str| {
            let path = dir.join(name);
            Credentials::read(&path, None)
                .map_err(|source| TrustError::Credentials { path: path.display().to_string(), source })
        };
        let (operator, signing, outside_signing) =
            (key(OPERATOR_SEED)?, key(SIGNING_SEED)?, key(OUTSIDE_SIGNING_SEED)?);
        if operator.public_key() != facts.operator
            || signing.public_key() != facts.signing_key
            || outside_signing.public_key() != facts.outside_signing_key
        {
            return Err(invalid("the keys are not the ones trust.json names".into()));
        }
        let (engine, system) = (creds(ENGINE_CREDS)?, creds(SYSTEM_CREDS)?);
        Ok(Trust { dir: dir.to_owned(), operator, outside_signing, facts, engine, system })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn facts(&self) -> &Facts {
        &self.facts
    }

    /// The certificate authority the server's certificate is checked against.
    pub fn ca(&self) -> PathBuf {
        self.dir.join(CA)
    }

    /// The servers' certificate and key, which the engine's API presents too unless given
    /// others: valid for the hosts `init` was given, signed by [`Trust::ca`].
    pub fn server_tls(dir: &Path) -> crate::ApiTls {
        crate::ApiTls { cert: dir.join(SERVER_CERT), key: dir.join(SERVER_KEY) }
    }

    /// Makes the servers' certificate anew, for `hosts` and with a new key, signed by the
    /// authority on file: clients that trust `ca.pem` trust it. nats-server takes it on a
    /// reload (SIGHUP), an engine's API on a restart.
    pub fn renew_server_certificate(&self, hosts: &[&str]) -> Result<(), TrustError> {
        let path = self.dir.join(CA_KEY);
        let pem = std::fs::read_to_string(&path).map_err(io(&path))?;
        let ca_key = rcgen::KeyPair::from_pem(&pem).map_err(certificate)?;
        let ca_cert = authority()?.self_signed(&ca_key).map_err(certificate)?;
        server_certificate(&self.dir, hosts, &ca_cert, &ca_key)
    }

    /// nats-server's configuration file, as `init` wrote it.
    pub fn server_config_file(&self) -> PathBuf {
        self.dir.join(SERVER_CONFIG)
    }

    /// The engine's credentials: its connection, and the key that signs its events.
    pub fn engine(&self) -> &Credentials {
        &self.engine
    }

    /// A connection to `servers` as the engine.
    pub fn engine_connection(&self, servers: &str) -> Connection {
        self.connection(servers, &self.engine, "engine")
    }

    /// A connection to `servers` as the system user, which carries account updates.
    pub fn system_connection(&self, servers: &str) -> Connection {
        self.connection(servers, &self.system, "engine (system)")
    }

    fn connection(&self, servers: &str, credentials: &Credentials, name: &str) -> Connection {
        Connection {
            servers: servers.to_owned(),
            credentials: Some(credentials.clone()),
            ca: Some(self.ca()),
            name: name.to_owned(),
            inbox_prefix: None,
        }
    }

    /// The configuration of a nats-server that trusts this operator, keeps account JWTs in
    /// `resolver_dir` and speaks TLS only. Listening address, port and JetStream store are
    /// given on its command line.
    pub fn server_config(&self, resolver_dir: &Path) -> String {
        let Facts {
            system_account,
            account,
            account_jwt,
            outside_account,
            outside_account_jwt,
            system_account_jwt,
            operator_jwt,
            ..
        } = &self.facts;
        let (cert, key) = (self.dir.join(SERVER_CERT), self.dir.join(SERVER_KEY));
        format!(
            "# Made by `engine trust init`. Users are minted by the engine and never listed here.\n\
             operator: \"{operator_jwt}\"\n\
             system_account: {system_account}\n\
             resolver: {{ type: full, dir: \"{resolver}\", allow_delete: false, interval: \"2m\", timeout: \"5s\" }}\n\
             resolver_preload: {{\n  {system_account}: \"{system_account_jwt}\"\n  {account}: \"{account_jwt}\"\n  {outside_account}: \"{outside_account_jwt}\"\n}}\n\
             tls {{ cert_file: \"{cert}\", key_file: \"{key}\", timeout: 5 }}\n\
             max_payload: {MAX_PAYLOAD}\n\
             max_pending: 64MB\n",
            resolver = resolver_dir.display(),
            cert = cert.display(),
            key = key.display(),
        )
    }

    /// A user JWT for `role` in the outside account, issued to `public_key`.
    pub fn mint(&self, role: &Role, public_key: &str) -> String {
        user(&self.outside_signing, &self.facts.outside_account, public_key, &role.name(), Some(&role.permissions()))
    }

    /// Credentials for `role` with a key made here: JWT and seed together.
    pub fn mint_with_key(&self, role: &Role) -> (String, String) {
        let key = KeyPair::new_user();
        let jwt = self.mint(role, &key.public_key());
        (key.public_key(), Credentials::format(&jwt, Some(&seed(&key))))
    }

    /// The outside account's JWT with `revoked` (user key to unix seconds: its JWTs issued up
    /// to then are refused).
    pub fn account_jwt(&self, revoked: &BTreeMap<String, i64>) -> String {
        outside_claims(&self.operator, &self.facts, revoked)
    }

    /// Sends the outside account's JWT with `revoked` to the servers through `system` (a connection
    /// made from [`Trust::system_connection`]). A connected user whose key is revoked is cut
    /// off at once.
    pub async fn push_account(
        &self,
        system: &async_nats::Client,
        revoked: &BTreeMap<String, i64>,
    ) -> Result<(), TrustError> {
        let subject = format!("$SYS.REQ.ACCOUNT.{}.CLAIMS.UPDATE", self.facts.outside_account);
        let request = system.request(subject, self.account_jwt(revoked).into());
        let reply = tokio::time::timeout(std::time::Duration::from_secs(10), request)
            .await
            .map_err(|_| TrustError::Push("no answer".into()))?
            .map_err(|e| TrustError::Push(e.to_string()))?;
        let answer: Value = serde_json::from_slice(&reply.payload).unwrap_or(Value::Null);
        match answer.pointer("/data/code").and_then(Value::as_u64) {
            Some(200) => Ok(()),
            _ => Err(TrustError::Push(String::from_utf8_lossy(&reply.payload).into_owned())),
        }
    }
}

fn seed(key: &KeyPair) -> String {
    key.seed().expect("a key made here has its seed")
}

/// Writes `text` to `path`, readable by its owner alone.
fn secret(path: &Path, text: &str) -> Result<(), TrustError> {
    bus::creds::write_secret(path, text).map_err(io(path))
}

fn base64url(bytes: impl AsRef<[u8]>) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A NATS JWT (`ed25519-nkey`) of `nats` claims about `subject`, signed by `issuer`.
// The claims are JSON objects made here: writing into them by key never panics.
#[allow(clippy::indexing_slicing)]
fn encode(issuer: &KeyPair, subject: &str, name: &str, nats: Value) -> String {
    let mut claims = json!({
        "iat": chrono::Utc::now().timestamp(),
        "iss": issuer.public_key(),
        "name": name,
        "sub": subject,
        "nats": nats,
    });
    // The id is a digest of the claims, as NATS's own tools make it.
    claims["jti"] = json!(hex::encode_upper(&Sha256::digest(claims.to_string().as_bytes())[..26]));
    let signing_input =
        format!("{}.{}", base64url(r#"{"typ":"JWT","alg":"ed25519-nkey"}"#), base64url(claims.to_string()));
    let signature = issuer.sign(signing_input.as_bytes()).expect("a key made here signs");
    format!("{signing_input}.{}", base64url(signature))
}

/// Account limits: everything unlimited, with JetStream on or off.
fn limits(jetstream: bool) -> Value {
    let storage = if jetstream { -1 } else { 0 };
    json!({
        "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1, "wildcards": true,
        "conn": -1, "leaf": -1,
        "mem_storage": storage, "disk_storage": storage, "streams": storage, "consumer": storage,
        "max_ack_pending": -1,
    })
}

/// What `EDGE` offers the outside account, as services: a request crossing accounts has its
/// reply subject replaced by the server, so no answer can land in a stream. Each is
/// `(subject in EDGE, subject outside, answered by a stream of messages)`.
fn services() -> Vec<(String, String, bool)> {
    let stream = events::subject::STREAM;
    let api =
        |rest: String, streamed: bool| (format!("$JS.API.{rest}"), format!("{}.{rest}", bus::OUTSIDE_API), streamed);
    let same = |subject: String| (subject.clone(), subject, false);
    vec![
        api(format!("CONSUMER.INFO.{stream}.*"), false),
        api(format!("CONSUMER.MSG.NEXT.{stream}.*"), true),
        api(format!("STREAM.INFO.{stream}"), false),
        api(format!("DIRECT.GET.{stream}"), true),
        api(format!("DIRECT.GET.{stream}.>"), true),
        same(format!("$JS.ACK.{stream}.>")),
        same(events::subject::node_reports("*", "*")),
        same(events::telemetry::subject("*", "*")),
    ]
}

#[allow(clippy::indexing_slicing)]
fn export(subject: &str, streamed: bool) -> Value {
    let mut export = json!({"name": subject, "subject": subject, "type": "service"});
    if streamed {
        export["response_type"] = json!("Stream");
    }
    export
}

fn import(subject: &str, local: &str, account: &str) -> Value {
    json!({"name": subject, "subject": subject, "local_subject": local, "account": account, "type": "service"})
}

/// The engine's account: the streams, the services it offers the outside, and the log
/// requests it sends there.
fn account_claims(operator: &KeyPair, facts: &Facts) -> String {
    let logs = events::logs::subject("*", "*");
    let nats = json!({
        "type": "account",
        "version": 2,
        "limits": limits(true),
        "signing_keys": [facts.signing_key],
        "default_permissions": {"pub": {}, "sub": {}},
        "exports": services().iter().map(|(subject, _, streamed)| export(subject, *streamed)).collect::<Vec<_>>(),
        "imports": [import(&logs, &logs, &facts.outside_account)],
    });
    encode(operator, &facts.account, ACCOUNT, nats)
}

/// The account of every other party: no JetStream of its own, the engine's services, and
/// the revoked user keys.
#[allow(clippy::indexing_slicing)]
fn outside_claims(operator: &KeyPair, facts: &Facts, revoked: &BTreeMap<String, i64>) -> String {
    let mut nats = json!({
        "type": "account",
        "version": 2,
        "limits": limits(false),
        "signing_keys": [facts.outside_signing_key],
        "default_permissions": {"pub": {}, "sub": {}},
        "exports": [export(&events::logs::subject("*", "*"), false)],
        "imports": services().iter().map(|(subject, local, _)| import(subject, local, &facts.account)).collect::<Vec<_>>(),
    });
    if !revoked.is_empty() {
        nats["revocations"] = json!(revoked);
    }
    encode(operator, &facts.outside_account, OUTSIDE, nats)
}

/// A user of the account, signed by its signing key; no permissions means all of them.
#[allow(clippy::indexing_slicing)]
fn user(signing: &KeyPair, account: &str, public_key: &str, name: &str, permissions: Option<&Permissions>) -> String {
    let mut nats = json!({
        "type": "user", "version": 2,
        "subs": -1, "data": -1, "payload": -1,
        "issuer_account": account,
        // Without the seed the JWT is worth nothing.
        "bearer_token": false,
        "pub": {}, "sub": {},
    });
    if let Some(permissions) = permissions {
        nats["pub"] = json!({"allow": permissions.publish});
        nats["sub"] = json!({"allow": permissions.subscribe});
        if permissions.respond {
            nats["resp"] = json!({"max": 1, "ttl": 0});
        }
    }
    encode(signing, public_key, name, nats)
}

/// A certificate authority, and a server certificate it signed for `hosts`.
/// The certificate authority's description: made once by `init`, and again with its key to
/// sign a renewed server certificate (the same name and key: what it signs chains to `ca.pem`).
fn authority() -> Result<rcgen::CertificateParams, TrustError> {
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(certificate)?;
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name.push(rcgen::DnType::CommonName, "edge-orchestrator local CA");
    ca.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    Ok(ca)
}

fn certificate(e: rcgen::Error) -> TrustError {
    TrustError::Certificate(e.to_string())
}

/// Writes a server certificate for `hosts` with a new key, signed by the authority, into `dir`:
/// the key first, each file whole (written aside, then moved), so a server reading them finds
/// the old pair or the new one.
fn server_certificate(
    dir: &Path,
    hosts: &[&str],
    ca_cert: &rcgen::Certificate,
    ca_key: &rcgen::KeyPair,
) -> Result<(), TrustError> {
    let names: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
    let mut server = rcgen::CertificateParams::new(names).map_err(certificate)?;
    server.distinguished_name.push(rcgen::DnType::CommonName, "nats-server");
    // A client's too: the members of a cluster present it to one another on their routes.
    server.extended_key_usages =
        vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let server_key = rcgen::KeyPair::generate().map_err(certificate)?;
    let server_cert = server.signed_by(&server_key, ca_cert, ca_key).map_err(certificate)?;
    let aside = |name: &str| dir.join(format!(".{name}.new"));
    secret(&aside(SERVER_KEY), &server_key.serialize_pem())?;
    std::fs::write(aside(SERVER_CERT), server_cert.pem()).map_err(io(&aside(SERVER_CERT)))?;
    for name in [SERVER_KEY, SERVER_CERT] {
        std::fs::rename(aside(name), dir.join(name)).map_err(io(&dir.join(name)))?;
    }
    Ok(())
}

fn certificates(dir: &Path, hosts: &[&str]) -> Result<(), TrustError> {
    let ca_key = rcgen::KeyPair::generate().map_err(certificate)?;
    let ca_cert = authority()?.self_signed(&ca_key).map_err(certificate)?;
    std::fs::write(dir.join(CA), ca_cert.pem()).map_err(io(&dir.join(CA)))?;
    secret(&dir.join(CA_KEY), &ca_key.serialize_pem())?;
    server_certificate(dir, hosts, &ca_cert, &ca_key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_makes_a_directory_that_loads_again_with_secrets_kept_private() {
        let dir = tempfile::tempdir().unwrap();
        let made = Trust::init(dir.path(), &["127.0.0.1", "localhost"]).unwrap();
        let loaded = Trust::init(dir.path(), &["127.0.0.1"]).unwrap();
        assert_eq!(made.facts(), loaded.facts());
        use std::os::unix::fs::PermissionsExt;
        for name in [OPERATOR_SEED, SIGNING_SEED, OUTSIDE_SIGNING_SEED, ENGINE_CREDS, SYSTEM_CREDS, CA_KEY, SERVER_KEY]
        {
            let mode = std::fs::metadata(dir.path().join(name)).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "{name} is readable by others");
        }
        let config = std::fs::read_to_string(made.server_config_file()).unwrap();
        assert!(config.contains("resolver: { type: full") && config.contains("tls {"), "{config}");
        assert!(!config.contains(&made.engine().public_key()), "users are never listed in the configuration");
    }

    #[test]
    fn a_node_jwt_carries_its_own_subjects_only() {
        let dir = tempfile::tempdir().unwrap();
        let trust = Trust::init(dir.path(), &["127.0.0.1"]).unwrap();
        let role = Role::Node { tenant: "acme".into(), node: "n1".into() };
        let key = KeyPair::new_user();
        let claims = bus::creds::jwt_claims(&trust.mint(&role, &key.public_key())).unwrap();
        assert_eq!(claims["sub"], key.public_key());
        assert_eq!(claims["iss"], trust.facts().outside_signing_key);
        assert_eq!(claims["nats"]["issuer_account"], trust.facts().outside_account);
        assert_eq!(claims["nats"]["bearer_token"], false);
        let publish: Vec<&str> =
            claims["nats"]["pub"]["allow"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        assert!(publish.contains(&"ev.acme.node.n1.state"), "{publish:?}");
        assert!(publish.iter().all(|s| !s.contains("n2") && !s.contains("CREATE") && !s.contains("DIRECT")));
        assert_eq!(claims["nats"]["sub"]["allow"], json!(["_INBOX_node.acme.n1.>", "logs.acme.n1"]));
    }

    #[test]
    fn a_jwt_verifies_under_its_issuer() {
        let key = KeyPair::new_account();
        let jwt = encode(&key, "subject", "name", json!({"type": "user"}));
        let (input, signature) = jwt.rsplit_once('.').unwrap();
        let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(signature).unwrap();
        key.verify(input.as_bytes(), &signature).unwrap();
    }
}
