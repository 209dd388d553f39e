//! One deployment on one node: what that node says of it.
//!
//! Each (deployment, node) pair is an aggregate of its own, on subject
//! `ev.<tenant>.deployment_node.<deployment>.<node>` (its id is `<deployment>.<node>`), so
//! the reports of a fleet's nodes are appended side by side instead of one after the other on
//! the deployment's subject. The deployment's roll-up is folded in the projection
//! (`crate::projection::deployments`), which reads both.
//!
//! A report is checked against what the deployment asks of the node ([`Seen`]), as the engine
//! last read it: the node must be a target, and a report of a version older than the one the
//! node was sent changes nothing. The view the engine read may be behind the log, so each
//! recorded report names its version and every fold checks it again against the deployment as
//! of that point of the log. The decisions that need the whole deployment (a phased rollout's
//! waves, its failure threshold, a guarded update's rollback) are the deployment's: the engine
//! passes settled reports on to it (`DeploymentCommand::SettleNodes`).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::aggregate::{event_payload, Aggregate, Ctx};
use crate::deployment::DeploymentRejection;
use crate::envelope::Order;
use crate::status::{Containers, Failure, Status};

/// The aggregate type, the subject's third token.
pub const TYPE: &str = "deployment_node";

/// The id of the pair: `<deployment>.<node>`, two tokens of its subject.
pub fn id(deployment: &str, node: &str) -> String {
    format!("{deployment}.{node}")
}

