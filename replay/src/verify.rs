//! Tamper evidence: every event carries the hash of the event before it on its subject
//! (`prev_hash`), so each subject is a chain. An event altered, removed or moved breaks the
//! link of the event after it. And every event is signed ([`Signatures`]): a node's report by
//! the key the node was enrolled with at that point of the log, everything else by the
//! engine's key, which the auditor brings (a log cannot vouch for itself).

use std::collections::{BTreeSet, HashMap};

use events::envelope::chain_hash;
use events::node::NodeEvent;
use events::Envelope;

/// An event whose signature does not stand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub subject: String,
    pub sequence: u64,
    pub id: String,
    pub what: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: event {} at sequence {}: {}", self.subject, self.id, self.sequence, self.what)
    }
}

/// Who may write where, learnt from the log as it is read.
#[derive(Debug, Default)]
pub struct Signatures {
    /// The engine's keys: every event but a node's report must be signed by one.
    engine_keys: BTreeSet<String>,
    /// Each node's enrolled key, as of the event read last: `(tenant, node)`.
    node_keys: HashMap<(String, String), String>,
    findings: Vec<Finding>,
}

impl Signatures {
    pub fn new(engine_keys: impl IntoIterator<Item = String>) -> Signatures {
        Signatures { engine_keys: engine_keys.into_iter().collect(), ..Signatures::default() }
    }

    /// Checks the event at `sequence`, read on `subject`.
    pub fn add(&mut self, subject: &str, sequence: u64, envelope: &Envelope) {
        let before = self.findings.len();
        let mut finding = |what: String| {
            let id = envelope.id.to_string();
            self.findings.push(Finding { subject: subject.to_owned(), sequence, id, what });
        };
        // Whose key must have signed it: a report its node's, anything else the engine's. The
        // reader set aside what does not fit its subject (`events::fit`) before it came here.
        let Some(owner) = events::subject::owner(subject) else {
            return finding("a subject outside the documented layout".to_owned());
        };
        let (tenant, aggregate_id) = (owner.tenant, owner.id.as_ref());
        let writer = (owner.aggregate_type == events::report::AGGREGATE_TYPE).then_some((tenant, aggregate_id));
        match (envelope.verify(), writer) {
            (Err(e), _) => finding(e.to_string()),
            (Ok(signer), Some((tenant, node))) => match self.node_keys.get(&(tenant.to_owned(), node.to_owned())) {
                Some(key) if key == signer => {}
                Some(_) => finding(format!("forged: signed by {signer}, not by the key node {node} was enrolled with")),
                None => finding(format!("forged: signed by {signer}, but node {node} was never enrolled")),
            },
            (Ok(signer), None) if !self.engine_keys.contains(signer) => {
                finding(format!("forged: signed by {signer}, which is not an engine key"))
            }
            (Ok(_), None) => {}
        }
        // Only an enrollment that stands tells whose key a node holds.
        if owner.aggregate_type == "node" && self.findings.len() == before {
            let node = (tenant.to_owned(), aggregate_id.to_owned());
            match envelope.event::<NodeEvent>() {
                Ok(NodeEvent::Enrolled { public_key, .. }) => {
                    self.node_keys.insert(node, public_key);
                }
                // Revoked: nothing it signs from now on speaks for the node.
                Ok(NodeEvent::Revoked { .. }) => {
                    self.node_keys.remove(&node);
                }
                _ => {}
            }
        }
    }

    /// Every finding, in stream order.
    pub fn findings(&self) -> &[Finding] {
        &self.findings
    }
}

/// Where a chain is broken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Break {
    pub subject: String,
    /// The stream sequence of the event whose link does not hold.
    pub sequence: u64,
    pub id: String,
    pub kind: Kind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// The event before it on the subject was altered, or an event between them removed.
    Broken { before: Option<u64> },
    /// It follows an event that comes after it on the subject: events were swapped.
    Reordered { follows: u64 },
}

impl std::fmt::Display for Break {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (sequence, id, subject) = (self.sequence, &self.id, &self.subject);
        match self.kind {
            Kind::Broken { before: Some(before) } => write!(
                f,
                "{subject}: event {id} at sequence {sequence} does not follow the one before it (sequence {before}): \
                 that one was altered, or an event between them was removed"
            ),
            Kind::Broken { before: None } => write!(
                f,
                "{subject}: event {id} at sequence {sequence} is the first there but follows another: an earlier \
                 event was removed"
            ),
            Kind::Reordered { follows } => write!(
                f,
                "{subject}: event {id} at sequence {sequence} follows the event at sequence {follows}, which comes \
                 after it: events were reordered"
            ),
        }
    }
}

/// The end of one subject's chain as read so far, and its first break: memory per subject,
/// not per event.
#[derive(Debug, Clone, Default)]
struct Chain {
    last: Option<(u64, String)>,
    first_break: Option<Break>,
    /// The hash the broken event claims to follow: if an event with it comes later, the two
    /// were reordered.
    claimed: Option<String>,
}

/// Walks the chains as events are read.
#[derive(Debug, Default)]
pub struct Chains {
    subjects: HashMap<String, Chain>,
}

