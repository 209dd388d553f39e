//! Golden bytes: one stored payload of every event type at every schema version it has had,
//! under `tests/fixtures/<type>@<version>.hex`. Each must still read as the event it was,
//! lifted to the current version by the upcasters; and an event written today must give the
//! bytes of its current version's fixture, so no change to the wire goes unnoticed.
//!
//! `UPDATE_FIXTURES=1 cargo test -p events --test golden` writes the fixtures of the current
//! versions that are missing; an old version's fixture is never rewritten.

use std::collections::BTreeMap;
use std::path::PathBuf;

use chrono::{DateTime, Utc};

use events::application::{ApplicationEvent, Settings};
use events::compose::Service;
use events::deployment::{DeploymentEvent, Mode, Rollout, Settled};
use events::deployment_node::DeploymentNodeEvent;
use events::node::{NodeEvent, NodeState};
use events::report::NodeReport;
use events::tenant::TenantEvent;
use events::token::{Role, TokenEvent};
use events::work::NodeWork;
use events::{ContainerStatus, EventPayload, Failure, Status};

const KEY: &str = "UAHLWS7HGC6VE4PNB2YOXOTWKSJ4N2P3HVO74O4ZIWRR7C7QKEGHBQ7S";
const OTHER_KEY: &str = "UCUCZLWBN4A2U3ARBR3BVAFWTIPAYE63PHH7TPWMOZNCXQMVCPKIXCOE";

fn at() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-03-01T12:00:00Z").unwrap().to_utc()
}

fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn service() -> Service {
    Service {
        name: "web".into(),
        image: "127.0.0.1:5000/sample/app:1.0.0".into(),
        command: vec!["httpd".into()],
        environment: map(&[("GREETING", "hi")]),
        ports: vec!["127.0.0.1:8080:80".into()],
        volumes: vec!["data:/data".into()],
        restart: Some("unless-stopped".into()),
        depends_on: vec!["db".into()],
        // No limits: a service without them is written as it was before they existed.
        limits: Default::default(),
        secrets: Default::default(),
    }
}

fn failure() -> Option<Failure> {
    Some(Failure { code: "image_not_found".into(), message: "manifest unknown".into() })
}

fn applications() -> Vec<ApplicationEvent> {
    let settings = Settings {
        parameters: map(&[("GREETING", "hello")]),
        profiles: [("test".to_owned(), map(&[("GREETING", "hi")]))].into(),
        secrets: Default::default(),
    };
    vec![
        ApplicationEvent::Registered { name: "Sample".into() },
        ApplicationEvent::VersionAdded {
            version: "1.0.0".into(),
            repository: "127.0.0.1:5000/sample/app".into(),
            tag: "1.0.0".into(),
            services: vec![service()],
            settings,
        },
        ApplicationEvent::VersionPublished { version: "1.0.0".into(), published_at: at(), digests: Default::default() },
    ]
}

fn deployments() -> Vec<DeploymentEvent> {
    let rollout = Some(Rollout { batch: 25, percent: true, max_failures: 1 });
    let mode = Mode { staged: true, instantly_apply: false };
    vec![
        DeploymentEvent::Launched {
            application: "sample".into(),
            version: "1.0.0".into(),
            image: "127.0.0.1:5000/sample/app:1.0.0".into(),
            nodes: vec!["edge-1".into()],
            mode,
            selector: Some(map(&[("site", "lab")])),
            profile: Some("test".into()),
            overrides: map(&[("GREETING", "hi")]),
            env: map(&[("GREETING", "hi")]),
            services: vec![service()],
            rollout,
            // Written since the first version, absent when empty: the fixture has none.
            secrets: BTreeMap::new(),
        },
        DeploymentEvent::StopRequested { at: at() },
        DeploymentEvent::StartRequested { at: at() },
        DeploymentEvent::UninstallRequested { at: at() },
        DeploymentEvent::UpdateRequested {
            from_version: "1.0.0".into(),
            version: "1.1.0".into(),
            image: "127.0.0.1:5000/sample/app:1.1.0".into(),
            mode,
            env: map(&[("GREETING", "hi")]),
            services: vec![],
            rollout,
            rollback_within: Some(30),
            reconfigured: None,
            at: at(),
        },
        DeploymentEvent::RolledBack {
            from_version: "1.1.0".into(),
            version: "1.0.0".into(),
            image: "127.0.0.1:5000/sample/app:1.0.0".into(),
            env: BTreeMap::new(),
            services: vec![],
            reconfigured: None,
            reason: "1.1.0 did not start on edge-1".into(),
            at: at(),
        },
        DeploymentEvent::ApplyRequested { at: at() },
        DeploymentEvent::ForceUpdateRequested { at: at(), image: String::new(), services: vec![] },
        DeploymentEvent::TargetAdded { node: "edge-2".into(), reason: "node `edge-2` matches site=lab".into() },
        DeploymentEvent::TargetRemoved { node: "edge-2".into(), reason: "node `edge-2` no longer matches".into() },
        DeploymentEvent::NodeStateReported {
            node: "edge-1".into(),
            status: Status::Failed,
            error: failure(),
            containers: [("sample-d1-edge-1".to_owned(), ContainerStatus { status: Status::Failed, error: failure() })]
                .into(),
            reported_at: at(),
        },
        DeploymentEvent::DriftDetected {
            node: "edge-1".into(),
            container: "sample-d1-edge-1".into(),
            drift: "stopped".into(),
            at: at(),
        },
        DeploymentEvent::AppliedLocally { node: "edge-1".into(), at: at() },
        DeploymentEvent::WaveReleased { nodes: vec!["edge-1".into(), "edge-2".into()] },
        DeploymentEvent::RolloutHalted { reason: "1 node(s) failed".into() },
        DeploymentEvent::NodeRevoked { node: "edge-1".into() },
        DeploymentEvent::NodesSettled {
            nodes: vec![
                Settled {
                    node: "edge-1".into(),
                    status: Status::Failed,
                    error: Some(Failure { code: "image_not_found".into(), message: "manifest unknown".into() }),
                    reported_at: at(),
                },
                Settled { node: "edge-2".into(), status: Status::Running, error: None, reported_at: at() },
            ],
        },
    ]
}

