//! Summaries: how many deployment-node pairs are running, failed, pending or stopped, per
//! deployment, per node, and per application and version. Removed pairs are not counted.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::projection::deployments::DeploymentView;
use crate::status::Status;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Counts {
    pub running: u64,
    pub failed: u64,
    /// Anything on its way: the server's `pending_*`, and every step in flight or waiting for
    /// an apply.
    pub pending: u64,
    pub stopped: u64,
    pub total: u64,
}

impl Counts {
    fn add(&mut self, status: Status) {
        match status {
            Status::Removed => return,
            Status::Running => self.running = self.running.saturating_add(1),
            Status::Failed => self.failed = self.failed.saturating_add(1),
            Status::Stopped => self.stopped = self.stopped.saturating_add(1),
            _ => self.pending = self.pending.saturating_add(1),
        }
        self.total = self.total.saturating_add(1);
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Summary {
    pub by_deployment: BTreeMap<String, Counts>,
    pub by_node: BTreeMap<String, Counts>,
    /// Keyed `application@version`.
    pub by_application_version: BTreeMap<String, Counts>,
    pub overall: Counts,
}

/// Counts every node of every deployment in `views`.
pub fn summarize<'a>(views: impl IntoIterator<Item = &'a DeploymentView>) -> Summary {
    let mut summary = Summary::default();
    for view in views {
        for (node, progress) in &view.nodes {
            let status = progress.status;
            summary.by_deployment.entry(view.id.clone()).or_default().add(status);
            summary.by_node.entry(node.clone()).or_default().add(status);
            let key = format!("{}@{}", view.application, view.version);
            summary.by_application_version.entry(key).or_default().add(status);
            summary.overall.add(status);
        }
    }
    summary
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deployment::Desired;
    use crate::projection::deployments::NodeView;
    use crate::testing::now;

    fn view(id: &str, version: &str, nodes: &[(&str, Status)]) -> DeploymentView {
        DeploymentView {
            id: id.into(),
            tenant: "acme".into(),
            application: "sample".into(),
            version: version.into(),
            image: String::new(),
            status: Status::Running,
            desired: Desired::Running,
            staged: false,
            awaiting_apply: false,
            selector: None,
            profile: None,
            env: Default::default(),
            nodes: nodes
                .iter()
                .map(|(n, s)| {
                    (
                        n.to_string(),
                        NodeView {
                            active: true,
                            status: *s,
                            error: None,
                            reason: None,
                            updated_at: now(),
                            containers: Default::default(),
                            applied_locally: Default::default(),
                            last_drift: Default::default(),
                            released: Default::default(),
                            revoked: false,
                            unreachable: false,
                            overdue: None,
                        },
                    )
                })
                .collect(),
            launched_by: "ops".into(),
            created_at: now(),
            updated_at: now(),
            services: Default::default(),
            rollout: Default::default(),
            rollout_halted: Default::default(),
            rolled_back: Default::default(),
            secrets: Default::default(),
        }
    }

    #[test]
    fn counts_roll_up_per_deployment_node_and_version() {
        let views = [
            view("d1", "1.0.0", &[("edge-1", Status::Running), ("edge-2", Status::Failed)]),
            view("d2", "1.0.0", &[("edge-1", Status::Downloading), ("edge-2", Status::Stopped)]),
            view("d3", "1.1.0", &[("edge-1", Status::Ready), ("edge-2", Status::Removed)]),
        ];
        let summary = summarize(&views);
        let counts = |running, failed, pending, stopped| Counts {
            running,
            failed,
            pending,
            stopped,
            total: running + failed + pending + stopped,
        };
        assert_eq!(summary.by_deployment["d1"], counts(1, 1, 0, 0));
        assert_eq!(summary.by_deployment["d3"], counts(0, 0, 1, 0), "removed is not counted");
        assert_eq!(summary.by_node["edge-1"], counts(1, 0, 2, 0));
        assert_eq!(summary.by_node["edge-2"], counts(0, 1, 0, 1));
        assert_eq!(summary.by_application_version["sample@1.0.0"], counts(1, 1, 1, 1));
        assert_eq!(summary.by_application_version["sample@1.1.0"], counts(0, 0, 1, 0));
        assert_eq!(summary.overall, counts(1, 1, 2, 1));
    }
}
