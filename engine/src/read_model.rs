//! The read models' queries. The models themselves (their keys, their folds, what a tenant's
//! deletion clears) are declared in `events::projection`, and the projector keeps them all in
//! one sled tree ([`open`]), under one checkpoint.
//!
//! - `deployments`: a header per deployment (its view without its nodes, and how many nodes
//!   are in each status) and a value per node: a report rewrites one node and the header, never
//!   the whole deployment. A view is put together from both when asked.
//! - `nodes`: labels and state, which resolve a selector at launch; every key ever revoked.
//! - `notifications`: per application, its newest published version and its live
//!   deployments; a deployment on an older version shows a notification until it is updated
//!   or uninstalled.
//! - `catalog`: each application, its name and its versions, draft or published.

use events::projection::catalog::CatalogEntry;
use events::projection::deployments::{self, DeploymentView, Header};
use events::projection::nodes::NodeRecord;
use events::projection::notifications::{ApplicationUpdates, Notification};
use events::Status;

use crate::projector::Overlay;

/// The tree of every read model.
pub const TREE: &str = "models";

/// Which read models the tree holds: a tree written by an engine that kept others is cleared,
/// and the projector folds the log again from its start.
const MODELS: &[u8] = b"deployments nodes(keys held) notifications(published versions, targets) catalog(withdrawn)";
const MODELS_KEY: &[u8] = b"meta/models";

/// The read models' tree in `db`. The trees of an engine that kept each model apart are
/// dropped, and a tree of other models cleared: the projector folds the log again from its
/// start into this one.
pub fn open(db: &sled::Db) -> sled::Result<sled::Tree> {
    for old in ["deployments", "notifications", "nodes"] {
        db.drop_tree(old)?;
    }
    let tree = db.open_tree(TREE)?;
    if tree.get(MODELS_KEY)?.as_deref() != Some(MODELS) {
        tree.clear()?;
        tree.insert(MODELS_KEY, MODELS)?;
        tree.flush()?;
    }
    Ok(tree)
}

/// A page of the values under `prefix` that `wanted` keeps, in key order, after the key
/// `prefix` + `cursor`; the next cursor is the last key's part after `prefix`.
fn page<T: serde::de::DeserializeOwned>(
    tree: &sled::Tree,
    prefix: &str,
    cursor: Option<&str>,
    limit: usize,
    wanted: impl Fn(&T) -> bool,
) -> anyhow::Result<Page<T>> {
    let start = match cursor {
        Some(c) => {
            let mut k = format!("{prefix}{c}").into_bytes();
            k.push(0);
            k
        }
        None => prefix.as_bytes().to_vec(),
    };
    let mut items = Vec::with_capacity(limit);
    let mut last = None;
    let mut more = false;
    for entry in tree.range(start..) {
        let (k, v) = entry?;
        if !k.starts_with(prefix.as_bytes()) {
            break;
        }
        let value = serde_json::from_slice::<T>(&v)?;
        if !wanted(&value) {
            continue;
        }
        if items.len() == limit {
            more = true;
            break;
        }
        items.push(value);
        last = Some(k);
    }
    let next_cursor = if more {
        last.and_then(|k| k.get(prefix.len()..).map(|c| String::from_utf8_lossy(c).into_owned()))
    } else {
        None
    };
    Ok(Page { items, next_cursor })
}

/// One page of a listing, and the cursor of the next one.
#[derive(Debug, Clone, PartialEq, serde::Serialize, utoipa::ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Deployments {
    tree: sled::Tree,
}

impl Deployments {
    pub fn new(tree: sled::Tree) -> Deployments {
        Deployments { tree }
    }

    pub fn tree(&self) -> &sled::Tree {
        &self.tree
    }

    pub fn get(&self, tenant: &str, id: &str) -> anyhow::Result<Option<DeploymentView>> {
        Ok(deployments::view(&mut Overlay::new(&self.tree), tenant, id)?)
    }

    /// A deployment's status (the most severe of its nodes') and version, from its header
    /// alone: cheap to ask often of a deployment on many nodes.
    pub fn status(&self, tenant: &str, id: &str) -> anyhow::Result<Option<(Status, String)>> {
        #[derive(serde::Deserialize)]
        struct Header {
            view: Seen,
        }
        #[derive(serde::Deserialize)]
        struct Seen {
            status: Status,
            version: String,
        }
        let key = deployments::key(tenant, id);
        let header = self.tree.get(key)?.map(|v| serde_json::from_slice::<Header>(&v)).transpose()?;
        Ok(header.map(|h| (h.view.status, h.view.version)))
    }