fn deployment_nodes() -> Vec<DeploymentNodeEvent> {
    vec![
        DeploymentNodeEvent::StateReported {
            version: "1.0.0".into(),
            status: Status::Running,
            error: None,
            containers: [("web".to_owned(), ContainerStatus { status: Status::Running, error: None })].into(),
            reported_at: at(),
            requests: 3,
            order: None,
        },
        DeploymentNodeEvent::Overdue { status: Status::Downloading, since: at(), waited_ms: 1_800_000 },
    ]
}

fn nodes() -> Vec<NodeEvent> {
    vec![
        NodeEvent::Enrolled { public_key: KEY.into(), labels: map(&[("site", "lab")]) },
        NodeEvent::KeyRotated { public_key: OTHER_KEY.into(), previous: KEY.into() },
        NodeEvent::Revoked { public_key: OTHER_KEY.into() },
        NodeEvent::Registered { labels: map(&[("site", "lab")]) },
        NodeEvent::LabelsChanged { labels: map(&[("site", "plant")]) },
        NodeEvent::StateChanged { state: NodeState::Unreachable },
        NodeEvent::HeartbeatRecorded { at: at() },
        NodeEvent::ReportRefused { sequence: 42, reason: "the report is not signed".into() },
    ]
}

fn work() -> Vec<NodeWork> {
    let mode = Mode::default();
    let d = || "d1".to_owned();
    vec![
        NodeWork::Deploy {
            deployment: d(),
            application: "sample".into(),
            version: "1.0.0".into(),
            image: "127.0.0.1:5000/sample/app:1.0.0".into(),
            mode,
            env: map(&[("GREETING", "hi")]),
            services: vec![service()],
            secrets: BTreeMap::new(),
        },
        NodeWork::Stop { deployment: d() },
        NodeWork::Start { deployment: d() },
        NodeWork::Remove { deployment: d() },
        NodeWork::Update {
            deployment: d(),
            version: "1.1.0".into(),
            image: "127.0.0.1:5000/sample/app:1.1.0".into(),
            mode,
            env: BTreeMap::new(),
            services: vec![],
            secrets: BTreeMap::new(),
        },
        NodeWork::Apply { deployment: d() },
        NodeWork::Refresh { deployment: d() },
    ]
}

fn reports() -> Vec<NodeReport> {
    vec![
        NodeReport::Online { labels: map(&[("site", "lab")]), agent_version: "0.1.0".into() },
        NodeReport::DeploymentState {
            deployment: "d1".into(),
            version: "1.0.0".into(),
            status: Status::Running,
            error: None,
            containers: [("sample-d1-edge-1".to_owned(), ContainerStatus { status: Status::Running, error: None })]
                .into(),
        },
        NodeReport::Drift { deployment: "d1".into(), container: "sample-d1-edge-1".into(), drift: "removed".into() },
        NodeReport::AppliedLocally { deployment: "d1".into() },
        NodeReport::WorkSetAside { sequence: 42, reason: "not an event envelope: wrong msgpack marker".into() },
    ]
}

