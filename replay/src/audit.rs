//! The audit trail: who did what, and when, from the log alone. Edge-node reports carry the
//! node as actor (`node:<name>`).

use chrono::{DateTime, Utc};
use serde::Serialize;

use bus::store::StoredEvent;

/// One line of the trail; written as JSON lines, a tool outside the project can read it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Entry {
    pub sequence: u64,
    pub time: DateTime<Utc>,
    pub tenant: String,
    pub actor: String,
    /// The event type, as `deployment.launched`.
    #[serde(rename = "type")]
    pub event_type: String,
    pub schema_version: u16,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub subject: String,
    pub id: String,
    pub correlation_id: String,
    pub causation_id: String,
    /// The event's own fields.
    pub payload: serde_json::Value,
}

impl Entry {
    pub fn of(subject: &str, event: &StoredEvent) -> Entry {
        let e = &event.envelope;
        // The payload is MessagePack with named fields: any self-describing reader takes it.
        let mut payload = rmp_serde::from_slice::<serde_json::Value>(&e.payload)
            .unwrap_or_else(|err| serde_json::json!({ "undecodable": err.to_string() }));
        // Secrets are sealed in the log; their sealed form is not shown either.
        events::redact(&mut payload);
        Entry {
            sequence: event.sequence,
            time: e.time,
            tenant: e.tenant.clone(),
            actor: e.actor.clone(),
            event_type: e.event_type.clone(),
            schema_version: e.schema_version,
            aggregate_type: e.aggregate_type.clone(),
            aggregate_id: e.aggregate_id.clone(),
            subject: subject.to_owned(),
            id: e.id.to_string(),
            correlation_id: e.correlation_id.to_string(),
            causation_id: e.causation_id.to_string(),
            payload,
        }
    }

    /// One line for people.
    pub fn line(&self) -> String {
        format!(
            "{:>8}  {}  {:<10} {:<24} {:<34} {}/{}",
            self.sequence,
            self.time.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
            self.tenant,
            self.actor,
            self.event_type,
            self.aggregate_type,
            self.aggregate_id
        )
    }
}

/// What the trail is narrowed to; every filter given must hold.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    pub actor: Option<String>,
    pub tenant: Option<String>,
    /// Events of this application, and of its deployments.
    pub application: Option<String>,
    pub deployment: Option<String>,
    /// Events of this node: its own, its work and its reports, and its deployments' reports of it.
    pub node: Option<String>,
    /// An event type (`deployment.launched`) or a prefix of one (`deployment.`).
    pub event_type: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

impl Filter {
    /// Whether `entry` is an event of a (deployment, node) pair of that deployment, or node.
    fn of_pair(&self, entry: &Entry, deployment: Option<&str>, node: Option<&str>) -> bool {
        let pair = (entry.aggregate_type == events::deployment_node::TYPE)
            .then(|| events::deployment_node::split(&entry.aggregate_id))
            .flatten();
        pair.is_some_and(|(d, n)| deployment.is_none_or(|w| w == d) && node.is_none_or(|w| w == n))
    }

    pub fn admits(&self, entry: &Entry) -> bool {
        let is = |wanted: &Option<String>, value: &str| wanted.as_deref().is_none_or(|w| w == value);
        let of_aggregate = |kind: &str, id: &str| entry.aggregate_type == kind && entry.aggregate_id == id;
        is(&self.actor, &entry.actor)
            && is(&self.tenant, &entry.tenant)
            && self.event_type.as_deref().is_none_or(|t| entry.event_type.starts_with(t))
            && self.since.is_none_or(|t| entry.time >= t)
            && self.until.is_none_or(|t| entry.time <= t)
            && self
                .deployment
                .as_deref()
                .is_none_or(|d| of_aggregate("deployment", d) || self.of_pair(entry, Some(d), None))
            && self.application.as_deref().is_none_or(|a| {
                of_aggregate("application", a)
                    || (entry.aggregate_type == "deployment" && entry.payload_field("application") == Some(a))
            })
            && self.node.as_deref().is_none_or(|n| {
                entry.subject.split('.').nth(3) == Some(n) && entry.subject.split('.').nth(2) == Some("node")
                    || entry.payload_field("node") == Some(n)
                    || self.of_pair(entry, None, Some(n))
            })
    }
}

impl Entry {
    /// A text field of the payload, one level inside its variant (`{"launched": {...}}`).
    fn payload_field(&self, name: &str) -> Option<&str> {
        let inner = self.payload.as_object()?.values().next()?;
        inner.get(name)?.as_str()
    }
}

/// A message of the trail that is not an event where it was found, as one JSON line: where,
/// and why it was set aside.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SetAsideEntry {
    pub sequence: u64,
    pub subject: String,
    pub set_aside: String,
}

impl SetAsideEntry {
    pub fn of(subject: &str, unfit: &crate::SetAside) -> SetAsideEntry {
        SetAsideEntry { sequence: unfit.sequence, subject: subject.to_owned(), set_aside: unfit.reason.to_string() }
    }
}
