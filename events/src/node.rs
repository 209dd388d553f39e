//! An edge node as the engine knows it: its labels, whether it is online, when it was last
//! heard from.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use crate::aggregate::{event_payload, Aggregate, Ctx};
use crate::subject::check_token;

/// Heartbeats closer together than this are not worth an event in the log.
pub const HEARTBEAT_RECORD_INTERVAL: Duration = Duration::seconds(60);

pub type Labels = BTreeMap<String, String>;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Node {
    pub registered: bool,
    pub labels: Labels,
    pub state: Option<NodeState>,
    pub last_heartbeat: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    Online,
    Offline,
    /// Its heartbeats stopped: the engine does not know what it runs now. The last known state
    /// of its deployments stands.
    Unreachable,
}

#[derive(Debug, Clone, PartialEq)]
pub enum NodeCommand {
    /// Registers the node, or changes its labels if it is registered already.
    Register {
        labels: Labels,
    },
    ReportState {
        state: NodeState,
    },
    Heartbeat,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeEvent {
    Registered { labels: Labels },
    LabelsChanged { labels: Labels },
    StateChanged { state: NodeState },
    HeartbeatRecorded { at: DateTime<Utc> },
}

event_payload!(NodeEvent, "node", {
    Registered => "registered",
    LabelsChanged => "labels_changed",
    StateChanged => "state_changed",
    HeartbeatRecorded => "heartbeat_recorded",
});

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeRejection {
    #[error("the node is not registered")]
    NotRegistered,
    #[error("label {0}")]
    InvalidLabel(String),
}

impl Aggregate for Node {
    const TYPE: &'static str = "node";
    type Command = NodeCommand;
    type Event = NodeEvent;
    type Rejection = NodeRejection;

    fn decide(&self, command: &NodeCommand, ctx: &Ctx) -> Result<Vec<NodeEvent>, NodeRejection> {
        match command {
            NodeCommand::Register { labels } => {
                for key in labels.keys() {
                    check_token("key", key).map_err(NodeRejection::InvalidLabel)?;
                }
                Ok(match self.registered {
                    false => vec![NodeEvent::Registered { labels: labels.clone() }],
                    true if self.labels != *labels => vec![NodeEvent::LabelsChanged { labels: labels.clone() }],
                    true => vec![],
                })
            }
            _ if !self.registered => Err(NodeRejection::NotRegistered),
            NodeCommand::ReportState { state } if self.state == Some(*state) => Ok(vec![]),
            NodeCommand::ReportState { state } => Ok(vec![NodeEvent::StateChanged { state: *state }]),
            NodeCommand::Heartbeat => {
                let mut events = Vec::new();
                if self.state != Some(NodeState::Online) {
                    events.push(NodeEvent::StateChanged { state: NodeState::Online });
                }
                let due = self.last_heartbeat.is_none_or(|last| ctx.now - last >= HEARTBEAT_RECORD_INTERVAL);
                if due {
                    events.push(NodeEvent::HeartbeatRecorded { at: ctx.now });
                }
                Ok(events)
            }
        }
    }

    fn evolve(mut self, event: &NodeEvent) -> Node {
        match event {
            NodeEvent::Registered { labels } => {
                self.registered = true;
                self.labels = labels.clone();
            }
            NodeEvent::LabelsChanged { labels } => self.labels = labels.clone(),
            NodeEvent::StateChanged { state } => self.state = Some(*state),
            NodeEvent::HeartbeatRecorded { at } => self.last_heartbeat = Some(*at),
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{given, now};
    use NodeCommand as C;
    use NodeEvent as E;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn register() {
        given::<Node>([])
            .when(C::Register { labels: labels(&[("site", "north")]) })
            .then([E::Registered { labels: labels(&[("site", "north")]) }]);
    }

    #[test]
    fn register_again_with_the_same_labels_changes_nothing() {
        given::<Node>([E::Registered { labels: labels(&[("site", "north")]) }])
            .when(C::Register { labels: labels(&[("site", "north")]) })
            .then([]);
    }

    #[test]
    fn register_again_with_other_labels_changes_them() {
        given::<Node>([E::Registered { labels: labels(&[("site", "north")]) }])
            .when(C::Register { labels: labels(&[("site", "south")]) })
            .then([E::LabelsChanged { labels: labels(&[("site", "south")]) }]);
    }

    #[test]
    fn register_with_a_bad_label_key_is_rejected() {
        given::<Node>([])
            .when(C::Register { labels: labels(&[("a.b", "x")]) })
            .then_rejected(NodeRejection::InvalidLabel("key `a.b` has `.`: use letters, digits, `-` and `_`".into()));
    }

    #[test]
    fn changing_to_a_bad_label_key_is_rejected() {
        given::<Node>([E::Registered { labels: labels(&[("site", "north")]) }])
            .when(C::Register { labels: labels(&[("bad key", "x")]) })
            .then_rejected(NodeRejection::InvalidLabel(
                "key `bad key` has ` `: use letters, digits, `-` and `_`".into(),
            ));
    }

    #[test]
    fn report_state() {
        given::<Node>([E::Registered { labels: Labels::new() }])
            .when(C::ReportState { state: NodeState::Offline })
            .then([E::StateChanged { state: NodeState::Offline }]);
    }

    #[test]
    fn report_the_same_state_again_changes_nothing() {
        given::<Node>([E::Registered { labels: Labels::new() }, E::StateChanged { state: NodeState::Online }])
            .when(C::ReportState { state: NodeState::Online })
            .then([]);
    }

    #[test]
    fn report_state_of_an_unknown_node_is_rejected() {
        given::<Node>([]).when(C::ReportState { state: NodeState::Online }).then_rejected(NodeRejection::NotRegistered);
    }

    #[test]
    fn first_heartbeat_brings_the_node_online() {
        given::<Node>([E::Registered { labels: Labels::new() }])
            .when(C::Heartbeat)
            .then([E::StateChanged { state: NodeState::Online }, E::HeartbeatRecorded { at: now() }]);
    }

    #[test]
    fn heartbeats_are_recorded_at_most_once_an_interval() {
        let history = [
            E::Registered { labels: Labels::new() },
            E::StateChanged { state: NodeState::Online },
            E::HeartbeatRecorded { at: now() },
        ];
        given::<Node>(history.clone()).at(now() + Duration::seconds(10)).when(C::Heartbeat).then([]);
        let later = now() + HEARTBEAT_RECORD_INTERVAL;
        given::<Node>(history).at(later).when(C::Heartbeat).then([E::HeartbeatRecorded { at: later }]);
    }

    #[test]
    fn an_unreachable_node_is_back_online_with_its_next_heartbeat() {
        let history = [E::Registered { labels: Labels::new() }, E::StateChanged { state: NodeState::Online }];
        let state = given::<Node>(history.clone())
            .when(C::ReportState { state: NodeState::Unreachable })
            .then([E::StateChanged { state: NodeState::Unreachable }]);
        assert_eq!(state.state, Some(NodeState::Unreachable));
        let mut history = history.to_vec();
        history.push(E::StateChanged { state: NodeState::Unreachable });
        given::<Node>(history)
            .when(C::Heartbeat)
            .then([E::StateChanged { state: NodeState::Online }, E::HeartbeatRecorded { at: now() }]);
    }

    #[test]
    fn heartbeat_of_an_unknown_node_is_rejected() {
        given::<Node>([]).when(C::Heartbeat).then_rejected(NodeRejection::NotRegistered);
    }
}
