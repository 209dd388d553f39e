//! The read models in sled (deployments, update notifications, nodes): their projections,
//! each the pure fold of `events::projection`, and their queries.
//!
//! - `deployments` folds deployment events: one view per deployment, with each node's status.
//! - `nodes` folds node events: labels and state, which resolve a selector at launch.
//! - `notifications` folds application and deployment events: per application, its newest
//!   published version and its live deployments; a deployment on an older version shows a
//!   notification until it is updated or uninstalled.
//!
//! Every projection forgets a tenant's keys on `tenant.deleted`. A deployment's view is one
//! JSON value, written whole with each batch that changes it: on ten thousand nodes, a few
//! megabytes per batch.

use events::application::ApplicationEvent;
use events::deployment::DeploymentEvent;
use events::deployment_node::DeploymentNodeEvent;
use events::node::NodeEvent;
use events::projection::deployments::{self, DeploymentView};
use events::projection::nodes::NodeRecord;
use events::projection::notifications::{ApplicationUpdates, Notification};
use events::Status;

use crate::projector::{Overlay, Projection, ProjectionError};
use bus::store::StoredEvent;

/// For a tenant event: forgets everything of that tenant under each of `prefixes` (the tenant
/// follows the prefix in every key) and says it handled the event.
fn forget_deleted_tenant(
    batch: &mut Overlay<'_>,
    envelope: &events::Envelope,
    prefixes: &[&str],
) -> Result<bool, ProjectionError> {
    if envelope.aggregate_type != <events::tenant::Tenant as events::Aggregate>::TYPE {
        return Ok(false);
    }
    let events::tenant::TenantEvent::Deleted { .. } = envelope.event()? else { return Ok(true) };
    for prefix in prefixes {
        batch.remove_prefix(format!("{prefix}{}/", envelope.tenant).as_bytes())?;
    }
    Ok(true)
}

/// One page of a listing, and the cursor of the next one.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Deployments {
    tree: sled::Tree,
}

fn key(tenant: &str, id: &str) -> Vec<u8> {
    format!("d/{tenant}/{id}").into_bytes()
}

impl Deployments {
    pub fn open(db: &sled::Db) -> sled::Result<Deployments> {
        Ok(Deployments { tree: db.open_tree(<Deployments as Projection>::NAME)? })
    }

    pub fn tree(&self) -> &sled::Tree {
        &self.tree
    }

    pub fn get(&self, tenant: &str, id: &str) -> anyhow::Result<Option<DeploymentView>> {
        self.tree.get(key(tenant, id))?.map(|v| Ok(serde_json::from_slice(&v)?)).transpose()
    }

    /// A deployment's status (the most severe of its nodes') and version, without decoding
    /// each node: cheap to ask often of a deployment on many nodes.
    pub fn status(&self, tenant: &str, id: &str) -> anyhow::Result<Option<(Status, String)>> {
        #[derive(serde::Deserialize)]
        struct Header {
            status: Status,
            version: String,
        }
        let header = self.tree.get(key(tenant, id))?.map(|v| serde_json::from_slice::<Header>(&v)).transpose()?;
        Ok(header.map(|h| (h.status, h.version)))
    }

    /// Deployments of `tenant` that `wanted` keeps, in launch order (ids are UUID v7), `limit` a
    /// page, after `cursor`.
    pub fn list(
        &self,
        tenant: &str,
        cursor: Option<&str>,
        limit: usize,
        wanted: impl Fn(&DeploymentView) -> bool,
    ) -> anyhow::Result<Page<DeploymentView>> {
        let prefix = key(tenant, "");
        let start = match cursor {
            Some(c) => {
                let mut k = key(tenant, c);
                k.push(0);
                k
            }
            None => prefix.clone(),
        };
        let mut items = Vec::with_capacity(limit);
        let mut more = false;
        for entry in self.tree.range(start..) {
            let (k, v) = entry?;
            if !k.starts_with(&prefix) {
                break;
            }
            let view = serde_json::from_slice::<DeploymentView>(&v)?;
            if !wanted(&view) {
                continue;
            }
            if items.len() == limit {
                more = true;
                break;
            }
            items.push(view);
        }
        let next_cursor = if more { items.last().map(|d| d.id.clone()) } else { None };
        Ok(Page { items, next_cursor })
    }

