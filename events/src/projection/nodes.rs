//! The nodes read model: each node's labels and state, for listings and for resolving a label
//! selector.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::envelope::Envelope;
use crate::node::{Labels, NodeEvent, NodeState, Refused};
use crate::projection::{Fact, ModelError, Store};

/// The prefixes of its keys that hold a tenant's nodes: a tenant's deletion clears them. The
/// revoked keys (`r/`) stay: the servers must go on refusing them; and so do the keys held
/// (`k/`): a key is never enrolled for another node.
pub const TENANT_PREFIXES: &[&str] = &["n/"];

/// The key of a node's record.
pub fn key(tenant: &str, node: &str) -> String {
    format!("n/{tenant}/{node}")
}

/// The key under which a revoked key is kept, with the unix second up to which the servers
/// refuse the JWTs issued to it.
pub fn revoked_key(key: &str) -> String {
    format!("r/{key}")
}

/// The key under which a node key is kept with the node first enrolled with it: a key belongs
/// to one node, ever, so no deletion forgets it.
pub fn holder_key(key: &str) -> String {
    format!("k/{key}")
}

/// The node a key was first enrolled for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub tenant: String,
    pub node: String,
}

/// Folds a node's event into its record, its key into the keys held, and a revoked key into
/// the revocation list.
pub fn fold(store: &mut impl Store, envelope: &Envelope, fact: &Fact) -> Result<(), ModelError> {
    let Fact::Node(event) = fact else { return Ok(()) };
    if let NodeEvent::Enrolled { public_key, .. } = event {
        let held = holder_key(public_key);
        if store.get::<Holder>(&held)?.is_none() {
            store.put(held, Holder { tenant: envelope.tenant.clone(), node: envelope.aggregate_id.clone() });
        }
    }
    match event {
        // The server refuses the key's JWTs issued at or before this second: one more, so that a
        // JWT minted in the second of its revocation is refused too.
        NodeEvent::KeyRotated { previous: key, .. } | NodeEvent::Revoked { public_key: key } => {
            store.put(revoked_key(key), envelope.time.timestamp().saturating_add(1))
        }
        _ => {}
    }
    let key = key(&envelope.tenant, &envelope.aggregate_id);
    if let Some(record) = apply(store.get::<NodeRecord>(&key)?, envelope, event) {
        store.put(key, record);
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodeRecord {
    pub id: String,
    pub tenant: String,
    pub labels: Labels,
    pub state: Option<NodeState>,
    /// The key its credential was issued to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Keys it may no longer use, with when they were revoked (unix seconds): what the bus's
    /// revocation list is made of.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub revoked_keys: std::collections::BTreeMap<String, i64>,
    /// Reports on its subject the engine refused, and the last of them.
    #[serde(default)]
    pub refused_reports: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_refused: Option<Refused>,
    /// A Margo device's certificate fingerprint: it runs no edge node, and polls the engine's
    /// Workload Fleet Manager API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub margo: Option<String>,
    pub updated_at: DateTime<Utc>,
}

impl NodeRecord {
    /// Whether its labels include every pair of `selector`.
    pub fn matches(&self, selector: &Labels) -> bool {
        matches(&self.labels, selector)
    }
}

/// Whether `labels` include every pair of `selector`.
pub fn matches(labels: &Labels, selector: &Labels) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

fn apply(record: Option<NodeRecord>, envelope: &Envelope, event: &NodeEvent) -> Option<NodeRecord> {
    let mut record = match record {
        Some(record) => record,
        None => NodeRecord {
            id: envelope.aggregate_id.clone(),
            tenant: envelope.tenant.clone(),
            labels: Labels::new(),
            state: None,
            key: None,
            revoked_keys: Default::default(),
            refused_reports: 0,
            last_refused: None,
            margo: None,
            updated_at: envelope.time,
        },
    };
    match event {
        NodeEvent::Enrolled { public_key, .. } => {
            record.key = Some(public_key.clone());
            if record.state == Some(NodeState::Revoked) {
                record.state = None;
            }
        }
        NodeEvent::KeyRotated { previous, .. } => {
            record.revoked_keys.insert(previous.clone(), envelope.time.timestamp());
        }
        NodeEvent::Revoked { public_key } => {
            record.revoked_keys.insert(public_key.clone(), envelope.time.timestamp());
            record.state = Some(NodeState::Revoked);
        }
        NodeEvent::Registered { labels } => record.labels = labels.clone(),
        NodeEvent::HeartbeatRecorded { .. } => {}
        NodeEvent::LabelsChanged { labels } => record.labels = labels.clone(),
        NodeEvent::StateChanged { state } => record.state = Some(*state),
        NodeEvent::MargoAdmitted { fingerprint, .. } => {
            record.margo = Some(fingerprint.clone());
            if record.state == Some(NodeState::Revoked) {
                record.state = None;
            }
        }
        NodeEvent::MargoOnboarded { .. } => record.state = Some(NodeState::Online),
        NodeEvent::MargoUnregistered { .. } => record.state = Some(NodeState::Revoked),
        NodeEvent::ReportRefused { sequence, reason } => {
            record.refused_reports = record.refused_reports.saturating_add(1);
            record.last_refused = Some(Refused { sequence: *sequence, reason: reason.clone() });
        }
    }
    record.updated_at = envelope.time;
    Some(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_selector_matches_labels_that_include_all_its_pairs() {
        let labels: Labels = [("site".into(), "lab".into()), ("arch".into(), "amd64".into())].into();
        assert!(matches(&labels, &[("site".into(), "lab".into())].into()));
        assert!(matches(&labels, &labels.clone()));
        assert!(!matches(&labels, &[("site".into(), "north".into())].into()));
        assert!(!matches(&labels, &[("zone".into(), "a".into())].into()));
    }
}
