//! Margo devices: each one's identity, and the desired state it polls (`crate::margo`), folded
//! from its node's events and from the work the engine addresses to it.
//!
//! A Margo device runs no edge node: the work the router appends on its subject
//! (`ev.<tenant>.node.<node>.desired`, like any node's) is folded here into the deployments it
//! must hold. Its `manifest_version` counts the changes of that set, so a rebuild from the log
//! reaches the same number and it never goes down.
//!
//! Margo has no staged and no stopped deployment: a version staged to wait for `apply` is not
//! listed until applied, and a stopped deployment is not listed until started (the device
//! removes it meanwhile).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::compose::Service;
use crate::envelope::Envelope;
use crate::node::NodeEvent;
use crate::projection::{Fact, ModelError, Store};
use crate::work::NodeWork;

/// The prefixes of its keys that hold a tenant's: a tenant's deletion clears them (the
/// indexes by client and by certificate are cleared device by device first, [`forget_tenant`]).
pub const TENANT_PREFIXES: &[&str] = &["m/n/"];

/// The key of a device's entry.
pub fn key(tenant: &str, node: &str) -> String {
    format!("m/n/{tenant}/{node}")
}

/// The key of the device a client id names.
pub fn client_key(client_id: &str) -> String {
    format!("m/c/{client_id}")
}

/// The key of the device a certificate (by its fingerprint) was admitted as.
pub fn fingerprint_key(fingerprint: &str) -> String {
    format!("m/f/{fingerprint}")
}

/// Where a device is: its tenant and node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRef {
    pub tenant: String,
    pub node: String,
}

/// A Margo device and the desired state it polls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    pub tenant: String,
    pub node: String,
    /// The fingerprint of the certificate it was admitted by.
    pub fingerprint: String,
    /// Its certificate (base64 DER) and client id, once onboarded.
    #[serde(default)]
    pub certificate: Option<String>,
    #[serde(default)]
    pub client_id: Option<String>,
    /// Unregistered: its certificate is refused until it is admitted again.
    #[serde(default)]
    pub unregistered: bool,
    /// How many times the set of deployments it must hold changed, from 1.
    pub manifest_version: u64,
    /// Each deployment the engine addressed to it, by deployment id.
    #[serde(default)]
    pub deployments: BTreeMap<String, Assigned>,
}

/// A deployment addressed to a device, as its last work had it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assigned {
    pub application: String,
    pub version: String,
    pub image: String,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub services: Vec<Service>,
    /// Staged, waiting for `apply`.
    #[serde(default)]
    pub staged: bool,
    #[serde(default)]
    pub stopped: bool,
    /// Uninstalled: kept so that the device's report of its removal still finds it.
    #[serde(default)]
    pub removed: bool,
    /// A version staged to replace this one at `apply`: until then the device keeps this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<Box<Assigned>>,
}

impl Assigned {
    /// Whether the device must hold it now.
    pub fn listed(&self) -> bool {
        !self.staged && !self.stopped && !self.removed
    }
}

impl Device {
    /// The deployments it must hold now.
    pub fn listed(&self) -> impl Iterator<Item = (&String, &Assigned)> {
        self.deployments.iter().filter(|(_, assigned)| assigned.listed())
    }
}

/// Folds a node's Margo events and the work addressed to a Margo device.
pub fn fold(store: &mut impl Store, envelope: &Envelope, fact: &Fact) -> Result<(), ModelError> {
    match fact {
        Fact::Node(event) => fold_node(store, envelope, event),
        Fact::NodeWork => {
            let key = key(&envelope.tenant, &envelope.aggregate_id);
            let Some(mut device) = store.take::<Device>(&key)? else { return Ok(()) };
            // Work fits its subject, but its payload may still be one no engine wrote: it is
            // left, and the node's entry kept.
            if let Ok(work) = envelope.event::<NodeWork>() {
                let before: Vec<(String, Assigned)> = listed(&device);
                apply(&mut device, work);
                if listed(&device) != before {
                    device.manifest_version = device.manifest_version.saturating_add(1);
                }
            }
            store.put(key, device);
            Ok(())
        }
        _ => Ok(()),
    }
}