    /// Deployments of `tenant` that `wanted` keeps (looking at each without its nodes), in
    /// launch order (ids are UUID v7), `limit` a page, after `cursor`.
    pub fn list(
        &self,
        tenant: &str,
        cursor: Option<&str>,
        limit: usize,
        wanted: impl Fn(&DeploymentView) -> bool,
    ) -> anyhow::Result<Page<DeploymentView>> {
        let headers = page(&self.tree, &deployments::key(tenant, ""), cursor, limit, |h: &Header| wanted(&h.view))?;
        let ids: Vec<String> = headers.items.into_iter().map(|h| h.view.id).collect();
        Ok(Page { items: self.views(tenant, &ids)?, next_cursor: headers.next_cursor })
    }

    fn views(&self, tenant: &str, ids: &[String]) -> anyhow::Result<Vec<DeploymentView>> {
        let mut views = Vec::with_capacity(ids.len());
        for id in ids {
            views.extend(self.get(tenant, id)?);
        }
        Ok(views)
    }

    /// Whether deployment `id` of `tenant` has (or had) `node` among its nodes.
    pub fn targets(&self, tenant: &str, id: &str, node: &str) -> anyhow::Result<bool> {
        let key = format!("{}{node}", deployments::nodes_prefix(tenant, id));
        Ok(self.tree.contains_key(key)?)
    }

    /// How many deployments of `tenant` are in each status, from their headers alone (no node
    /// entry is read): cheap to ask at every scrape.
    pub fn count_by_status(&self, tenant: &str) -> anyhow::Result<std::collections::BTreeMap<Status, u64>> {
        let mut counts = std::collections::BTreeMap::<Status, u64>::new();
        for entry in self.tree.scan_prefix(deployments::key(tenant, "")) {
            let header = serde_json::from_slice::<Header>(&entry?.1)?;
            let count = counts.entry(header.view.status).or_default();
            *count = count.saturating_add(1);
        }
        Ok(counts)
    }

    /// Every view of `tenant`, in launch order.
    pub fn all_of(&self, tenant: &str) -> anyhow::Result<Vec<DeploymentView>> {
        let mut views = Vec::new();
        for entry in self.tree.scan_prefix(deployments::key(tenant, "")) {
            let header = serde_json::from_slice::<Header>(&entry?.1)?;
            views.extend(self.get(&header.view.tenant, &header.view.id)?);
        }
        Ok(views)
    }

    /// Every view of every tenant, in key order: what a rebuild must reproduce.
    pub fn all(&self) -> anyhow::Result<Vec<DeploymentView>> {
        let mut views = Vec::new();
        for entry in self.tree.scan_prefix(b"d/") {
            let header = serde_json::from_slice::<Header>(&entry?.1)?;
            views.extend(self.get(&header.view.tenant, &header.view.id)?);
        }
        Ok(views)
    }
}

/// The catalog read model: each application, its name and versions.
#[derive(Debug, Clone)]
pub struct Catalog {
    tree: sled::Tree,
}

impl Catalog {
    pub fn new(tree: sled::Tree) -> Catalog {
        Catalog { tree }
    }

    /// A page of the applications of `tenant`, by id, after `cursor`.
    pub fn list(&self, tenant: &str, cursor: Option<&str>, limit: usize) -> anyhow::Result<Page<CatalogEntry>> {
        page(&self.tree, &events::projection::catalog::key(tenant, ""), cursor, limit, |_| true)
    }
}

/// The update notifications read model.
#[derive(Debug, Clone)]
pub struct Notifications {
    tree: sled::Tree,
}

impl Notifications {
    pub fn new(tree: sled::Tree) -> Notifications {
        Notifications { tree }
    }

    /// The deployments of `application` not uninstalled, by id.
    pub fn live(&self, tenant: &str, application: &str) -> anyhow::Result<Vec<String>> {
        let prefix = events::projection::notifications::tracked_prefix(tenant, application);
        self.tree
            .scan_prefix(&prefix)
            .map(|e| Ok(String::from_utf8_lossy(e?.0.get(prefix.len()..).unwrap_or_default()).into_owned()))
            .collect()
    }