/// The deployment and the node of a pair's id.
pub fn split(id: &str) -> Option<(&str, &str)> {
    id.split_once('.').filter(|(deployment, node)| !deployment.is_empty() && !node.is_empty() && !node.contains('.'))
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeploymentNode {
    /// The last report taken, when the engine took it, and where it stood among the node's.
    pub status: Option<Status>,
    pub error: Option<Failure>,
    pub containers: Containers,
    pub reported_at: Option<DateTime<Utc>>,
    pub order: Option<Order>,
    /// The deployment's requests seen when that report was taken (`Seen::requests`).
    pub requests: u64,
    /// The status the engine last found overdue, and since when; none once a report came.
    pub overdue: Option<(Status, DateTime<Utc>)>,
}

/// What the deployment asks of the node, as the engine read it when the report came.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seen {
    /// The node is one of its targets (active or not: a node that left keeps reporting its
    /// removal).
    pub target: bool,
    /// The version it runs now, and whether the node was sent it.
    pub version: String,
    pub released: bool,
    /// How many requests (launch, stop, update...) it had: a report like the last one still
    /// counts once a request came between them.
    pub requests: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum DeploymentNodeCommand {
    Report {
        node: String,
        seen: Seen,
        /// The version the node speaks of; empty when it did not say.
        version: String,
        status: Status,
        error: Option<Failure>,
        containers: Containers,
        /// When the engine took the report, by its own clock: every duration is the engine's.
        reported_at: DateTime<Utc>,
        /// Where the report stands among the node's (its outbox's count); none from a node
        /// that does not number its reports.
        order: Option<Order>,
    },
    /// The engine found the node in `status` since `since`, past that status's deadline
    /// (`crate::status::Deadlines`).
    MarkOverdue { status: Status, since: DateTime<Utc> },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeploymentNodeEvent {
    StateReported {
        /// The version the node speaks of; empty when it did not say.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        version: String,
        status: Status,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<Failure>,
        #[serde(default, skip_serializing_if = "Containers::is_empty")]
        containers: Containers,
        reported_at: DateTime<Utc>,
        /// The deployment's requests the engine had seen.
        #[serde(default)]
        requests: u64,
        /// Where the report stood among the node's.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        order: Option<Order>,
    },
    /// The node has been in `status` since `since` (both as the read model had them), and
    /// the engine waited `waited_ms` for it, past the status's deadline. A later report still
    /// counts, and ends it.
    Overdue { status: Status, since: DateTime<Utc>, waited_ms: u64 },
}

event_payload!(DeploymentNodeEvent, "deployment_node", {
    StateReported => "state_reported",
    Overdue => "overdue",
});

impl Aggregate for DeploymentNode {
    const TYPE: &'static str = TYPE;
    type Command = DeploymentNodeCommand;
    type Event = DeploymentNodeEvent;
    type Rejection = DeploymentRejection;

    fn decide(
        &self,
        command: &DeploymentNodeCommand,
        ctx: &Ctx,
    ) -> Result<Vec<DeploymentNodeEvent>, DeploymentRejection> {
        use DeploymentRejection as R;
        let (node, seen, version, status, error, containers, reported_at, order) = match command {
            DeploymentNodeCommand::Report { node, seen, version, status, error, containers, reported_at, order } => {
                (node, seen, version, status, error, containers, reported_at, order)
            }
            DeploymentNodeCommand::MarkOverdue { status, since } => {
                // Once: and not when the node said something since.
                let answered = self.reported_at.is_some_and(|last| last > *since);
                if answered || self.overdue == Some((*status, *since)) {
                    return Ok(vec![]);
                }
                let waited_ms = u64::try_from(ctx.now.signed_duration_since(*since).num_milliseconds()).unwrap_or(0);
                return Ok(vec![DeploymentNodeEvent::Overdue { status: *status, since: *since, waited_ms }]);
            }
        };
        if !seen.target {
            return Err(R::NotATarget(node.clone()));
        }
        // Said of a version before the one the node was sent since: it answers nothing.
        if !version.is_empty() && *version != seen.version && seen.released {
            return Ok(vec![]);
        }
        if status.is_pending() {
            return Err(R::NotANodeStatus(*status));
        }
        if *status == Status::Failed && error.is_none() {
            return Err(R::FailureWithoutError);
        }
        // The deployment's status is the most severe of its containers'.
        if let Some((name, worse)) = containers.iter().find(|(_, c)| c.status.severity() > status.severity()) {
            return Err(R::BelowContainer { status: *status, container: name.clone(), its: worse.status });
        }
        // Made before the last one taken, by the node's own count (never by its clock).
        let stale = self.order.zip(*order).is_some_and(|(last, this)| this.precedes(&last));
        let same = self.status == Some(*status)
            && self.error == *error
            && self.containers == *containers
            && self.requests == seen.requests;
        if stale || same {
            return Ok(vec![]);
        }
        Ok(vec![DeploymentNodeEvent::StateReported {
            version: version.clone(),
            status: *status,
            error: error.clone(),
            containers: containers.clone(),
            reported_at: *reported_at,
            requests: seen.requests,
            order: *order,
        }])
    }

    fn evolve(mut self, event: &DeploymentNodeEvent) -> DeploymentNode {
        let (status, error, containers, reported_at, requests, order) = match event {
            DeploymentNodeEvent::StateReported { status, error, containers, reported_at, requests, order, .. } => {
                (status, error, containers, reported_at, requests, order)
            }
            DeploymentNodeEvent::Overdue { status, since, .. } => {
                self.overdue = Some((*status, *since));
                return self;
            }
        };
        self.overdue = None;
        self.status = Some(*status);
        self.order = *order;
        self.error = error.clone();
        self.containers = containers.clone();
        self.reported_at = Some(*reported_at);
        self.requests = *requests;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::ContainerStatus;
    use crate::testing::{given, now};
    use DeploymentNodeCommand as C;
    use DeploymentNodeEvent as E;
    use DeploymentRejection as R;

    fn seen() -> Seen {
        Seen { target: true, version: "1.0.0".into(), released: true, requests: 1 }
    }

    fn report(status: Status, error: Option<Failure>) -> C {
        C::Report {
            node: "edge-1".into(),
            seen: seen(),
            version: String::new(),
            status,
            error,
            containers: Containers::new(),
            reported_at: now(),
            order: None,
        }
    }

    fn reported(status: Status, error: Option<Failure>) -> E {
        E::StateReported {
            version: String::new(),
            status,
            error,
            containers: Containers::new(),
            reported_at: now(),
            requests: 1,
            order: None,
        }
    }

    #[test]
    fn the_id_holds_the_deployment_and_the_node() {
        assert_eq!(id("d1", "edge-1"), "d1.edge-1");
        assert_eq!(split("d1.edge-1"), Some(("d1", "edge-1")));
        assert_eq!(split("d1"), None);
        assert_eq!(split("d1.a.b"), None);
        assert_eq!(split(".edge-1"), None);
    }

    #[test]
    fn report_node_state() {
        let state =
            given::<DeploymentNode>([]).when(report(Status::Running, None)).then([reported(Status::Running, None)]);
        assert_eq!(state.status, Some(Status::Running));
    }

    #[test]
    fn report_a_failure_with_its_error() {
        let error = Failure { code: "image_not_found".into(), message: "manifest unknown".into() };
        given::<DeploymentNode>([])
            .when(report(Status::Failed, Some(error.clone())))
            .then([reported(Status::Failed, Some(error))]);
    }

    #[test]
    fn report_the_same_state_again_changes_nothing() {
        given::<DeploymentNode>([reported(Status::Running, None)]).when(report(Status::Running, None)).then([]);
    }

    #[test]
    fn the_same_state_after_a_request_is_reported_again() {
        let mut again = report(Status::Running, None);
        let C::Report { seen, .. } = &mut again else { unreachable!() };
        seen.requests = 2;
        let events = given::<DeploymentNode>([reported(Status::Running, None)]).when(again).events();
        assert!(matches!(events[..], [E::StateReported { status: Status::Running, requests: 2, .. }]));
    }

    fn numbered(status: Status, epoch: u64, sequence: u64) -> C {
        let mut numbered = report(status, None);
        let C::Report { order, .. } = &mut numbered else { unreachable!() };
        *order = Some(Order { epoch, sequence });
        numbered
    }

    fn taken(status: Status, epoch: u64, sequence: u64) -> E {
        let mut taken = reported(status, None);
        let E::StateReported { order, .. } = &mut taken else { unreachable!() };
        *order = Some(Order { epoch, sequence });
        taken
    }

    #[test]
    fn a_report_the_node_made_before_the_last_one_changes_nothing() {
        given::<DeploymentNode>([taken(Status::Running, 1, 7)]).when(numbered(Status::Downloading, 1, 5)).then([]);
    }

    #[test]
    fn the_nodes_count_orders_its_reports_whatever_its_clock_said() {
        // The engine takes each report at its own time; a node whose clock stepped back an
        // hour (or was a day ahead) is ordered by its count alone, and never frozen.
        let mut taken_late = taken(Status::Downloading, 1, 5);
        let E::StateReported { reported_at, .. } = &mut taken_late else { unreachable!() };
        *reported_at = now() + chrono::Duration::days(1);
        let events = given::<DeploymentNode>([taken_late]).when(numbered(Status::Running, 1, 6)).events();
        assert!(matches!(events[..], [E::StateReported { status: Status::Running, .. }]), "{events:?}");
        // A node whose local state was wiped counts again from the start, in a new epoch.
        let events =
            given::<DeploymentNode>([taken(Status::Running, 1, 900)]).when(numbered(Status::Stopped, 2, 1)).events();
        assert!(matches!(events[..], [E::StateReported { status: Status::Stopped, .. }]), "{events:?}");
    }

    #[test]
    fn a_status_past_its_deadline_is_recorded_overdue_once_and_a_later_report_ends_it() {
        let since = now() - chrono::Duration::minutes(20);
        let overdue = E::Overdue { status: Status::Downloading, since, waited_ms: 1_200_000 };
        let mark = C::MarkOverdue { status: Status::Downloading, since };
        let marked = given::<DeploymentNode>([]).when(mark.clone()).then([overdue.clone()]);
        assert_eq!(marked.overdue, Some((Status::Downloading, since)));
        given::<DeploymentNode>([overdue.clone()]).when(mark.clone()).then([]);
        let after = given::<DeploymentNode>([overdue]).when(report(Status::Running, None)).events();
        assert_eq!(after.iter().fold(marked, DeploymentNode::evolve).overdue, None);
        // The node answered after the status the read model showed: nothing is overdue.
        given::<DeploymentNode>([reported(Status::Running, None)]).when(mark).then([]);
    }

    #[test]
    fn report_from_a_node_that_is_not_a_target_is_rejected() {
        let mut stray = report(Status::Running, None);
        let C::Report { seen, .. } = &mut stray else { unreachable!() };
        seen.target = false;
        given::<DeploymentNode>([]).when(stray).then_rejected(R::NotATarget("edge-1".into()));
    }

    #[test]
    fn report_of_the_servers_own_status_is_rejected() {
        for pending in [Status::PendingDeploy, Status::PendingStop] {
            given::<DeploymentNode>([]).when(report(pending, None)).then_rejected(R::NotANodeStatus(pending));
        }
    }

    #[test]
    fn report_of_a_failure_without_an_error_is_rejected() {
        given::<DeploymentNode>([]).when(report(Status::Failed, None)).then_rejected(R::FailureWithoutError);
    }

    #[test]
    fn a_status_milder_than_a_containers_is_rejected() {
        let mut containers = Containers::new();
        containers.insert("db".into(), ContainerStatus { status: Status::Failed, error: None });
        let mut command = report(Status::Running, None);
        let C::Report { containers: theirs, .. } = &mut command else { unreachable!() };
        *theirs = containers;
        given::<DeploymentNode>([]).when(command).then_rejected(R::BelowContainer {
            status: Status::Running,
            container: "db".into(),
            its: Status::Failed,
        });
    }

    #[test]
    fn a_report_of_the_version_before_an_update_answers_nothing() {
        let of = |of: &str| {
            let mut command = report(Status::Running, None);
            let C::Report { version, .. } = &mut command else { unreachable!() };
            *version = of.into();
            command
        };
        given::<DeploymentNode>([]).when(of("0.9.0")).then([]);
        let mut held_back = of("0.9.0");
        let C::Report { seen, .. } = &mut held_back else { unreachable!() };
        seen.released = false;
        let events = given::<DeploymentNode>([]).when(held_back).events();
        assert_eq!(events.len(), 1, "a node a rollout has not reached still runs the version before");
        let mut current = reported(Status::Running, None);
        let E::StateReported { version, .. } = &mut current else { unreachable!() };
        *version = "1.0.0".into();
        given::<DeploymentNode>([]).when(of("1.0.0")).then([current]);
    }
}
