//! Read models as pure folds over the log, shared by the engine's live projector and by
//! `replay`.
//!
//! Each read model is declared once, here: its keys, its fold, and what a tenant's deletion
//! clears (`deployments`, `nodes`, `notifications`, `catalog`). They all live in one key-value store
//! ([`Store`]: a sled tree in the engine, memory in `replay at`), are fed by one reader, and
//! [`fold`] takes each event to every one of them: the event is decoded once ([`Fact`]), and
//! the payload of an event no read model folds (the nodes' reports, and the work addressed
//! to a native node) is never decoded.
//!
//! | model | keys |
//! |---|---|
//! | `deployments` | `d/<tenant>/<deployment>`: the deployment and how many of its nodes are in each status; `p/<tenant>/<deployment>/<node>`: one node's view |
//! | `nodes` | `n/<tenant>/<node>`: a node's labels and state; `r/<key>`: each key ever revoked, and `k/<key>`: the node each key was enrolled for, which no deletion forgets |
//! | `notifications` | `a/<tenant>/<application>`: its newest published version not withdrawn; `v/<tenant>/<application>`: its published versions not withdrawn; `t/<tenant>/<application>/<deployment>`: each of its live deployments; `i/<tenant>/<deployment>`: the deployment's application |
//! | `catalog` | `c/<tenant>/<application>`: its name and versions, draft or published |
//! | `margo` | `m/n/<tenant>/<node>`: a Margo device and the deployments it must hold; `m/c/<client>` and `m/f/<fingerprint>`: where a device is, by client id and by certificate |

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::application::ApplicationEvent;
use crate::deployment::DeploymentEvent;
use crate::deployment_node::DeploymentNodeEvent;
use crate::envelope::{DecodeError, Envelope};
use crate::node::NodeEvent;
use crate::tenant::TenantEvent;

pub mod catalog;
pub mod deployments;
pub mod history;
pub mod margo;
pub mod nodes;
pub mod notifications;
pub mod summary;

/// The subjects the read models fold: every aggregate's, and the work addressed to nodes (of
/// which only a Margo device's is decoded); not the nodes' reports.
pub const SUBJECTS: [&str; 3] =
    [crate::subject::ALL_AGGREGATES, crate::subject::ALL_DEPLOYMENT_NODES, crate::subject::ALL_NODE_WORK];

/// A read model's store failed: the fold cannot go on.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("read model: {0}")]
pub struct ModelError(pub String);

impl From<serde_json::Error> for ModelError {
    fn from(e: serde_json::Error) -> Self {
        ModelError(e.to_string())
    }
}

/// A value a read model keeps.
pub trait Value: Serialize + DeserializeOwned + Clone + Send + 'static {}

impl<T: Serialize + DeserializeOwned + Clone + Send + 'static> Value for T {}

/// Where the read models keep their values, by key. Reads see earlier writes of the same fold.
pub trait Store {
    /// A copy of the value at `key`.
    fn get<T: Value>(&mut self, key: &str) -> Result<Option<T>, ModelError>;
    /// The value at `key` itself, not copied, for the caller to change and [`Store::put`]
    /// back: a large value (every deployment of an application) changed by each event.
    fn take<T: Value>(&mut self, key: &str) -> Result<Option<T>, ModelError>;
    fn put<T: Value>(&mut self, key: String, value: T);
    fn remove(&mut self, key: &str);
    /// Every key that starts with `prefix`, in order.
    fn keys(&mut self, prefix: &str) -> Result<Vec<String>, ModelError>;

    /// Says that what was just folded is a change readers wait for (a deployment's status):
    /// the live projector commits it as soon as it has caught up with the stream, however
    /// recently it committed last. Other changes keep its pace.
    fn show_now(&mut self) {}

    fn remove_prefix(&mut self, prefix: &str) -> Result<(), ModelError> {
        for key in self.keys(prefix)? {
            self.remove(&key);
        }
        Ok(())
    }
}