    /// The notifications of `tenant`, by deployment id, `limit` a page, after `cursor`.
    pub fn list(&self, tenant: &str, cursor: Option<&str>, limit: usize) -> anyhow::Result<Page<Notification>> {
        use events::projection::notifications::{key, tracked_prefix, Published, Tracked};
        let prefix = key(tenant, "");
        let mut all = Vec::new();
        for entry in self.tree.scan_prefix(&prefix) {
            let (key, value) = entry?;
            let application = String::from_utf8_lossy(key.get(prefix.len()..).unwrap_or_default()).into_owned();
            let mut updates =
                ApplicationUpdates { latest: Some(serde_json::from_slice::<Published>(&value)?), ..Default::default() };
            let tracked = tracked_prefix(tenant, &application);
            for entry in self.tree.scan_prefix(&tracked) {
                let (key, value) = entry?;
                let deployment = String::from_utf8_lossy(key.get(tracked.len()..).unwrap_or_default()).into_owned();
                updates.deployments.insert(deployment, serde_json::from_slice::<Tracked>(&value)?);
            }
            all.extend(updates.notifications(&application));
        }
        all.sort_by(|a, b| a.deployment.cmp(&b.deployment));
        let mut items: Vec<Notification> = all
            .into_iter()
            .filter(|n| cursor.is_none_or(|c| n.deployment.as_str() > c))
            .take(limit.saturating_add(1))
            .collect();
        let next_cursor = if items.len() > limit {
            items.truncate(limit);
            items.last().map(|n| n.deployment.clone())
        } else {
            None
        };
        Ok(Page { items, next_cursor })
    }
}

/// The nodes read model.
#[derive(Debug, Clone)]
pub struct Nodes {
    tree: sled::Tree,
}

impl Nodes {
    pub fn new(tree: sled::Tree) -> Nodes {
        Nodes { tree }
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
        let prefix = events::projection::nodes::revoked_key("");
        self.tree
            .scan_prefix(&prefix)
            .map(|e| {
                let (key, at) = e?;
                let key = String::from_utf8_lossy(key.get(prefix.len()..).unwrap_or_default()).into_owned();
                Ok((key, serde_json::from_slice(&at)?))
            })
            .collect()
    }

    /// The node `key` was enrolled for, if it ever was: one lookup, however many nodes.
    pub fn holder(&self, key: &str) -> anyhow::Result<Option<events::projection::nodes::Holder>> {
        let held = events::projection::nodes::holder_key(key);
        Ok(self.tree.get(held)?.map(|bytes| serde_json::from_slice(&bytes)).transpose()?)
    }

    /// Node `id` of `tenant`, if it is known.
    pub fn get(&self, tenant: &str, id: &str) -> anyhow::Result<Option<NodeRecord>> {
        let key = events::projection::nodes::key(tenant, id);
        Ok(self.tree.get(key)?.map(|bytes| serde_json::from_slice(&bytes)).transpose()?)
    }

    /// Marks each node of `view` that is unreachable now, beside the last status it reported.
    pub fn mark_unreachable(&self, view: &mut DeploymentView) -> anyhow::Result<()> {
        for (node, entry) in view.nodes.iter_mut() {
            let state = self.get(&view.tenant, node)?.and_then(|record| record.state);
            entry.unreachable = state == Some(events::node::NodeState::Unreachable);
        }
        Ok(())
    }

    /// A page of the nodes of `tenant` that `wanted` keeps, by id, after `cursor`.
    pub fn list(
        &self,
        tenant: &str,
        cursor: Option<&str>,
        limit: usize,
        wanted: impl Fn(&NodeRecord) -> bool,
    ) -> anyhow::Result<Page<NodeRecord>> {
        page(&self.tree, &events::projection::nodes::key(tenant, ""), cursor, limit, wanted)
    }

    /// Every node of `tenant`, by id.
    pub fn all_of(&self, tenant: &str) -> anyhow::Result<Vec<NodeRecord>> {
        let prefix = events::projection::nodes::key(tenant, "");
        self.tree.scan_prefix(prefix).map(|e| Ok(serde_json::from_slice(&e?.1)?)).collect()
    }
}
