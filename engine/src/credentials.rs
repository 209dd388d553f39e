//! Credentials on the bus: a node's enrollment (a credential for a key made here, or for the
//! public key of a key pair the node made itself), its key's rotation and its revocation, each
//! an event of the node; and read-only credentials for subscribers and auditors.
//!
//! The worker [`run`] carries out what those events mean for nats-server: it makes each
//! enrolled node's durable consumer (a node may read its consumer, never make one), and after
//! a rotation or a revocation it pushes the outside account's JWT with every revoked key,
//! which cuts the holder off at once. A revoked node's deployments are told so. A subscriber's
//! consumer is made when its credential is issued.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer;

use events::deployment::{Deployment, DeploymentCommand};
use events::node::{Labels, Node, NodeCommand, NodeEvent, NodeRejection};

use crate::command::{CommandError, CommandHandler, CommandMeta};
use crate::read_model::{Deployments, Nodes};
use crate::trust::{Role, Trust};
use bus::store::{EventStore, StoredEvent};

/// How long the worker waits for the nodes read model to fold an event it acts on.
const READ_MODEL_WAIT: Duration = Duration::from_secs(30);
/// How often the whole revocation list is sent again.
const REPUSH: Duration = Duration::from_secs(60);
/// How long a work message waits for a node's ack before it is sent again.
pub const NODE_ACK_WAIT: Duration = Duration::from_secs(2);

/// Issues credentials: the engine's half of enrollment.
#[derive(Debug, Clone)]
pub struct Issuer {
    trust: Arc<Trust>,
    commands: CommandHandler,
    nodes: Nodes,
}

/// A node's credential, as the caller gets it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Enrollment {
    pub node: String,
    pub tenant: String,
    pub public_key: String,
    /// The credentials file: the JWT, and the seed when the key was made here.
    pub creds: String,
}

/// A reader's credential.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReaderCredential {
    pub role: String,
    pub public_key: String,
    /// The consumer it reads through, for a subscriber.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consumer: Option<String>,
    /// The prefix its connection must use for replies.
    pub inbox_prefix: String,
    pub creds: String,
}

impl Issuer {
    pub fn new(trust: Arc<Trust>, commands: CommandHandler, nodes: Nodes) -> Issuer {
        Issuer { trust, commands, nodes }
    }

    pub fn trust(&self) -> &Trust {
        &self.trust
    }

    /// Enrolls `node` of `meta.tenant`: with `public_key`, the node's own key, whose seed never
    /// leaves it; without, with a key made here. Enrolling an enrolled node again with a new
    /// key rotates it: the old key is revoked.
    pub async fn enroll(
        &self,
        node: &str,
        labels: Labels,
        public_key: Option<String>,
        meta: &CommandMeta,
    ) -> Result<Enrollment, CommandError<NodeRejection>> {
        let role = Role::Node { tenant: meta.tenant.clone(), node: node.to_owned() };
        let (public_key, creds) = match public_key {
            Some(key) => (key.clone(), None),
            None => {
                let (key, creds) = self.trust.mint_with_key(&role);
                (key, Some(creds))
            }
        };
        // A key belongs to one node, ever: revocations are by key, account-wide.
        let holder = self.nodes.holder(&public_key).map_err(|e| {
            bus::store::StoreError::from(bus::store::ReadError::Failed {
                what: "the keys held".into(),
                reason: format!("{e:#}"),
            })
        })?;
        let taken = holder.is_some_and(|h| !(h.tenant == meta.tenant && h.node == node));
        if taken {
            return Err(CommandError::Rejected(NodeRejection::KeyInUse(public_key)));
        }
        let command = NodeCommand::Enroll { public_key: public_key.clone(), labels };
        self.commands.execute::<Node>(node, &command, meta).await?;
        let creds = creds.unwrap_or_else(|| bus::Credentials::format(&self.trust.mint(&role, &public_key), None));
        Ok(Enrollment { node: node.to_owned(), tenant: meta.tenant.clone(), public_key, creds })
    }