fn tenants() -> Vec<TenantEvent> {
    vec![
        TenantEvent::Deleted { at: at() },
        TenantEvent::PolicySet { binds: vec!["/srv/acme".into()], registries: vec!["127.0.0.1:5000".into()], at: at() },
    ]
}

fn tokens() -> Vec<TokenEvent> {
    vec![
        TokenEvent::Issued {
            subject: "alice".into(),
            tenant: Some("acme".into()),
            roles: [Role::Operator, Role::Auditor].into(),
            secret_sha256: "ab".repeat(32),
            at: at(),
        },
        TokenEvent::Revoked { at: at() },
    ]
}

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Every fixture of `E`'s types: current ones compared byte for byte, older ones read and
/// lifted. Returns the event types seen, to check that none is missing a fixture.
fn check<E: EventPayload + PartialEq + std::fmt::Debug>(samples: Vec<E>) -> Vec<String> {
    let update = std::env::var("UPDATE_FIXTURES").is_ok();
    let mut seen = Vec::new();
    for sample in samples {
        let (event_type, current) = (sample.event_type(), sample.schema_version());
        seen.push(event_type.to_owned());
        let path = fixtures().join(format!("{event_type}@{current}.hex"));
        let bytes = sample.to_payload();
        if update && !path.exists() {
            std::fs::write(&path, hex::encode(&bytes) + "\n").unwrap();
        }
        let stored = std::fs::read_to_string(&path)
            .unwrap_or_else(|_| panic!("no fixture {}: run with UPDATE_FIXTURES=1", path.display()));
        assert_eq!(hex::encode(&bytes), stored.trim(), "{event_type} v{current} is no longer written as its fixture");
        for version in 1..=current {
            let path = fixtures().join(format!("{event_type}@{version}.hex"));
            let Ok(stored) = std::fs::read_to_string(&path) else {
                panic!("{event_type} has no fixture of version {version}")
            };
            let read = E::from_payload(event_type, version, &hex::decode(stored.trim()).unwrap());
            assert_eq!(read.as_ref().ok(), Some(&sample), "{event_type} v{version} does not read as today's: {read:?}");
        }
    }
    seen
}

/// The row of `event_type` in EVENTS.md: its version and fields cells.
fn documented(doc: &str, event_type: &str) -> Option<(String, String)> {
    let row = doc.lines().find(|l| l.starts_with(&format!("| `{event_type}` |")))?;
    let cells: Vec<&str> = row.split('|').map(str::trim).collect();
    Some((cells.get(2)?.to_string(), cells.get(3)?.to_string()))
}

/// EVENTS.md lists every event type at its current version, with every field it writes.
fn check_documented<E: EventPayload + serde::Serialize>(doc: &str, samples: &[E]) {
    for sample in samples {
        let event_type = sample.event_type();
        let (version, fields) = documented(doc, event_type).unwrap_or_else(|| panic!("EVENTS.md lacks {event_type}"));
        assert_eq!(version, sample.schema_version().to_string(), "EVENTS.md: the version of {event_type}");
        let value = serde_json::to_value(sample).unwrap();
        for field in value.as_object().and_then(|o| o.values().next()).and_then(|v| v.as_object()).into_iter().flatten()
        {
            assert!(
                fields.contains(&format!("`{}`", field.0)),
                "EVENTS.md: {event_type} lacks the field `{}`",
                field.0
            );
        }
    }
}

#[test]
fn the_event_reference_is_the_code() {
    let doc = std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../EVENTS.md")).unwrap();
    check_documented(&doc, &applications());
    check_documented(&doc, &deployments());
    check_documented(&doc, &deployment_nodes());
    check_documented(&doc, &nodes());
    check_documented(&doc, &work());
    check_documented(&doc, &reports());
    check_documented(&doc, &tenants());
    check_documented(&doc, &tokens());
}

#[test]
fn every_event_type_at_every_version_reads_from_its_golden_bytes() {
    let mut seen = Vec::new();
    seen.extend(check(applications()));
    seen.extend(check(deployments()));
    seen.extend(check(deployment_nodes()));
    seen.extend(check(nodes()));
    seen.extend(check(work()));
    seen.extend(check(reports()));
    seen.extend(check(tenants()));
    seen.extend(check(tokens()));
    // No fixture without a sample: a type removed from the code would go unnoticed.
    for entry in std::fs::read_dir(fixtures()).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        let event_type = name.split('@').next().unwrap().to_owned();
        assert!(seen.contains(&event_type), "fixture {name} has no sample here");
    }
}