    /// Every view of `tenant`, in launch order.
    pub fn all_of(&self, tenant: &str) -> anyhow::Result<Vec<DeploymentView>> {
        self.tree.scan_prefix(key(tenant, "")).map(|e| Ok(serde_json::from_slice(&e?.1)?)).collect()
    }

    /// Every view of every tenant, in key order: what a rebuild must reproduce.
    pub fn all(&self) -> anyhow::Result<Vec<DeploymentView>> {
        self.tree.scan_prefix(b"d/").map(|e| Ok(serde_json::from_slice(&e?.1)?)).collect()
    }
}

impl Projection for Deployments {
    const NAME: &'static str = "deployments";

    fn subjects(&self) -> Vec<String> {
        vec![events::subject::ALL_AGGREGATES.to_owned(), events::subject::ALL_DEPLOYMENT_NODES.to_owned()]
    }

    fn apply(&self, batch: &mut Overlay<'_>, stored: &StoredEvent) -> Result<(), ProjectionError> {
        let envelope = &stored.envelope;
        if forget_deleted_tenant(batch, envelope, &["d/"])? {
            return Ok(());
        }
        let view = match envelope.aggregate_type.as_str() {
            "deployment" => {
                let event: DeploymentEvent = envelope.event()?;
                let key = key(&envelope.tenant, &envelope.aggregate_id);
                (deployments::apply(batch.take_json::<DeploymentView>(&key)?, envelope, &event), key)
            }
            events::deployment_node::TYPE => {
                let Some((deployment, node)) = events::deployment_node::split(&envelope.aggregate_id) else {
                    return Ok(());
                };
                let event: DeploymentNodeEvent = envelope.event()?;
                let key = key(&envelope.tenant, deployment);
                (deployments::apply_node(batch.take_json::<DeploymentView>(&key)?, envelope, node, &event), key)
            }
            _ => return Ok(()),
        };
        // A fold that shows nothing (an event before its launch) leaves the model as it is.
        if let (Some(view), key) = view {
            batch.put_json(key, view);
        }
        Ok(())
    }
}

/// The update notifications read model: per application, its newest published version and
/// its live deployments (`a/<tenant>/<application>`), and which application each deployment
/// belongs to (`d/<tenant>/<deployment>`).
#[derive(Debug, Clone)]
pub struct Notifications {
    tree: sled::Tree,
}

impl Notifications {
    pub fn open(db: &sled::Db) -> sled::Result<Notifications> {
        Ok(Notifications { tree: db.open_tree(<Notifications as Projection>::NAME)? })
    }

    pub fn tree(&self) -> &sled::Tree {
        &self.tree
    }

    /// The notifications of `tenant`, by deployment id, `limit` a page, after `cursor`.
    pub fn list(&self, tenant: &str, cursor: Option<&str>, limit: usize) -> anyhow::Result<Page<Notification>> {
        let mut all = Vec::new();
        for entry in self.tree.scan_prefix(format!("a/{tenant}/")) {
            let (key, value) = entry?;
            let application = String::from_utf8_lossy(&key).rsplit('/').next().unwrap_or_default().to_owned();
            let updates: ApplicationUpdates = serde_json::from_slice(&value)?;
            all.extend(updates.notifications(&application));
        }
        all.sort_by(|a, b| a.deployment.cmp(&b.deployment));
        let mut items: Vec<Notification> =
            all.into_iter().filter(|n| cursor.is_none_or(|c| n.deployment.as_str() > c)).take(limit + 1).collect();
        let next_cursor = if items.len() > limit {
            items.truncate(limit);
            items.last().map(|n| n.deployment.clone())
        } else {
            None
        };
        Ok(Page { items, next_cursor })
    }
}

/// An event routed to the application it concerns.
enum Change {
    Application(ApplicationEvent),
    Deployment(DeploymentEvent),
}

impl Projection for Notifications {
    const NAME: &'static str = "notifications";

    fn subjects(&self) -> Vec<String> {
        vec![events::subject::ALL_AGGREGATES.to_owned()]
    }