impl Chains {
    pub fn add(&mut self, subject: &str, sequence: u64, id: String, bytes: &[u8], prev_hash: Option<String>) {
        let hash = chain_hash(bytes);
        let chain = self.subjects.entry(subject.to_owned()).or_default();
        match &mut chain.first_break {
            Some(broken) if chain.claimed.as_ref() == Some(&hash) => {
                broken.kind = Kind::Reordered { follows: sequence };
                chain.claimed = None;
            }
            Some(_) => {}
            None if prev_hash != chain.last.as_ref().map(|(_, h)| h.clone()) => {
                let before = chain.last.as_ref().map(|(s, _)| *s);
                let kind = Kind::Broken { before };
                chain.first_break = Some(Break { subject: subject.to_owned(), sequence, id, kind });
                chain.claimed = prev_hash;
            }
            None => {}
        }
        chain.last = Some((sequence, hash));
    }

    pub fn subjects(&self) -> usize {
        self.subjects.len()
    }

    /// The first broken link of each subject, in stream order.
    pub fn breaks(&self) -> Vec<Break> {
        let mut breaks: Vec<Break> = self.subjects.values().filter_map(|c| c.first_break.clone()).collect();
        breaks.sort_by_key(|b| b.sequence);
        breaks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A chain of `n` events on one subject, as bytes and their links.
    fn chain(n: usize) -> Vec<(Vec<u8>, Option<String>)> {
        let mut out: Vec<(Vec<u8>, Option<String>)> = Vec::new();
        for i in 0..n {
            let prev = out.last().map(|(bytes, _)| chain_hash(bytes));
            out.push((format!("event {i}").into_bytes(), prev));
        }
        out
    }

    fn walk(events: &[(Vec<u8>, Option<String>)]) -> Vec<Break> {
        let mut chains = Chains::default();
        for (i, (bytes, prev)) in events.iter().enumerate() {
            chains.add("s", i as u64 + 1, format!("e{i}"), bytes, prev.clone());
        }
        chains.breaks()
    }

    #[test]
    fn a_whole_chain_has_no_break() {
        assert_eq!(walk(&chain(5)), []);
    }

    #[test]
    fn an_altered_event_breaks_the_link_after_it() {
        let mut events = chain(5);
        events[2].0 = b"event 2, altered".to_vec();
        let breaks = walk(&events);
        assert_eq!(breaks.len(), 1);
        assert_eq!((breaks[0].sequence, &breaks[0].kind), (4, &Kind::Broken { before: Some(3) }));
    }

    #[test]
    fn a_removed_event_and_a_swap_are_named() {
        let mut removed = chain(5);
        removed.remove(2);
        assert_eq!(walk(&removed)[0].kind, Kind::Broken { before: Some(2) });
        let mut first_removed = chain(3);
        first_removed.remove(0);
        assert_eq!(walk(&first_removed)[0].kind, Kind::Broken { before: None });
        let mut swapped = chain(5);
        swapped.swap(1, 2);
        let breaks = walk(&swapped);
        assert_eq!((breaks[0].sequence, &breaks[0].kind), (2, &Kind::Reordered { follows: 3 }));
    }

    fn envelope(aggregate_type: &str, id: &str, event: &impl events::EventPayload) -> Envelope {
        let meta = events::envelope::Metadata {
            tenant: "t".into(),
            actor: "a".into(),
            correlation_id: uuid::Uuid::nil(),
            causation_id: uuid::Uuid::nil(),
        };
        Envelope::new(uuid::Uuid::nil(), chrono::DateTime::UNIX_EPOCH, aggregate_type, id, &meta, event, None)
    }

    #[test]
    fn reports_verify_under_the_key_enrolled_at_that_point_and_engine_events_under_the_engine_key() {
        let (engine, node, other) =
            (nkeys::KeyPair::new_user(), nkeys::KeyPair::new_user(), nkeys::KeyPair::new_user());
        let mut signatures = Signatures::new([engine.public_key()]);
        let enrolled = NodeEvent::Enrolled { public_key: node.public_key(), labels: Default::default() };
        let report = events::report::NodeReport::AppliedLocally { deployment: "d".into() };
        let report_of = |node: &str| envelope(events::report::AGGREGATE_TYPE, node, &report);

        // Before its enrollment, even the right key is not the node's.
        signatures.add("ev.t.node.n.state", 1, &report_of("n").signed(&node));
        signatures.add("ev.t.node.n", 2, &envelope("node", "n", &enrolled).signed(&engine));
        signatures.add("ev.t.node.n.state", 3, &report_of("n").signed(&node));
        signatures.add("ev.t.node.n.state", 4, &report_of("n").signed(&other));
        signatures.add("ev.t.node.n.state", 5, &report_of("n"));
        let forged = NodeEvent::Enrolled { public_key: other.public_key(), labels: Default::default() };
        signatures.add("ev.t.node.n", 7, &envelope("node", "n", &forged).signed(&other));
        signatures.add("ev.t.node.n.state", 8, &report_of("n").signed(&other));
        let revoked = NodeEvent::Revoked { public_key: node.public_key() };
        signatures.add("ev.t.node.n", 9, &envelope("node", "n", &revoked).signed(&engine));
        signatures.add("ev.t.node.n.state", 10, &report_of("n").signed(&node));
        let found: Vec<(u64, &str)> =
            signatures.findings().iter().map(|f| (f.sequence, f.what.split(':').next().unwrap())).collect();
        assert_eq!(
            found,
            [(1, "forged"), (4, "forged"), (5, "it is not signed"), (7, "forged"), (8, "forged"), (10, "forged")]
        );
    }
}
