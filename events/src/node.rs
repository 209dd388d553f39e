//! An edge node as the engine knows it: the key it was enrolled with (and those it no longer
//! may use), its labels, whether it is online, when it was last heard from.

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
    /// The public key its credential was issued to; its reports must be signed by it.
    pub key: Option<String>,
    /// Keys it held before, revoked: by a rotation, or with the node.
    pub revoked_keys: Vec<String>,
    /// Enrollment labels: the engine's word, which the node's own labels cannot override.
    pub enrolled_labels: Labels,
    pub registered: bool,
    pub labels: Labels,
    pub state: Option<NodeState>,
    pub last_heartbeat: Option<DateTime<Utc>>,
    /// Reports on its subject the engine refused, and the last of them.
    pub refused_reports: u64,
    pub last_refused: Option<Refused>,
    /// A Margo device's identity: the certificate it was admitted by, and once it onboarded
    /// the certificate itself and the client id it was given. None for a native node.
    pub margo: Option<MargoIdentity>,
}

/// How the engine knows a Margo device: by its X.509 certificate, not by a NATS key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MargoIdentity {
    /// `sha256:<hex>` of the certificate's DER bytes, as the operator admitted it.
    pub fingerprint: String,
    /// Its certificate (base64 DER) and client id, once it onboarded with it.
    pub certificate: Option<String>,
    pub client_id: Option<String>,
}

/// A report the engine refused: where it is in the log, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Refused {
    pub sequence: u64,
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum NodeState {
    Online,
    Offline,
    /// Its heartbeats stopped: the engine does not know what it runs now. The last known state
    /// of its deployments stands.
    Unreachable,
    /// Its credential was revoked: it is cut off from the bus and may not come back.
    Revoked,
}

#[derive(Debug, Clone, PartialEq)]
pub enum NodeCommand {
    /// Gives the node a credential for `public_key`: its first, or one that replaces the one
    /// it has (a rotation, which revokes the old key), or one after it was revoked.
    Enroll {
        public_key: String,
        labels: Labels,
    },
    /// Revokes the node's credential: the bus refuses it from now on.
    Revoke,
    /// Records that the report stored at `sequence` on its subject was refused, and why.
    RefuseReport {
        sequence: u64,
        reason: String,
    },
    /// Registers the node, or changes its labels if it is registered already.
    Register {
        labels: Labels,
    },
    ReportState {
        state: NodeState,
    },
    Heartbeat,
    /// Admits a Margo device as this node: the certificate with `fingerprint` may onboard, and
    /// `labels` are the engine's word over the capabilities it reports.
    AdmitMargo {
        fingerprint: String,
        labels: Labels,
    },
    /// The admitted device onboarded with its certificate (base64 DER), proving it holds the
    /// key; it is given `client_id`.
    OnboardMargo {
        fingerprint: String,
        certificate: String,
        client_id: String,
    },
    /// The device unregistered (or was unregistered): its certificate is refused from now on.
    UnregisterMargo,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeEvent {
    Enrolled {
        public_key: String,
        labels: Labels,
    },
    KeyRotated {
        public_key: String,
        previous: String,
    },
    Revoked {
        public_key: String,
    },
    Registered {
        labels: Labels,
    },
    LabelsChanged {
        labels: Labels,
    },
    StateChanged {
        state: NodeState,
    },
    HeartbeatRecorded {
        at: DateTime<Utc>,
    },
    /// The engine refused the report stored at `sequence` on the node's report subject (which
    /// only the node's credential may write): unsigned, signed by another key, or claiming
    /// another node.
    ReportRefused {
        sequence: u64,
        reason: String,
    },
    /// A Margo device was admitted as this node, by the fingerprint of its certificate.
    MargoAdmitted {
        fingerprint: String,
        labels: Labels,
    },
    /// The admitted device onboarded: its certificate (base64 DER) and the client id it was
    /// given.
    MargoOnboarded {
        fingerprint: String,
        certificate: String,
        client_id: String,
    },
    /// The device was unregistered: the certificate with `fingerprint` is refused from now on.
    MargoUnregistered {
        fingerprint: String,
    },
}

event_payload!(NodeEvent, "node", {
    Enrolled => "enrolled",
    KeyRotated => "key_rotated",
    Revoked => "revoked",
    Registered => "registered",
    LabelsChanged => "labels_changed",
    StateChanged => "state_changed",
    HeartbeatRecorded => "heartbeat_recorded",
    ReportRefused => "report_refused",
    MargoAdmitted => "margo_admitted",
    MargoOnboarded => "margo_onboarded",
    MargoUnregistered => "margo_unregistered",
});

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeRejection {
    #[error("the node is not registered")]
    NotRegistered,
    #[error("label {0}")]
    InvalidLabel(String),
    #[error("`{0}` is not a user public key")]
    InvalidKey(String),
    #[error("key `{0}` was revoked: make a new key pair")]
    KeyRevoked(String),
    #[error("key `{0}` is another node's: make a new key pair")]
    KeyInUse(String),
    #[error("the node is not enrolled")]
    NotEnrolled,
    #[error("the node's credential was revoked")]
    Revoked,
    #[error("`{0}` is not a certificate fingerprint: give `sha256:` and 64 hexadecimal digits")]
    InvalidFingerprint(String),
    #[error("the node is a native edge node with a NATS key, not a Margo device")]
    NativeNode,
    #[error("the node is a Margo device: it has no NATS key")]
    MargoDevice,
    #[error("no Margo device was admitted with the certificate `{0}`")]
    NotAdmitted(String),
}

/// Whether `fingerprint` reads as `sha256:` and 64 lowercase hexadecimal digits.
pub fn is_fingerprint(fingerprint: &str) -> bool {
    fingerprint
        .strip_prefix("sha256:")
        .is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
}

/// Whether `key` reads as a user public key (`U` and 55 more base32 characters); whether it
/// decodes is checked where keys are used.
fn is_user_key(key: &str) -> bool {
    key.len() == 56 && key.starts_with('U') && key.bytes().all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b))
}

