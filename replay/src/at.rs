//! Point in time: the state of every deployment, node and application as it was at a stream
//! sequence or a moment, folded from the log by the same projection code as the live read
//! models.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use bus::store::StoredEvent;
use events::application::{Application, ApplicationEvent};
use events::deployment::DeploymentEvent;
use events::node::NodeEvent;
use events::projection::deployments::{self, DeploymentView};
use events::projection::nodes::{self, NodeRecord};
use events::tenant::TenantEvent;
use events::Aggregate;

/// Up to where the log is folded: a stream sequence, or a moment (events at or before it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    Sequence(u64),
    Time(DateTime<Utc>),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ApplicationAt {
    pub tenant: String,
    pub id: String,
    pub name: String,
    /// Each version, and whether it was published by then.
    pub versions: BTreeMap<String, bool>,
}

/// What was true then.
#[derive(Debug, Default, Serialize)]
pub struct State {
    /// The last stream sequence folded.
    pub sequence: u64,
    pub time: Option<DateTime<Utc>>,
    pub deployments: Vec<DeploymentView>,
    pub nodes: Vec<NodeRecord>,
    pub applications: Vec<ApplicationAt>,
}

/// Folds events one by one; [`Fold::state`] gives what is true after the last.
#[derive(Debug, Default)]
pub struct Fold {
    sequence: u64,
    time: Option<DateTime<Utc>>,
    deployments: BTreeMap<(String, String), DeploymentView>,
    nodes: BTreeMap<(String, String), NodeRecord>,
    applications: BTreeMap<(String, String), Application>,
}

impl Fold {
    /// Whether `event` is within `until`.
    pub fn within(until: Until, event: &StoredEvent) -> bool {
        match until {
            Until::Sequence(sequence) => event.sequence <= sequence,
            Until::Time(time) => event.envelope.time <= time,
        }
    }

    pub fn add(&mut self, event: &StoredEvent) -> anyhow::Result<()> {
        let e = &event.envelope;
        let key = (e.tenant.clone(), e.aggregate_id.clone());
        (self.sequence, self.time) = (event.sequence, Some(e.time));
        match e.aggregate_type.as_str() {
            "deployment" => {
                let view = self.deployments.remove(&key);
                if let Some(view) = deployments::apply(view, e, &e.event::<DeploymentEvent>()?) {
                    self.deployments.insert(key, view);
                }
            }
            events::deployment_node::TYPE => {
                let Some((deployment, node)) = events::deployment_node::split(&e.aggregate_id) else { return Ok(()) };
                let key = (e.tenant.clone(), deployment.to_owned());
                let view = self.deployments.remove(&key);
                if let Some(view) = deployments::apply_node(view, e, node, &e.event()?) {
                    self.deployments.insert(key, view);
                }
            }
            "node" => {
                let record = self.nodes.remove(&key);
                if let Some(record) = nodes::apply(record, e, &e.event::<NodeEvent>()?) {
                    self.nodes.insert(key, record);
                }
            }
            "application" => {
                let app = self.applications.remove(&key).unwrap_or_default();
                self.applications.insert(key, app.evolve(&e.event::<ApplicationEvent>()?));
            }
            // As the read models do: a deleted tenant is forgotten.
            "tenant" => {
                let TenantEvent::Deleted { .. } = e.event::<TenantEvent>()? else { return Ok(()) };
                self.deployments.retain(|(tenant, _), _| *tenant != e.tenant);
                self.nodes.retain(|(tenant, _), _| *tenant != e.tenant);
                self.applications.retain(|(tenant, _), _| *tenant != e.tenant);
            }
            _ => {}
        }
        Ok(())
    }

    pub fn state(self) -> State {
        let applications = self
            .applications
            .into_iter()
            .map(|((tenant, id), app)| ApplicationAt {
                tenant,
                id,
                name: app.name,
                versions: app.versions.into_iter().map(|(v, version)| (v, version.published_at.is_some())).collect(),
            })
            .collect();
        State {
            sequence: self.sequence,
            time: self.time,
            deployments: self.deployments.into_values().collect(),
            nodes: self.nodes.into_values().collect(),
            applications,
        }
    }
}