    /// Revokes `node`'s credential; returns the key revoked.
    pub async fn revoke(&self, node: &str, meta: &CommandMeta) -> Result<String, CommandError<NodeRejection>> {
        self.commands.execute::<Node>(node, &NodeCommand::Revoke, meta).await?;
        let node: Node = self.commands.state(&meta.tenant, node).await?;
        Ok(node.revoked_keys.last().cloned().unwrap_or_default())
    }

    /// A read-only credential: a subscriber of one tenant, with its durable consumer of the
    /// tenant's events (made here: whoever makes a consumer chooses where it delivers), or an
    /// auditor of all.
    pub async fn reader(&self, role: &Role) -> Result<ReaderCredential, bus::store::ConsumeError> {
        if let Role::Subscriber { tenant, .. } = role {
            let name = role.consumer().expect("a subscriber reads through a consumer");
            let config = consumer::pull::Config {
                durable_name: Some(name.clone()),
                filter_subject: events::subject::tenant_events(tenant),
                ack_policy: consumer::AckPolicy::Explicit,
                ..Default::default()
            };
            durable(self.commands.store(), &name, config).await?;
        }
        let (public_key, creds) = self.trust.mint_with_key(role);
        let kind = match role {
            Role::Node { .. } => "node",
            Role::Subscriber { .. } => "subscriber",
            Role::Auditor { .. } => "auditor",
        };
        Ok(ReaderCredential {
            role: kind.to_owned(),
            public_key,
            consumer: role.consumer(),
            inbox_prefix: role.inbox_prefix(),
            creds,
        })
    }
}

/// The durable consumer of `node`'s work, made if missing.
pub async fn node_consumer(store: &EventStore, tenant: &str, node: &str) -> Result<(), bus::store::ConsumeError> {
    let name = events::subject::node_consumer(tenant, node);
    let config = consumer::pull::Config {
        durable_name: Some(name.clone()),
        filter_subject: events::subject::node_desired(tenant, node),
        ack_policy: consumer::AckPolicy::Explicit,
        // Work the link lost on its way is sent again soon after the link is back.
        ack_wait: NODE_ACK_WAIT,
        // Many pieces in flight: a node that was cut off takes what it missed in a few round
        // trips. What the link lost comes again behind later work, and the node folds each
        // deployment's work in stream order whatever order it arrives in (`edge_node::desired`).
        max_ack_pending: events::work::IN_FLIGHT as i64,
        ..Default::default()
    };
    durable(store, &name, config).await
}

/// The durable consumer `name`, made with `config` if missing.
async fn durable(
    store: &EventStore,
    name: &str,
    config: consumer::pull::Config,
) -> Result<(), bus::store::ConsumeError> {
    store
        .consumers()
        .get_or_create_consumer(name, config)
        .await
        .map(|_| ())
        .map_err(|e| bus::store::ConsumeError { consumer: name.to_owned(), reason: e.to_string() })
}

/// Every revoked key, with when it was revoked, deleted tenants' included.
fn revocations(nodes: &Nodes) -> anyhow::Result<BTreeMap<String, i64>> {
    nodes.revoked()
}