impl Node {
    /// The labels it has: its own, under the ones it was enrolled with.
    fn with_enrolled(&self, labels: &Labels) -> Labels {
        let mut all = labels.clone();
        all.extend(self.enrolled_labels.clone());
        all
    }

    pub fn revoked(&self) -> bool {
        self.state == Some(NodeState::Revoked)
    }
}

impl Aggregate for Node {
    const TYPE: &'static str = "node";
    type Command = NodeCommand;
    type Event = NodeEvent;
    type Rejection = NodeRejection;

    fn decide(&self, command: &NodeCommand, ctx: &Ctx) -> Result<Vec<NodeEvent>, NodeRejection> {
        match command {
            NodeCommand::Enroll { .. } if self.margo.is_some() && !self.revoked() => Err(NodeRejection::MargoDevice),
            NodeCommand::Enroll { public_key, labels } => {
                for key in labels.keys() {
                    check_token("key", key).map_err(NodeRejection::InvalidLabel)?;
                }
                if !is_user_key(public_key) {
                    return Err(NodeRejection::InvalidKey(public_key.clone()));
                }
                if self.revoked_keys.contains(public_key) {
                    return Err(NodeRejection::KeyRevoked(public_key.clone()));
                }
                let enrolled = || NodeEvent::Enrolled { public_key: public_key.clone(), labels: labels.clone() };
                Ok(match &self.key {
                    Some(key) if key == public_key && self.enrolled_labels == *labels => vec![],
                    Some(key) if key == public_key => vec![enrolled()],
                    Some(_) if self.revoked() => vec![enrolled()],
                    Some(previous) => vec![
                        NodeEvent::KeyRotated { public_key: public_key.clone(), previous: previous.clone() },
                        enrolled(),
                    ],
                    None => vec![enrolled()],
                })
            }
            // A finding about a node that exists stands whatever its state: it says what arrived.
            NodeCommand::RefuseReport { .. } if self.key.is_none() && !self.registered => {
                Err(NodeRejection::NotEnrolled)
            }
            NodeCommand::RefuseReport { sequence, reason } => {
                Ok(vec![NodeEvent::ReportRefused { sequence: *sequence, reason: reason.clone() }])
            }
            NodeCommand::Revoke => match &self.key {
                None => Err(NodeRejection::NotEnrolled),
                Some(_) if self.revoked() => Ok(vec![]),
                Some(key) => Ok(vec![NodeEvent::Revoked { public_key: key.clone() }]),
            },
            NodeCommand::AdmitMargo { .. } if self.key.is_some() => Err(NodeRejection::NativeNode),
            NodeCommand::AdmitMargo { fingerprint, labels } => {
                for key in labels.keys() {
                    check_token("key", key).map_err(NodeRejection::InvalidLabel)?;
                }
                if !is_fingerprint(fingerprint) {
                    return Err(NodeRejection::InvalidFingerprint(fingerprint.clone()));
                }
                let same = self.margo.as_ref().is_some_and(|m| m.fingerprint == *fingerprint);
                Ok(match same && self.enrolled_labels == *labels && !self.revoked() {
                    true => vec![],
                    false => {
                        vec![NodeEvent::MargoAdmitted { fingerprint: fingerprint.clone(), labels: labels.clone() }]
                    }
                })
            }
            _ if self.revoked() => Err(NodeRejection::Revoked),
            NodeCommand::OnboardMargo { .. } if self.key.is_some() => Err(NodeRejection::NativeNode),
            NodeCommand::OnboardMargo { fingerprint, certificate, client_id } => {
                match &self.margo {
                    Some(margo) if margo.fingerprint == *fingerprint => {}
                    _ => return Err(NodeRejection::NotAdmitted(fingerprint.clone())),
                }
                let mut events = Vec::new();
                let onboarded = self.margo.as_ref().is_some_and(|m| {
                    m.certificate.as_ref() == Some(certificate) && m.client_id.as_ref() == Some(client_id)
                });
                if !onboarded {
                    events.push(NodeEvent::MargoOnboarded {
                        fingerprint: fingerprint.clone(),
                        certificate: certificate.clone(),
                        client_id: client_id.clone(),
                    });
                }
                if !self.registered {
                    events.push(NodeEvent::Registered { labels: self.enrolled_labels.clone() });
                }
                Ok(events)
            }
            NodeCommand::UnregisterMargo => match &self.margo {
                Some(margo) => Ok(vec![NodeEvent::MargoUnregistered { fingerprint: margo.fingerprint.clone() }]),
                None => Err(NodeRejection::NotEnrolled),
            },
            NodeCommand::Register { labels } => {
                for key in labels.keys() {
                    check_token("key", key).map_err(NodeRejection::InvalidLabel)?;
                }
                let labels = self.with_enrolled(labels);
                Ok(match self.registered {
                    false => vec![NodeEvent::Registered { labels }],
                    true if self.labels != labels => vec![NodeEvent::LabelsChanged { labels }],
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
                let due = self
                    .last_heartbeat
                    .is_none_or(|last| ctx.now.signed_duration_since(last) >= HEARTBEAT_RECORD_INTERVAL);
                if due {
                    events.push(NodeEvent::HeartbeatRecorded { at: ctx.now });
                }
                Ok(events)
            }
        }
    }

    fn evolve(mut self, event: &NodeEvent) -> Node {
        match event {
            NodeEvent::Enrolled { public_key, labels } => {
                self.key = Some(public_key.clone());
                self.enrolled_labels = labels.clone();
                // A Margo device enrolled as a native node is one from then on.
                self.margo = None;
                if self.revoked() {
                    self.state = None;
                }
            }
            NodeEvent::KeyRotated { previous, .. } => self.revoked_keys.push(previous.clone()),
            NodeEvent::Revoked { public_key } => {
                self.revoked_keys.push(public_key.clone());
                self.state = Some(NodeState::Revoked);
            }
            NodeEvent::Registered { labels } => {
                self.registered = true;
                self.labels = labels.clone();
            }
            NodeEvent::LabelsChanged { labels } => self.labels = labels.clone(),
            NodeEvent::StateChanged { state } => self.state = Some(*state),
            NodeEvent::HeartbeatRecorded { at } => self.last_heartbeat = Some(*at),
            NodeEvent::ReportRefused { sequence, reason } => {
                self.refused_reports = self.refused_reports.saturating_add(1);
                self.last_refused = Some(Refused { sequence: *sequence, reason: reason.clone() });
            }
            NodeEvent::MargoAdmitted { fingerprint, labels } => {
                self.margo = Some(MargoIdentity { fingerprint: fingerprint.clone(), ..MargoIdentity::default() });
                self.enrolled_labels = labels.clone();
                if self.revoked() {
                    self.state = None;
                }
            }
            NodeEvent::MargoOnboarded { fingerprint, certificate, client_id } => {
                self.margo = Some(MargoIdentity {
                    fingerprint: fingerprint.clone(),
                    certificate: Some(certificate.clone()),
                    client_id: Some(client_id.clone()),
                });
                self.state = Some(NodeState::Online);
            }
            NodeEvent::MargoUnregistered { .. } => self.state = Some(NodeState::Revoked),
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

    #[test]
    fn a_refused_report_is_recorded_for_a_node_that_exists_even_revoked() {
        let refuse = || C::RefuseReport { sequence: 7, reason: "unsigned".into() };
        let refused = E::ReportRefused { sequence: 7, reason: "unsigned".into() };
        given::<Node>([]).when(refuse()).then_rejected(NodeRejection::NotEnrolled);
        let enrolled = E::Enrolled { public_key: KEY_A.into(), labels: Labels::new() };
        given::<Node>([enrolled.clone()]).when(refuse()).then([refused.clone()]);
        given::<Node>([enrolled, E::Revoked { public_key: KEY_A.into() }]).when(refuse()).then([refused]);
    }

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

    const KEY_A: &str = "UAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    const KEY_B: &str = "UBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB";

    fn enrolled(key: &str) -> E {
        E::Enrolled { public_key: key.into(), labels: labels(&[("site", "lab")]) }
    }

    #[test]
    fn enroll_records_the_key_and_the_labels() {
        given::<Node>([])
            .when(C::Enroll { public_key: KEY_A.into(), labels: labels(&[("site", "lab")]) })
            .then([enrolled(KEY_A)]);
    }

    #[test]
    fn enroll_again_with_the_same_key_changes_nothing() {
        given::<Node>([enrolled(KEY_A)])
            .when(C::Enroll { public_key: KEY_A.into(), labels: labels(&[("site", "lab")]) })
            .then([]);
    }

    #[test]
    fn enroll_with_a_new_key_rotates_and_revokes_the_old_one() {
        let state = given::<Node>([enrolled(KEY_A)])
            .when(C::Enroll { public_key: KEY_B.into(), labels: labels(&[("site", "lab")]) })
            .then([E::KeyRotated { public_key: KEY_B.into(), previous: KEY_A.into() }, enrolled(KEY_B)]);
        assert_eq!(state.key.as_deref(), Some(KEY_B));
        assert_eq!(state.revoked_keys, vec![KEY_A.to_owned()]);
        given::<Node>([
            enrolled(KEY_A),
            E::KeyRotated { public_key: KEY_B.into(), previous: KEY_A.into() },
            enrolled(KEY_B),
        ])
        .when(C::Enroll { public_key: KEY_A.into(), labels: Labels::new() })
        .then_rejected(NodeRejection::KeyRevoked(KEY_A.into()));
    }

    #[test]
    fn enroll_refuses_what_is_not_a_user_key() {
        given::<Node>([])
            .when(C::Enroll { public_key: "AABC".into(), labels: Labels::new() })
            .then_rejected(NodeRejection::InvalidKey("AABC".into()));
    }

    #[test]
    fn enrolled_labels_stand_over_the_ones_a_node_claims() {
        given::<Node>([enrolled(KEY_A)])
            .when(C::Register { labels: labels(&[("site", "vault"), ("arch", "arm64")]) })
            .then([E::Registered { labels: labels(&[("site", "lab"), ("arch", "arm64")]) }]);
    }

    #[test]
    fn a_revoked_node_is_refused_until_enrolled_with_a_new_key() {
        let history = [enrolled(KEY_A), E::Registered { labels: labels(&[("site", "lab")]) }];
        let state = given::<Node>(history.clone()).when(C::Revoke).then([E::Revoked { public_key: KEY_A.into() }]);
        assert_eq!(state.state, Some(NodeState::Revoked));
        let mut revoked = history.to_vec();
        revoked.push(E::Revoked { public_key: KEY_A.into() });
        given::<Node>(revoked.clone()).when(C::Heartbeat).then_rejected(NodeRejection::Revoked);
        given::<Node>(revoked.clone())
            .when(C::ReportState { state: NodeState::Unreachable })
            .then_rejected(NodeRejection::Revoked);
        given::<Node>(revoked.clone()).when(C::Revoke).then([]);
        given::<Node>(revoked.clone())
            .when(C::Enroll { public_key: KEY_A.into(), labels: Labels::new() })
            .then_rejected(NodeRejection::KeyRevoked(KEY_A.into()));
        let state = given::<Node>(revoked)
            .when(C::Enroll { public_key: KEY_B.into(), labels: labels(&[("site", "lab")]) })
            .then([enrolled(KEY_B)]);
        assert_eq!(state.state, None);
    }

    #[test]
    fn revoke_of_a_node_never_enrolled_is_rejected() {
        given::<Node>([]).when(C::Revoke).then_rejected(NodeRejection::NotEnrolled);
    }

    #[test]
    fn heartbeat_of_an_unknown_node_is_rejected() {
        given::<Node>([]).when(C::Heartbeat).then_rejected(NodeRejection::NotRegistered);
    }
}