    fn apply(&self, batch: &mut Overlay<'_>, stored: &StoredEvent) -> Result<(), ProjectionError> {
        let envelope = &stored.envelope;
        let relevant = matches!(envelope.aggregate_type.as_str(), "application" | "deployment");
        if forget_deleted_tenant(batch, envelope, &["a/", "d/"])? || !relevant {
            return Ok(());
        }
        let tenant = &envelope.tenant;
        let (application, change) = match envelope.aggregate_type.as_str() {
            "application" => (envelope.aggregate_id.clone(), Change::Application(envelope.event()?)),
            _ => {
                let event: DeploymentEvent = envelope.event()?;
                let index = format!("d/{tenant}/{}", envelope.aggregate_id).into_bytes();
                let application = match &event {
                    DeploymentEvent::Launched { application, .. } => {
                        batch.insert(index, application.clone().into_bytes());
                        application.clone()
                    }
                    _ => match batch.get(&index)? {
                        Some(name) => String::from_utf8_lossy(&name).into_owned(),
                        None => return Ok(()),
                    },
                };
                (application, Change::Deployment(event))
            }
        };
        let key = format!("a/{tenant}/{application}").into_bytes();
        let mut updates = batch.take_json::<ApplicationUpdates>(&key)?.unwrap_or_default();
        match change {
            Change::Application(event) => updates.apply_application(&event),
            Change::Deployment(event) => updates.apply_deployment(&envelope.aggregate_id, &event),
        }
        batch.put_json(key, updates);
        Ok(())
    }
}

/// The nodes read model: `n/<tenant>/<node>`; and `r/<key>`, every key ever revoked with when
/// (unix seconds), which a tenant's deletion does not forget.
#[derive(Debug, Clone)]
pub struct Nodes {
    tree: sled::Tree,
}

impl Nodes {
    pub fn open(db: &sled::Db) -> sled::Result<Nodes> {
        Ok(Nodes { tree: db.open_tree(<Nodes as Projection>::NAME)? })
    }

    pub fn tree(&self) -> &sled::Tree {
        &self.tree
    }

    /// Every node of every tenant.
    pub fn all(&self) -> anyhow::Result<Vec<NodeRecord>> {
        self.tree.scan_prefix(b"n/").map(|e| Ok(serde_json::from_slice(&e?.1)?)).collect()
    }

    /// Every key ever revoked, with when: what the servers must refuse.
    pub fn revoked(&self) -> anyhow::Result<std::collections::BTreeMap<String, i64>> {
        self.tree
            .scan_prefix(b"r/")
            .map(|e| {
                let (key, at) = e?;
                let key = String::from_utf8_lossy(&key[2..]).into_owned();
                Ok((key, serde_json::from_slice(&at)?))
            })
            .collect()
    }

    /// Every node of `tenant`, by id.
    pub fn all_of(&self, tenant: &str) -> anyhow::Result<Vec<NodeRecord>> {
        self.tree.scan_prefix(format!("n/{tenant}/")).map(|e| Ok(serde_json::from_slice(&e?.1)?)).collect()
    }
}

impl Projection for Nodes {
    const NAME: &'static str = "nodes";

    fn subjects(&self) -> Vec<String> {
        vec![events::subject::ALL_AGGREGATES.to_owned()]
    }

    fn apply(&self, batch: &mut Overlay<'_>, stored: &StoredEvent) -> Result<(), ProjectionError> {
        let envelope = &stored.envelope;
        // The server refuses the key's JWTs issued at or before this second: one more, so that a
        // JWT minted in the second of its revocation is refused too.
        let revoke = |batch: &mut Overlay<'_>, key: &str| {
            let until = envelope.time.timestamp() + 1;
            batch.insert(format!("r/{key}").into_bytes(), until.to_string().into_bytes())
        };
        if forget_deleted_tenant(batch, envelope, &["n/"])? || envelope.aggregate_type != "node" {
            return Ok(());
        }
        let event: NodeEvent = envelope.event()?;
        match &event {
            NodeEvent::KeyRotated { previous: key, .. } | NodeEvent::Revoked { public_key: key } => revoke(batch, key),
            _ => {}
        }
        let key = format!("n/{}/{}", envelope.tenant, envelope.aggregate_id).into_bytes();
        let current = match batch.get(&key)? {
            Some(bytes) => Some(serde_json::from_slice::<NodeRecord>(&bytes)?),
            None => None,
        };
        if let Some(record) = events::projection::nodes::apply(current, envelope, &event) {
            batch.insert(key, serde_json::to_vec(&record)?);
        }
        Ok(())
    }
}