fn listed(device: &Device) -> Vec<(String, Assigned)> {
    device.listed().map(|(id, assigned)| (id.clone(), assigned.clone())).collect()
}

fn fold_node(store: &mut impl Store, envelope: &Envelope, event: &NodeEvent) -> Result<(), ModelError> {
    let (tenant, node) = (&envelope.tenant, &envelope.aggregate_id);
    let key = key(tenant, node);
    let here = DeviceRef { tenant: tenant.clone(), node: node.clone() };
    match event {
        NodeEvent::MargoAdmitted { fingerprint, .. } => {
            let mut device = store.take::<Device>(&key)?.unwrap_or_else(|| Device {
                tenant: tenant.clone(),
                node: node.clone(),
                fingerprint: String::new(),
                certificate: None,
                client_id: None,
                unregistered: false,
                manifest_version: 1,
                deployments: BTreeMap::new(),
            });
            if device.fingerprint != *fingerprint {
                forget_fingerprint(store, &device.fingerprint, &here)?;
                device.certificate = None;
            }
            device.fingerprint = fingerprint.clone();
            device.unregistered = false;
            // The first device admitted by a certificate keeps it while it is registered: an
            // admission of the same certificate elsewhere finds no device (the API refuses it).
            let held_elsewhere = holder(store, fingerprint)?.is_some_and(|holder| holder != here);
            if !held_elsewhere {
                store.put(fingerprint_key(fingerprint), here);
            }
            store.put(key, device);
        }
        NodeEvent::MargoOnboarded { certificate, client_id, .. } => {
            let Some(mut device) = store.take::<Device>(&key)? else { return Ok(()) };
            if let Some(previous) = device.client_id.as_ref().filter(|previous| *previous != client_id) {
                store.remove(&client_key(previous));
            }
            device.certificate = Some(certificate.clone());
            device.client_id = Some(client_id.clone());
            store.put(client_key(client_id), here);
            store.put(key, device);
        }
        NodeEvent::MargoUnregistered { .. } => {
            let Some(mut device) = store.take::<Device>(&key)? else { return Ok(()) };
            device.unregistered = true;
            store.put(key, device);
        }
        _ => {}
    }
    Ok(())
}

/// Takes one piece of work into the device's deployments.
fn apply(device: &mut Device, work: NodeWork) {
    match work {
        NodeWork::Deploy { deployment, application, version, image, mode, env, services, .. } => {
            let staged = mode.staged && !mode.instantly_apply;
            let assigned = Assigned {
                application,
                version,
                image,
                env,
                services,
                staged,
                stopped: false,
                removed: false,
                next: None,
            };
            device.deployments.insert(deployment, assigned);
        }
        NodeWork::Update { deployment, version, image, mode, env, services, .. } => {
            if let Some(assigned) = device.deployments.get_mut(&deployment) {
                let updated = Assigned { version, image, env, services, next: None, ..assigned.clone() };
                match mode.staged && !mode.instantly_apply {
                    // The running version stays listed until the apply.
                    true if assigned.listed() => assigned.next = Some(Box::new(updated)),
                    staged => *assigned = Assigned { staged, ..updated },
                }
            }
        }
        NodeWork::Apply { deployment } => {
            if let Some(assigned) = device.deployments.get_mut(&deployment) {
                if let Some(next) = assigned.next.take() {
                    *assigned = Assigned { stopped: assigned.stopped, ..*next };
                }
                assigned.staged = false;
            }
        }
        NodeWork::Stop { deployment } => set_stopped(device, &deployment, true),
        NodeWork::Start { deployment } => set_stopped(device, &deployment, false),
        NodeWork::Remove { deployment } => {
            if let Some(assigned) = device.deployments.get_mut(&deployment) {
                assigned.removed = true;
            }
        }
        NodeWork::Refresh { .. } => {}
    }
}

fn set_stopped(device: &mut Device, deployment: &str, stopped: bool) {
    if let Some(assigned) = device.deployments.get_mut(deployment) {
        assigned.stopped = stopped;
    }
}