/// An event, decoded once for every read model.
#[derive(Debug, Clone, PartialEq)]
pub enum Fact {
    Application(ApplicationEvent),
    Deployment(DeploymentEvent),
    DeploymentNode {
        deployment: String,
        node: String,
        event: DeploymentNodeEvent,
    },
    Node(NodeEvent),
    Tenant(TenantEvent),
    /// Work addressed to the node the envelope's aggregate id names: its payload is decoded
    /// only when that node is a Margo device (`margo`).
    NodeWork,
    /// Folded by no read model: its payload is not decoded.
    Other,
}

impl Fact {
    pub fn of(envelope: &Envelope) -> Result<Fact, DecodeError> {
        use crate::Aggregate;
        Ok(match envelope.aggregate_type.as_str() {
            crate::application::Application::TYPE => Fact::Application(envelope.event()?),
            crate::deployment::Deployment::TYPE => Fact::Deployment(envelope.event()?),
            crate::deployment_node::TYPE => match crate::deployment_node::split(&envelope.aggregate_id) {
                Some((deployment, node)) => {
                    Fact::DeploymentNode { deployment: deployment.into(), node: node.into(), event: envelope.event()? }
                }
                None => Fact::Other,
            },
            crate::node::Node::TYPE => Fact::Node(envelope.event()?),
            crate::tenant::Tenant::TYPE => Fact::Tenant(envelope.event()?),
            crate::work::AGGREGATE_TYPE => Fact::NodeWork,
            _ => Fact::Other,
        })
    }
}

/// Folds one event into every read model. A tenant's deletion clears what each keeps of it.
pub fn fold(store: &mut impl Store, envelope: &Envelope, fact: &Fact) -> Result<(), ModelError> {
    if let Fact::Tenant(TenantEvent::Deleted { .. }) = fact {
        margo::forget_tenant(store, &envelope.tenant)?;
        let prefixes = deployments::TENANT_PREFIXES
            .iter()
            .chain(nodes::TENANT_PREFIXES)
            .chain(notifications::TENANT_PREFIXES)
            .chain(catalog::TENANT_PREFIXES)
            .chain(margo::TENANT_PREFIXES);
        for prefix in prefixes {
            store.remove_prefix(&format!("{prefix}{}/", envelope.tenant))?;
        }
        return Ok(());
    }
    deployments::fold(store, envelope, fact)?;
    nodes::fold(store, envelope, fact)?;
    notifications::fold(store, envelope, fact)?;
    catalog::fold(store, envelope, fact)?;
    margo::fold(store, envelope, fact)
}

/// A [`Store`] in memory, for `replay at` and tests.
#[derive(Default)]
pub struct MemoryStore {
    values: std::collections::BTreeMap<String, Box<dyn KeptValue>>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore").field("values", &self.values.len()).finish()
    }
}

/// A value kept as it is, of any type.
trait KeptValue: std::any::Any + Send {
    fn as_any(&self) -> &dyn std::any::Any;
    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any>;
}

impl<T: std::any::Any + Send> KeptValue for T {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }

    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any> {
        self
    }
}

impl Store for MemoryStore {
    fn get<T: Value>(&mut self, key: &str) -> Result<Option<T>, ModelError> {
        match self.values.get(key) {
            None => Ok(None),
            Some(value) => match value.as_ref().as_any().downcast_ref::<T>() {
                Some(value) => Ok(Some(value.clone())),
                None => Err(ModelError(format!("{key} is kept as another type"))),
            },
        }
    }

    fn take<T: Value>(&mut self, key: &str) -> Result<Option<T>, ModelError> {
        match self.values.remove(key) {
            None => Ok(None),
            Some(value) => match value.into_any().downcast::<T>() {
                Ok(value) => Ok(Some(*value)),
                Err(_) => Err(ModelError(format!("{key} is kept as another type"))),
            },
        }
    }

    fn put<T: Value>(&mut self, key: String, value: T) {
        self.values.insert(key, Box::new(value));
    }

