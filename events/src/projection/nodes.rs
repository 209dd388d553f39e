//! The nodes read model: each node's labels and state, for listings and for resolving a label
//! selector.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::envelope::Envelope;
use crate::node::{Labels, NodeEvent, NodeState};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: String,
    pub tenant: String,
    pub labels: Labels,
    pub state: Option<NodeState>,
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

pub fn apply(record: Option<NodeRecord>, envelope: &Envelope, event: &NodeEvent) -> Option<NodeRecord> {
    let mut record = match (record, event) {
        (_, NodeEvent::Registered { labels }) => NodeRecord {
            id: envelope.aggregate_id.clone(),
            tenant: envelope.tenant.clone(),
            labels: labels.clone(),
            state: None,
            updated_at: envelope.time,
        },
        (Some(record), _) => record,
        (None, _) => return None,
    };
    match event {
        NodeEvent::Registered { .. } | NodeEvent::HeartbeatRecorded { .. } => {}
        NodeEvent::LabelsChanged { labels } => record.labels = labels.clone(),
        NodeEvent::StateChanged { state } => record.state = Some(*state),
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