/// The registered device the certificate with `fingerprint` is held by, if any: a
/// certificate is one registered device's.
pub fn holder(store: &mut impl Store, fingerprint: &str) -> Result<Option<DeviceRef>, ModelError> {
    let Some(holder) = store.get::<DeviceRef>(&fingerprint_key(fingerprint))? else { return Ok(None) };
    let device = store.get::<Device>(&key(&holder.tenant, &holder.node))?;
    Ok(device.is_some_and(|d| !d.unregistered && d.fingerprint == fingerprint).then_some(holder))
}

/// Removes the index of `fingerprint` if it names the device `here`.
fn forget_fingerprint(store: &mut impl Store, fingerprint: &str, here: &DeviceRef) -> Result<(), ModelError> {
    let key = fingerprint_key(fingerprint);
    if store.get::<DeviceRef>(&key)?.as_ref() == Some(here) {
        store.remove(&key);
    }
    Ok(())
}

/// Removes the indexes of every device of `tenant`, before its prefixes are cleared.
pub fn forget_tenant(store: &mut impl Store, tenant: &str) -> Result<(), ModelError> {
    for key in store.keys(&format!("m/n/{tenant}/"))? {
        if let Some(device) = store.get::<Device>(&key)? {
            let here = DeviceRef { tenant: device.tenant.clone(), node: device.node.clone() };
            forget_fingerprint(store, &device.fingerprint, &here)?;
            if let Some(client) = &device.client_id {
                store.remove(&client_key(client));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deployment::Mode;
    use crate::envelope::Metadata;
    use crate::projection::MemoryStore;
    use crate::testing::now;
    use uuid::Uuid;

    const FINGERPRINT: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000001";

    fn envelope(aggregate_type: &str, event: &impl crate::EventPayload) -> Envelope {
        let meta = Metadata {
            tenant: "acme".into(),
            actor: "ops".into(),
            correlation_id: Uuid::from_u128(7),
            causation_id: Uuid::from_u128(7),
        };
        Envelope::new(Uuid::from_u128(1), now(), aggregate_type, "dev-1", &meta, event, None)
    }

    fn fold_all(store: &mut MemoryStore, events: &[Envelope]) {
        for envelope in events {
            crate::projection::fold(store, envelope, &Fact::of(envelope).unwrap()).unwrap();
        }
    }

    fn onboarded() -> Vec<Envelope> {
        vec![
            envelope("node", &NodeEvent::MargoAdmitted { fingerprint: FINGERPRINT.into(), labels: Default::default() }),
            envelope(
                "node",
                &NodeEvent::MargoOnboarded {
                    fingerprint: FINGERPRINT.into(),
                    certificate: "MIIB".into(),
                    client_id: "c1".into(),
                },
            ),
        ]
    }

    fn deploy(deployment: &str, version: &str, mode: Mode) -> Envelope {
        let work = NodeWork::Deploy {
            deployment: deployment.into(),
            application: "sample".into(),
            version: version.into(),
            image: "127.0.0.1:5000/sample/app:1.0.0".into(),
            mode,
            env: Default::default(),
            services: vec![],
            secrets: Default::default(),
        };
        envelope(crate::work::AGGREGATE_TYPE, &work)
    }

    fn device(store: &mut MemoryStore) -> Device {
        store.get::<Device>(&key("acme", "dev-1")).unwrap().expect("the device is kept")
    }

    #[test]
    fn a_device_is_found_by_its_client_id_and_by_its_certificate() {
        let mut store = MemoryStore::default();
        fold_all(&mut store, &onboarded());
        let here = DeviceRef { tenant: "acme".into(), node: "dev-1".into() };
        assert_eq!(store.get::<DeviceRef>(&client_key("c1")).unwrap(), Some(here.clone()));
        assert_eq!(store.get::<DeviceRef>(&fingerprint_key(FINGERPRINT)).unwrap(), Some(here));
        assert_eq!(device(&mut store).certificate.as_deref(), Some("MIIB"));
    }

    #[test]
    fn the_manifest_version_rises_with_each_change_of_what_the_device_must_hold_and_only_then() {
        let mut store = MemoryStore::default();
        fold_all(&mut store, &onboarded());
        assert_eq!(device(&mut store).manifest_version, 1);
        let stop = envelope(crate::work::AGGREGATE_TYPE, &NodeWork::Stop { deployment: "d1".into() });
        let start = envelope(crate::work::AGGREGATE_TYPE, &NodeWork::Start { deployment: "d1".into() });
        let refresh = envelope(crate::work::AGGREGATE_TYPE, &NodeWork::Refresh { deployment: "d1".into() });
        let remove = envelope(crate::work::AGGREGATE_TYPE, &NodeWork::Remove { deployment: "d1".into() });
        let steps = [
            (deploy("d1", "1.0.0", Mode::default()), 2, 1),
            (refresh, 2, 1),
            (stop, 3, 0),
            (start, 4, 1),
            (remove, 5, 0),
        ];
        for (envelope, version, listed) in steps {
            fold_all(&mut store, std::slice::from_ref(&envelope));
            let device = device(&mut store);
            assert_eq!((device.manifest_version, device.listed().count()), (version, listed), "{envelope:?}");
        }
    }

    #[test]
    fn a_staged_version_is_listed_once_applied() {
        let mut store = MemoryStore::default();
        fold_all(&mut store, &onboarded());
        fold_all(&mut store, &[deploy("d1", "1.0.0", Mode { staged: true, instantly_apply: false })]);
        assert_eq!(device(&mut store).listed().count(), 0);
        assert_eq!(device(&mut store).manifest_version, 1);
        fold_all(&mut store, &[envelope(crate::work::AGGREGATE_TYPE, &NodeWork::Apply { deployment: "d1".into() })]);
        assert_eq!(device(&mut store).listed().count(), 1);
    }

    #[test]
    fn a_staged_update_keeps_the_running_version_listed_until_applied() {
        let mut store = MemoryStore::default();
        fold_all(&mut store, &onboarded());
        fold_all(&mut store, &[deploy("d1", "1.0.0", Mode::default())]);
        let update = NodeWork::Update {
            deployment: "d1".into(),
            version: "1.1.0".into(),
            image: "127.0.0.1:5000/sample/app:1.1.0".into(),
            mode: Mode { staged: true, instantly_apply: false },
            env: Default::default(),
            services: vec![],
            secrets: Default::default(),
        };
        fold_all(&mut store, &[envelope(crate::work::AGGREGATE_TYPE, &update)]);
        let listed = |store: &mut MemoryStore| -> Vec<String> {
            device(store).listed().map(|(_, a)| a.version.clone()).collect()
        };
        assert_eq!(listed(&mut store), ["1.0.0"], "the running version stays until the apply");
        fold_all(&mut store, &[envelope(crate::work::AGGREGATE_TYPE, &NodeWork::Apply { deployment: "d1".into() })]);
        assert_eq!(listed(&mut store), ["1.1.0"]);
    }

    #[test]
    fn a_certificate_admitted_in_another_tenant_too_stays_with_the_first_device() {
        let mut store = MemoryStore::default();
        fold_all(&mut store, &onboarded());
        let mut other =
            envelope("node", &NodeEvent::MargoAdmitted { fingerprint: FINGERPRINT.into(), labels: Default::default() });
        other.tenant = "rival".into();
        fold_all(&mut store, &[other]);
        let holder = store.get::<DeviceRef>(&fingerprint_key(FINGERPRINT)).unwrap();
        assert_eq!(holder, Some(DeviceRef { tenant: "acme".into(), node: "dev-1".into() }));
        let deleted = {
            let mut e = envelope("tenant", &crate::tenant::TenantEvent::Deleted { at: now() });
            e.tenant = "rival".into();
            e.aggregate_id = "rival".into();
            e
        };
        fold_all(&mut store, &[deleted]);
        assert!(
            store.get::<DeviceRef>(&fingerprint_key(FINGERPRINT)).unwrap().is_some(),
            "the rival's deletion keeps it"
        );
    }

    #[test]
    fn work_for_a_native_node_keeps_nothing() {
        let mut store = MemoryStore::default();
        fold_all(&mut store, &[deploy("d1", "1.0.0", Mode::default())]);
        assert_eq!(store.keys("m/").unwrap(), Vec::<String>::new());
    }
}
