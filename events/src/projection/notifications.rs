//! Update notifications: every live deployment running an older version of an application
//! than the newest published one shows a notification, cleared when it is updated or
//! uninstalled.
//!
//! The state is kept per application (its newest published version and its live deployments);
//! the caller stores it and routes deployment events to their application.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::application::ApplicationEvent;
use crate::deployment::DeploymentEvent;
use crate::envelope::Envelope;
use crate::projection::{Fact, ModelError, Store};

/// The prefixes of its keys that hold a tenant's: a tenant's deletion clears them.
pub const TENANT_PREFIXES: &[&str] = &["a/", "i/", "t/", "v/"];

/// The key of an application's newest published version.
pub fn key(tenant: &str, application: &str) -> String {
    format!("a/{tenant}/{application}")
}

/// The key of an application's published versions not withdrawn, with when each was published.
fn published_key(tenant: &str, application: &str) -> String {
    format!("v/{tenant}/{application}")
}

/// The prefix of the keys of an application's live deployments, each followed by its id: one
/// key each, so that an event of one deployment never rewrites them all.
pub fn tracked_prefix(tenant: &str, application: &str) -> String {
    format!("t/{tenant}/{application}/")
}

/// The key of the application a deployment belongs to.
fn index(tenant: &str, deployment: &str) -> String {
    format!("i/{tenant}/{deployment}")
}