    fn remove(&mut self, key: &str) {
        self.values.remove(key);
    }

    fn keys(&mut self, prefix: &str) -> Result<Vec<String>, ModelError> {
        let keys = self.values.range(prefix.to_owned()..).map(|(k, _)| k).take_while(|k| k.starts_with(prefix));
        Ok(keys.cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deployment_node::DeploymentNodeEvent;
    use crate::envelope::Metadata;
    use crate::status::Status;
    use crate::testing::now;
    use uuid::Uuid;

    fn envelope(tenant: &str, aggregate_type: &str, id: &str, event: &impl crate::EventPayload) -> Envelope {
        let meta = Metadata {
            tenant: tenant.into(),
            actor: "ops".into(),
            correlation_id: Uuid::from_u128(7),
            causation_id: Uuid::from_u128(7),
        };
        Envelope::new(Uuid::from_u128(1), now(), aggregate_type, id, &meta, event, None)
    }

    /// A node's report of 1.0.0 running, as recorded on its (deployment, node) pair.
    fn running_reported() -> DeploymentNodeEvent {
        DeploymentNodeEvent::StateReported {
            version: "1.0.0".into(),
            status: Status::Running,
            error: None,
            containers: Default::default(),
            reported_at: now(),
            requests: 1,
            order: None,
        }
    }

    /// Folds every event of `tenant` named here into `store`: a node, its revocation, a
    /// published version, a launch and a node's report of it.
    fn history(store: &mut MemoryStore, tenant: &str) {
        let launched = crate::testing::launched("1.0.0", &["edge-1"]);
        let reported = running_reported();
        let published = ApplicationEvent::VersionPublished {
            version: "1.1.0".into(),
            published_at: now(),
            digests: Default::default(),
        };
        let key = format!("U{tenant}");
        let envelopes = [
            envelope(tenant, "node", "edge-1", &NodeEvent::Registered { labels: Default::default() }),
            envelope(tenant, "node", "edge-1", &NodeEvent::Revoked { public_key: key }),
            envelope(tenant, "application", "sample", &ApplicationEvent::Registered { name: "Sample".into() }),
            envelope(tenant, "application", "sample", &published),
            envelope(tenant, "deployment", "d1", &launched),
            envelope(tenant, "deployment_node", "d1.edge-1", &reported),
        ];
        for envelope in envelopes {
            fold(store, &envelope, &Fact::of(&envelope).unwrap()).unwrap();
        }
    }

    /// A store that counts the reads of the values listing a deployment's nodes for its
    /// notifications, and the changes folds ask to show at once.
    #[derive(Default)]
    struct Counting {
        store: MemoryStore,
        reads: usize,
        shown: usize,
    }

    impl Store for Counting {
        fn get<T: Value>(&mut self, key: &str) -> Result<Option<T>, ModelError> {
            self.reads += usize::from(key.starts_with("t/"));
            self.store.get(key)
        }

        fn take<T: Value>(&mut self, key: &str) -> Result<Option<T>, ModelError> {
            self.reads += usize::from(key.starts_with("t/"));
            self.store.take(key)
        }

        fn put<T: Value>(&mut self, key: String, value: T) {
            self.store.put(key, value)
        }

        fn remove(&mut self, key: &str) {
            self.store.remove(key)
        }

        fn keys(&mut self, prefix: &str) -> Result<Vec<String>, ModelError> {
            self.store.keys(prefix)
        }

        fn show_now(&mut self) {
            self.shown += 1;
        }
    }

    #[test]
    fn a_new_deployment_and_each_change_of_its_status_are_shown_at_once_and_nothing_else() {
        let mut store = Counting::default();
        let mut fold_one = |envelope: Envelope| {
            fold(&mut store, &envelope, &Fact::of(&envelope).unwrap()).unwrap();
            store.shown
        };
        let deployment = |event: &DeploymentEvent| envelope("acme", "deployment", "d1", event);
        // A node's report as the engine records it now, on the (deployment, node) pair.
        let running = |node: &str| envelope("acme", "deployment_node", &format!("d1.{node}"), &running_reported());
        let launched = crate::testing::launched("1.0.0", &["edge-1", "edge-2"]);
        assert_eq!(fold_one(deployment(&launched)), 1, "a new deployment");
        assert_eq!(fold_one(running("edge-1")), 1, "one node of two running: still pending_deploy");
        assert_eq!(fold_one(running("edge-2")), 2, "both running: running");
        assert_eq!(fold_one(running("edge-2")), 2, "the same again: no change");
        assert_eq!(fold_one(deployment(&DeploymentEvent::NodesSettled { nodes: vec![] })), 2, "no change");
        assert_eq!(fold_one(deployment(&DeploymentEvent::StopRequested { at: now() })), 3, "pending_stop");
    }

    #[test]
    fn a_deployments_events_that_change_nothing_tracked_never_read_its_list_of_nodes() {
        let mut store = Counting::default();
        let fold_one = |store: &mut Counting, event: &DeploymentEvent| {
            let envelope = envelope("acme", "deployment", "d1", event);
            fold(store, &envelope, &Fact::of(&envelope).unwrap()).unwrap();
        };
        fold_one(&mut store, &crate::testing::launched("1.0.0", &["edge-1", "edge-2"]));
        assert_eq!(store.reads, 0, "a launch tracks the deployment anew");
        fold_one(&mut store, &DeploymentEvent::WaveReleased { nodes: vec!["edge-1".into()] });
        fold_one(&mut store, &DeploymentEvent::StopRequested { at: now() });
        fold_one(&mut store, &DeploymentEvent::NodesSettled { nodes: vec![] });
        assert_eq!(store.reads, 0, "waves, stops and settled nodes change nothing tracked");
        let rolled_back = DeploymentEvent::RolledBack {
            from_version: "1.0.0".into(),
            version: "0.9.0".into(),
            image: "x".into(),
            env: Default::default(),
            services: Default::default(),
            reconfigured: None,
            reason: "failed".into(),
            at: now(),
        };
        fold_one(&mut store, &rolled_back);
        assert_eq!(store.reads, 1, "a rollback changes the version tracked");
        let tracked: notifications::Tracked =
            store.store.get("t/acme/sample/d1").unwrap().expect("the deployment is tracked");
        assert_eq!((tracked.version.as_str(), tracked.nodes.len()), ("0.9.0", 2));
        fold_one(&mut store, &DeploymentEvent::UninstallRequested { at: now() });
        assert_eq!(store.store.get::<notifications::Tracked>("t/acme/sample/d1").unwrap(), None);
    }

    #[test]
    fn a_tenants_deletion_clears_what_every_model_keeps_of_it_but_the_revoked_keys() {
        let mut store = MemoryStore::default();
        history(&mut store, "acme");
        history(&mut store, "other");
        let of = |store: &mut MemoryStore, tenant: &str| -> Vec<String> {
            store.keys("").unwrap().into_iter().filter(|k| k.contains(&format!("/{tenant}/"))).collect()
        };
        let kept = of(&mut store, "acme");
        for prefix in ["d/", "p/", "n/", "a/", "t/", "i/", "c/"] {
            assert!(kept.iter().any(|k| k.starts_with(prefix)), "no {prefix} key before the deletion: {kept:?}");
        }

        let deleted = envelope("acme", "tenant", "acme", &TenantEvent::Deleted { at: now() });
        fold(&mut store, &deleted, &Fact::of(&deleted).unwrap()).unwrap();
        assert_eq!(of(&mut store, "acme"), Vec::<String>::new());
        assert_eq!(of(&mut store, "other").len(), kept.len(), "another tenant keeps everything");
        let revoked = store.keys("r/").unwrap();
        assert_eq!(revoked, ["r/Uacme", "r/Uother"], "the servers go on refusing a deleted tenant's keys");
    }
}
