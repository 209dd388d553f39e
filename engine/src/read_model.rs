//! The deployments read model in sled: its projection (the pure fold of
//! `events::projection::deployments`) and its queries.

use events::deployment::DeploymentEvent;
use events::projection::deployments::{self, DeploymentView};

use crate::projector::{Overlay, Projection, ProjectionError};
use crate::store::StoredEvent;

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

    /// Deployments of `tenant` in launch order (ids are UUID v7), `limit` a page, after `cursor`.
    pub fn list(&self, tenant: &str, cursor: Option<&str>, limit: usize) -> anyhow::Result<Page<DeploymentView>> {
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
            if items.len() == limit {
                more = true;
                break;
            }
            items.push(serde_json::from_slice::<DeploymentView>(&v)?);
        }
        let next_cursor = if more { items.last().map(|d| d.id.clone()) } else { None };
        Ok(Page { items, next_cursor })
    }

    /// Every view of every tenant, in key order: what a rebuild must reproduce.
    pub fn all(&self) -> anyhow::Result<Vec<DeploymentView>> {
        self.tree.scan_prefix(b"d/").map(|e| Ok(serde_json::from_slice(&e?.1)?)).collect()
    }
}

impl Projection for Deployments {
    const NAME: &'static str = "deployments";

    fn subjects(&self) -> Vec<String> {
        vec![events::subject::ALL_DEPLOYMENTS.to_owned()]
    }

    fn apply(&self, batch: &mut Overlay<'_>, stored: &StoredEvent) -> Result<(), ProjectionError> {
        let envelope = &stored.envelope;
        let event: DeploymentEvent = envelope.event()?;
        let key = key(&envelope.tenant, &envelope.aggregate_id);
        let current = batch.get(&key).ok().flatten().and_then(|v| serde_json::from_slice::<DeploymentView>(&v).ok());
        match deployments::apply(current, envelope, &event) {
            Some(view) => batch.insert(key, serde_json::to_vec(&view).expect("a view always serializes")),
            None => batch.remove(key),
        }
        Ok(())
    }
}