/// Folds an application's event, or a deployment's routed to its application.
pub fn fold(store: &mut impl Store, envelope: &Envelope, fact: &Fact) -> Result<(), ModelError> {
    let tenant = &envelope.tenant;
    match fact {
        Fact::Application(event) => {
            let versions_key = published_key(tenant, &envelope.aggregate_id);
            let before = store.get::<BTreeMap<String, DateTime<Utc>>>(&versions_key)?.unwrap_or_default();
            let Some(published) = published_after(before, event) else { return Ok(()) };
            // The newest of them is what the deployments on older versions are told of.
            let key = key(tenant, &envelope.aggregate_id);
            match newest(&published) {
                Some(latest) => store.put(key, latest),
                None => store.remove(&key),
            }
            match published.is_empty() {
                true => store.remove(&versions_key),
                false => store.put(versions_key, published),
            }
            Ok(())
        }
        Fact::Deployment(event) => {
            // Most of a deployment's events change nothing tracked: its value, which lists every
            // node of the deployment, is read for the few that do.
            let Some(change) = Change::of(event) else { return Ok(()) };
            let index = index(tenant, &envelope.aggregate_id);
            let application = match event {
                DeploymentEvent::Launched { application, .. } => {
                    store.put(index, application.clone());
                    application.clone()
                }
                _ => match store.get::<String>(&index)? {
                    Some(application) => application,
                    None => return Ok(()),
                },
            };
            let key = format!("{}{}", tracked_prefix(tenant, &application), envelope.aggregate_id);
            let tracked = match change {
                // A launch tracks the deployment anew, whatever was tracked.
                Change::Launched(_) => None,
                _ => store.take::<Tracked>(&key)?,
            };
            let was = tracked.is_some();
            match change.apply(tracked) {
                Some(now) => store.put(key, now),
                None if was => store.remove(&key),
                None => {}
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// The newest published version after `event`, if it changed.
fn published_after(
    mut published: BTreeMap<String, DateTime<Utc>>,
    event: &ApplicationEvent,
) -> Option<BTreeMap<String, DateTime<Utc>>> {
    match event {
        ApplicationEvent::VersionPublished { version, published_at, .. } => {
            published.insert(version.clone(), *published_at);
        }
        ApplicationEvent::VersionWithdrawn { version, .. } => {
            published.remove(version);
        }
        ApplicationEvent::Deleted { .. } => published.clear(),
        ApplicationEvent::Registered { .. }
        | ApplicationEvent::VersionAdded { .. }
        | ApplicationEvent::VersionDeleted { .. } => return None,
    }
    Some(published)
}

/// The newest of the published versions, by semver.
fn newest(published: &BTreeMap<String, DateTime<Utc>>) -> Option<Published> {
    let (version, at) = published.iter().reduce(|a, b| if newer(b.0, a.0) { b } else { a })?;
    Some(Published { version: version.clone(), published_at: *at })
}

/// What a deployment's event changes of what is tracked of it.
enum Change<'a> {
    Launched(Tracked),
    /// Updated or rolled back to a version.
    Version(&'a str),
    /// A node added to its targets, or removed from them.
    Target {
        node: &'a str,
        added: bool,
    },
    Uninstalled,
}

impl<'a> Change<'a> {
    /// `None` for an event that leaves what is tracked as it is.
    fn of(event: &'a DeploymentEvent) -> Option<Change<'a>> {
        match event {
            DeploymentEvent::Launched { version, nodes, .. } => {
                Some(Change::Launched(Tracked { version: version.clone(), nodes: nodes.clone() }))
            }
            DeploymentEvent::UpdateRequested { version, .. } | DeploymentEvent::RolledBack { version, .. } => {
                Some(Change::Version(version))
            }
            DeploymentEvent::TargetAdded { node, .. } => Some(Change::Target { node, added: true }),
            DeploymentEvent::TargetRemoved { node, .. } => Some(Change::Target { node, added: false }),
            DeploymentEvent::UninstallRequested { .. } => Some(Change::Uninstalled),
            DeploymentEvent::StopRequested { .. }
            | DeploymentEvent::StartRequested { .. }
            | DeploymentEvent::ApplyRequested { .. }
            | DeploymentEvent::DriftDetected { .. }
            | DeploymentEvent::AppliedLocally { .. }
            | DeploymentEvent::WaveReleased { .. }
            | DeploymentEvent::RolloutHalted { .. }
            | DeploymentEvent::NodeRevoked { .. }
            | DeploymentEvent::ForceUpdateRequested { .. }
            | DeploymentEvent::NodeStateReported { .. }
            | DeploymentEvent::NodesSettled { .. } => None,
        }
    }

    /// What is tracked once changed; none once uninstalled.
    fn apply(self, tracked: Option<Tracked>) -> Option<Tracked> {
        match self {
            Change::Launched(now) => Some(now),
            Change::Version(version) => tracked.map(|t| Tracked { version: version.to_owned(), ..t }),
            Change::Target { node, added } => tracked.map(|mut t| {
                t.nodes.retain(|n| n != node);
                if added {
                    t.nodes.push(node.to_owned());
                }
                t
            }),
            Change::Uninstalled => None,
        }
    }
}

/// What is known of one application for its notifications, put together from its keys.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ApplicationUpdates {
    pub latest: Option<Published>,
    /// Its published versions not withdrawn, with when each was published.
    #[serde(default)]
    pub published: BTreeMap<String, DateTime<Utc>>,
    /// Live deployments of the application, by id.
    pub deployments: BTreeMap<String, Tracked>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Published {
    pub version: String,
    pub published_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tracked {
    pub version: String,
    pub nodes: Vec<String>,
}

/// "Deployment D on these nodes runs `current_version`; `available_version` is published."
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Notification {
    pub deployment: String,
    pub application: String,
    pub nodes: Vec<String>,
    pub current_version: String,
    pub available_version: String,
    pub published_at: DateTime<Utc>,
}

/// Whether semver `a` is newer than `b` (unparsable versions are never newer).
pub fn newer(a: &str, b: &str) -> bool {
    match (semver::Version::parse(a), semver::Version::parse(b)) {
        (Ok(a), Ok(b)) => a > b,
        _ => false,
    }
}

impl ApplicationUpdates {
    pub fn apply_application(&mut self, event: &ApplicationEvent) {
        if let Some(published) = published_after(self.published.clone(), event) {
            self.latest = newest(&published);
            self.published = published;
        }
    }

    /// Folds an event of deployment `id`, which belongs to this application.
    pub fn apply_deployment(&mut self, id: &str, event: &DeploymentEvent) {
        let Some(change) = Change::of(event) else { return };
        if let Some(tracked) = change.apply(self.deployments.remove(id)) {
            self.deployments.insert(id.to_owned(), tracked);
        }
    }

    /// The notifications of this application's deployments, by deployment id.
    pub fn notifications(&self, application: &str) -> Vec<Notification> {
        let Some(latest) = &self.latest else { return vec![] };
        self.deployments
            .iter()
            .filter(|(_, tracked)| newer(&latest.version, &tracked.version))
            .map(|(id, tracked)| Notification {
                deployment: id.clone(),
                application: application.to_owned(),
                nodes: tracked.nodes.clone(),
                current_version: tracked.version.clone(),
                available_version: latest.version.clone(),
                published_at: latest.published_at,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::now;

    fn published(version: &str) -> ApplicationEvent {
        ApplicationEvent::VersionPublished { version: version.into(), published_at: now(), digests: Default::default() }
    }

    fn launched(version: &str) -> DeploymentEvent {
        crate::testing::launched(version, &["edge-1"])
    }

    fn available(state: &ApplicationUpdates) -> Vec<(String, String, String)> {
        state
            .notifications("sample")
            .into_iter()
            .map(|n| (n.deployment, n.current_version, n.available_version))
            .collect()
    }

    #[test]
    fn publishing_a_newer_version_notifies_every_deployment_of_an_older_one() {
        let mut state = ApplicationUpdates::default();
        state.apply_application(&published("1.0.0"));
        state.apply_deployment("d1", &launched("1.0.0"));
        state.apply_deployment("d2", &launched("1.0.0"));
        assert_eq!(available(&state), []);
        state.apply_application(&published("1.1.0"));
        let expected = |d: &str| (d.to_owned(), "1.0.0".to_owned(), "1.1.0".to_owned());
        assert_eq!(available(&state), [expected("d1"), expected("d2")]);
    }

    #[test]
    fn publishing_an_older_version_after_a_newer_one_changes_nothing() {
        let mut state = ApplicationUpdates::default();
        state.apply_application(&published("2.0.0"));
        state.apply_application(&published("1.5.0"));
        assert_eq!(state.latest.as_ref().map(|l| l.version.as_str()), Some("2.0.0"));
    }

    #[test]
    fn withdrawing_the_newest_version_tells_of_the_newest_left_and_none_once_none_is() {
        let mut state = ApplicationUpdates::default();
        state.apply_application(&published("1.0.0"));
        state.apply_application(&published("1.1.0"));
        state.apply_deployment("d1", &launched("1.0.0"));
        let withdrawn = |version: &str| ApplicationEvent::VersionWithdrawn {
            version: version.into(),
            at: now(),
            reason: "broken".into(),
        };
        state.apply_application(&withdrawn("1.1.0"));
        assert_eq!(state.latest.as_ref().map(|l| l.version.as_str()), Some("1.0.0"));
        assert_eq!(available(&state), [], "d1 runs the newest left");
        state.apply_application(&withdrawn("1.0.0"));
        assert_eq!(state.latest, None);
        state.apply_application(&published("1.2.0"));
        state.apply_application(&ApplicationEvent::Deleted { at: now() });
        assert_eq!(state.latest, None, "a deleted application tells of nothing");
    }

    #[test]
    fn an_update_or_an_uninstall_clears_the_notification() {
        let mut state = ApplicationUpdates::default();
        state.apply_deployment("d1", &launched("1.0.0"));
        state.apply_deployment("d2", &launched("1.0.0"));
        state.apply_application(&published("1.1.0"));
        let update = DeploymentEvent::UpdateRequested {
            from_version: "1.0.0".into(),
            version: "1.1.0".into(),
            image: "x".into(),
            mode: Default::default(),
            env: Default::default(),
            at: now(),
            services: Default::default(),
            rollout: Default::default(),
            rollback_within: Default::default(),
            reconfigured: None,
        };
        state.apply_deployment("d1", &update);
        state.apply_deployment("d2", &DeploymentEvent::UninstallRequested { at: now() });
        assert_eq!(available(&state), []);
    }

    #[test]
    fn a_notification_names_the_nodes_the_deployment_targets_now() {
        let mut state = ApplicationUpdates::default();
        state.apply_deployment("d1", &crate::testing::launched("1.0.0", &["edge-1", "edge-2"]));
        state.apply_application(&published("1.1.0"));
        let target = |node: &str, added: bool| match added {
            true => DeploymentEvent::TargetAdded { node: node.into(), reason: "labels".into() },
            false => DeploymentEvent::TargetRemoved { node: node.into(), reason: "labels".into() },
        };
        state.apply_deployment("d1", &target("edge-3", true));
        state.apply_deployment("d1", &target("edge-1", false));
        state.apply_deployment("d1", &target("edge-3", true));
        let nodes: Vec<Vec<String>> = state.notifications("sample").into_iter().map(|n| n.nodes).collect();
        assert_eq!(nodes, [["edge-2", "edge-3"]], "added once however often it is added");
    }

    #[test]
    fn prereleases_order_by_semver() {
        assert!(newer("1.0.0", "1.0.0-4"));
        assert!(newer("1.10.0", "1.9.0"));
        assert!(!newer("1.0.0", "1.0.0"));
        assert!(!newer("garbage", "1.0.0"));
    }
}
