//! Point in time: the state of every deployment, node and application as it was at a stream
//! sequence or a moment, folded from the log by the same projection code as the live read
//! models.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use bus::store::StoredEvent;
use events::application::Application;
use events::projection::deployments::{self, DeploymentView};
use events::projection::nodes::NodeRecord;
use events::projection::{Fact, MemoryStore, Store};
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
    /// The read models, folded by their own code (`events::projection`), in memory.
    models: MemoryStore,
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
        (self.sequence, self.time) = (event.sequence, Some(e.time));
        let fact = Fact::of(e)?;
        events::projection::fold(&mut self.models, e, &fact)?;
        match &fact {
            Fact::Application(app) => {
                let key = (e.tenant.clone(), e.aggregate_id.clone());
                let state = self.applications.remove(&key).unwrap_or_default();
                self.applications.insert(key, state.evolve(app));
            }
            // As the read models do: a deleted tenant is forgotten.
            Fact::Tenant(TenantEvent::Deleted { .. }) => self.applications.retain(|(tenant, _), _| *tenant != e.tenant),
            _ => {}
        }
        Ok(())
    }

    pub fn state(mut self) -> anyhow::Result<State> {
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
        let mut found = Vec::new();
        for key in self.models.keys("d/")? {
            if let Some((tenant, id)) = key.strip_prefix("d/").and_then(|k| k.split_once('/')) {
                found.extend(deployments::view(&mut self.models, tenant, id)?);
            }
        }
        let mut nodes = Vec::new();
        for key in self.models.keys("n/")? {
            nodes.extend(self.models.get::<NodeRecord>(&key)?);
        }
        Ok(State { sequence: self.sequence, time: self.time, deployments: found, nodes, applications })
    }
}