/// Carries out enrollments, rotations and revocations on the bus.
pub async fn run(
    commands: CommandHandler,
    deployments: Deployments,
    nodes: Nodes,
    trust: Arc<Trust>,
    system: async_nats::Client,
    keys: Arc<crate::worker::NodeKeys>,
) -> anyhow::Result<()> {
    let store = commands.store().clone();
    // The servers keep the revocations (the full resolver), but a push can be lost, and two
    // engines may push lists of different ages: the whole list is sent again every minute,
    // once the read model has folded the whole log so far (a shorter list would let a revoked
    // key in again).
    let start = store.last_sequence().await?;
    let repush = async {
        while !crate::projector::wait_for(nodes.tree(), start, READ_MODEL_WAIT).await? {
            tracing::warn!(start, "waiting for the nodes read model before sending the revocations");
        }
        let mut every = tokio::time::interval(REPUSH);
        loop {
            every.tick().await;
            let pushed = match revocations(&nodes) {
                Ok(revoked) => trust.push_account(&system, &revoked).await.map_err(anyhow::Error::from),
                Err(e) => Err(e),
            };
            if let Err(e) = pushed {
                tracing::warn!(error = format!("{e:#}"), "sending the revocations again");
            }
        }
    };
    let carried = crate::worker::consume(&store, "credentials", events::subject::ALL_NODES, |_, event| {
        carry_out(&commands, &deployments, &nodes, &trust, &system, &keys, event)
    });
    tokio::select! {
        ended = repush => ended,
        ended = carried => ended,
    }
}

async fn carry_out(
    commands: &CommandHandler,
    deployments: &Deployments,
    nodes: &Nodes,
    trust: &Trust,
    system: &async_nats::Client,
    keys: &crate::worker::NodeKeys,
    stored: StoredEvent,
) -> anyhow::Result<()> {
    let envelope = &stored.envelope;
    let (tenant, node) = (envelope.tenant.as_str(), envelope.aggregate_id.as_str());
    match envelope.event::<NodeEvent>()? {
        NodeEvent::Enrolled { .. } => node_consumer(commands.store(), tenant, node).await?,
        NodeEvent::KeyRotated { .. } | NodeEvent::Revoked { .. } => {
            keys.forget(tenant, node);
            if !crate::projector::wait_for(nodes.tree(), stored.sequence, READ_MODEL_WAIT).await? {
                anyhow::bail!("the nodes read model has not folded event {} yet", stored.sequence);
            }
            trust.push_account(system, &revocations(nodes)?).await?;
            tracing::info!(tenant, node, "revocations sent to the servers");
        }
        // A Margo device holds no NATS key: its deployments are told, as of a revoked node's.
        NodeEvent::MargoUnregistered { .. } => {}
        _ => return Ok(()),
    }
    let event = envelope.event::<NodeEvent>()?;
    if let NodeEvent::Revoked { .. } = event {
        use async_nats::jetstream::stream::ConsumerErrorKind as consumer_error;
        // Its work consumer goes with it: nothing is held on the server for a node that is cut
        // off. A node enrolled again gets a new one, from the start of its work.
        let name = events::subject::node_consumer(tenant, node);
        match commands.store().consumers().delete_consumer(&name).await {
            Ok(_) => tracing::info!(tenant, node, "the revoked node's consumer is removed"),
            Err(e)
                if matches!(
                    e.kind(),
                    consumer_error::JetStream(ref js) if js.error_code() == async_nats::jetstream::ErrorCode::CONSUMER_NOT_FOUND
                ) => {}
            Err(e) => anyhow::bail!("removing the consumer of revoked node {node}: {e}"),
        }
    }
    if let NodeEvent::Revoked { .. } | NodeEvent::MargoUnregistered { .. } = event {
        let meta = CommandMeta {
            actor: envelope.actor.clone(),
            correlation_id: envelope.correlation_id,
            command_id: uuid::Uuid::new_v5(&envelope.id, b"node revoked"),
            tenant: tenant.to_owned(),
        };
        for view in deployments.all_of(tenant)?.into_iter().filter(|d| d.nodes.contains_key(node)) {
            let command = DeploymentCommand::MarkNodeRevoked { node: node.to_owned() };
            let meta =
                CommandMeta { command_id: uuid::Uuid::new_v5(&meta.command_id, view.id.as_bytes()), ..meta.clone() };
            match commands.execute::<Deployment>(&view.id, &command, &meta).await {
                Ok(_) | Err(CommandError::Rejected(_)) => {}
                Err(e) => anyhow::bail!("telling deployment {} of the revocation: {e}", view.id),
            }
        }
    }
    Ok(())
}
