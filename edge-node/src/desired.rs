//! The work the node has accepted, kept in sled before it is acked, so that a restarted node
//! takes up again what it was asked to do: for each deployment, every piece of work it
//! received, in the order the engine wrote it (its stream sequence), until it is removed.
//!
//! Many pieces of work are in flight at once, so a piece the link lost on its way comes again
//! (after the consumer's ack wait of 2 s) behind later work. Each deployment's newest stream
//! sequence is kept, so such a piece is known for what it is: [`Kept::Late`] when its
//! deployment is still held (the node takes the deployment up again from all its work, in
//! order), [`Kept::Superseded`] when later work removed it. Every stream sequence handled is
//! kept too, so work delivered again after a lost ack is recognised and not carried out twice.

use std::collections::{HashMap, HashSet};

use events::Envelope;

#[derive(Debug, Clone)]
pub struct Desired {
    db: sled::Db,
    tree: sled::Tree,
}

/// What became of a piece of work offered to the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kept {
    /// Newer than any work of its deployment kept so far, or made on the node: carried out
    /// now.
    InOrder,
    /// Older than work of its deployment already kept: the deployment is taken up again from
    /// all its work, in order.
    Late,
    /// Older than the work that removed its deployment from the node: nothing to do.
    Superseded,
    /// Its stream sequence was handled already: delivered again, not carried out twice.
    Again,
}

/// `#<sequence>`: a stream sequence of work kept. No deployment key starts with `#`.
fn handled_key(sequence: u64) -> Vec<u8> {
    let mut key = b"#".to_vec();
    key.extend_from_slice(&sequence.to_be_bytes());
    key
}

/// `^<deployment>`: the newest stream sequence of the deployment's work, kept after the
/// deployment is forgotten.
fn newest_key(deployment: &str) -> Vec<u8> {
    format!("^{deployment}").into_bytes()
}

/// How many stream sequences behind the newest a handled one is still remembered.
const HANDLED_KEPT: u64 = 100_000;

/// `<deployment>/<sequence><order>`: a deployment's work sorts together, in stream order, and
/// work made on the node after the engine's work it followed. (A log written before kept
/// `<deployment>/<order>`, work received in order: [`Desired::all`] reads it first.)
fn work_key(deployment: &str, sequence: u64, order: u64) -> Vec<u8> {
    let mut key = format!("{deployment}/").into_bytes();
    key.extend_from_slice(&sequence.to_be_bytes());
    key.extend_from_slice(&order.to_be_bytes());
    key
}

/// Where a work key sorts in its deployment: (stream sequence, order); `None` for other keys.
fn position(key: &[u8]) -> Option<(&[u8], (u64, u64))> {
    if key.starts_with(b"#") || key.starts_with(b"^") {
        return None;
    }
    let slash = key.iter().position(|b| *b == b'/')?;
    let (deployment, rest) = key.split_at(slash);
    let rest = rest.get(1..)?;
    let word = |bytes: &[u8]| bytes.try_into().ok().map(u64::from_be_bytes);
    let at = match rest.len() {
        8 => (0, word(rest)?),
        16 => (word(rest.get(..8)?)?, word(rest.get(8..)?)?),
        _ => return None,
    };
    Some((deployment, at))
}

impl Desired {
    /// The work log in `db`, in a tree whose name starts with `prefix`.
    pub fn open(db: &sled::Db, prefix: &str) -> sled::Result<Desired> {
        Ok(Desired { db: db.clone(), tree: db.open_tree(format!("{prefix}desired"))? })
    }

    /// Keeps pieces of work (deployment, envelope, stream sequence) in one write, and says what
    /// became of each; durable with the database's next flush, which the caller makes before
    /// it acks them or acts on them. Sequence 0 is work made on the node itself: always in
    /// order.
    pub fn keep(&self, pieces: &[(&str, &Envelope, u64)]) -> sled::Result<Vec<Kept>> {
        let mut batch = sled::Batch::default();
        let mut seen = HashSet::new();
        let mut newest_of: HashMap<&str, u64> = HashMap::new();
        let mut kept = Vec::with_capacity(pieces.len());
        for &(deployment, envelope, sequence) in pieces {
            let last = match newest_of.get(deployment) {
                Some(last) => *last,
                None => self.newest(deployment)?,
            };
            let outcome = if sequence == 0 {
                Kept::InOrder
            } else if !seen.insert(sequence) || self.tree.contains_key(handled_key(sequence))? {
                Kept::Again
            } else if sequence > last {
                Kept::InOrder
            } else if self.held(deployment)? || newest_of.contains_key(deployment) {
                Kept::Late
            } else {
                Kept::Superseded
            };
            if sequence != 0 && outcome != Kept::Again {
                batch.insert(handled_key(sequence), &[]);
                // Redelivery comes within minutes: sequences far behind are forgotten.
                if sequence.is_multiple_of(1024) {
                    for old in self.tree.range(handled_key(0)..handled_key(sequence.saturating_sub(HANDLED_KEPT))) {
                        batch.remove(old?.0);
                    }
                }
            }
            if matches!(outcome, Kept::InOrder | Kept::Late) {
                let at = if sequence == 0 { last } else { sequence };
                batch.insert(work_key(deployment, at, self.db.generate_id()?), envelope.encode());
                if sequence > last {
                    newest_of.insert(deployment, sequence);
                    batch.insert(newest_key(deployment), &sequence.to_be_bytes());
                } else {
                    newest_of.insert(deployment, last);
                }
            }
            kept.push(outcome);
        }
        self.tree.apply_batch(batch)?;
        Ok(kept)
    }

    /// The newest stream sequence of `deployment`'s work, 0 if none.
    fn newest(&self, deployment: &str) -> sled::Result<u64> {
        let bytes = self.tree.get(newest_key(deployment))?;
        Ok(bytes.and_then(|b| b.as_ref().try_into().ok()).map(u64::from_be_bytes).unwrap_or(0))
    }

    /// Whether any work of `deployment` is kept.
    fn held(&self, deployment: &str) -> sled::Result<bool> {
        Ok(self.tree.scan_prefix(format!("{deployment}/")).next().transpose()?.is_some())
    }

    /// Forgets a deployment that is gone from the node (its newest stream sequence stays).
    pub fn forget(&self, deployment: &str) -> sled::Result<()> {
        for entry in self.tree.scan_prefix(format!("{deployment}/")) {
            self.tree.remove(entry?.0)?;
        }
        // Durable at once: a crash must not bring back a deployment that is gone.
        self.db.flush().map(drop)
    }

    /// Drops a deployment's `refresh` work once it was carried out, so that a restart does not
    /// do it again.
    pub fn done_refreshing(&self, deployment: &str) -> anyhow::Result<()> {
        for entry in self.tree.scan_prefix(format!("{deployment}/")) {
            let (key, bytes) = entry?;
            if Envelope::decode(&bytes).is_ok_and(|e| e.event_type == "work.refresh") {
                self.tree.remove(key)?;
            }
        }
        // Durable at once: a crash must not have the refresh done again.
        self.db.flush()?;
        Ok(())
    }

    /// Every kept work envelope of `deployment`, in order.
    pub fn of(&self, deployment: &str) -> anyhow::Result<Vec<Envelope>> {
        Ok(grouped(self.tree.scan_prefix(format!("{deployment}/")))?.into_iter().flatten().collect())
    }

    /// Every kept work envelope, grouped by deployment, each group in order.
    pub fn all(&self) -> anyhow::Result<Vec<Vec<Envelope>>> {
        grouped(self.tree.iter())
    }
}

/// Work entries (`entries`), grouped by deployment, each group in order.
fn grouped(
    entries: impl Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>,
) -> anyhow::Result<Vec<Vec<Envelope>>> {
    // Each deployment's work, with where it sorts.
    type Group = (Vec<u8>, Vec<((u64, u64), Envelope)>);
    let mut groups: Vec<Group> = Vec::new();
    for entry in entries {
        let (key, bytes) = entry?;
        let Some((deployment, at)) = position(&key) else { continue };
        // A corrupt entry (a disk's fault) is passed over: the rest of the work still counts.
        let envelope = match Envelope::decode(&bytes) {
            Ok(envelope) => envelope,
            Err(e) => {
                tracing::error!(key = %String::from_utf8_lossy(&key), error = %e, "passing over a corrupt entry of the work log");
                continue;
            }
        };
        match groups.last_mut() {
            Some((last, group)) if last.as_slice() == deployment => group.push((at, envelope)),
            _ => groups.push((deployment.to_vec(), vec![(at, envelope)])),
        }
    }
    Ok(groups
        .into_iter()
        .map(|(_, mut group)| {
            group.sort_by_key(|(at, _)| *at);
            group.into_iter().map(|(_, envelope)| envelope).collect()
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use events::envelope::Metadata;
    use events::work::NodeWork;
    use uuid::Uuid;

    fn envelope(work: &NodeWork) -> Envelope {
        let id = Uuid::from_u128(1);
        let meta = Metadata { tenant: "t".into(), actor: "engine".into(), correlation_id: id, causation_id: id };
        let time = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z").unwrap().to_utc();
        Envelope::new(id, time, events::work::AGGREGATE_TYPE, "n", &meta, work, None)
    }

    fn deploy(deployment: &str) -> NodeWork {
        NodeWork::Deploy {
            deployment: deployment.into(),
            application: "a".into(),
            version: "1.0.0".into(),
            image: "i".into(),
            mode: Default::default(),
            env: Default::default(),
            services: vec![],
            secrets: Default::default(),
        }
    }

    fn types(desired: &Desired) -> Vec<Vec<String>> {
        desired.all().unwrap().iter().map(|g| g.iter().map(|e| e.event_type.clone()).collect()).collect()
    }

    #[test]
    fn work_is_kept_once_in_stream_order_per_deployment_and_a_done_refresh_is_dropped() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let desired = Desired::open(&db, "").unwrap();
        let stop = |d: &str| envelope(&NodeWork::Stop { deployment: d.into() });
        let (deploy, refresh) = (envelope(&deploy("d1")), envelope(&NodeWork::Refresh { deployment: "d1".into() }));
        let kept = desired.keep(&[("d1", &deploy, 1), ("d1", &refresh, 2), ("d1", &stop("d1"), 3)]).unwrap();
        assert_eq!(kept, [Kept::InOrder; 3]);
        assert_eq!(desired.keep(&[("d2", &stop("d2"), 10)]).unwrap(), [Kept::InOrder]);
        assert_eq!(desired.keep(&[("d1", &stop("d1"), 3)]).unwrap(), [Kept::Again], "work delivered again");
        assert_eq!(
            desired.keep(&[("d2", &stop("d2"), 11), ("d2", &stop("d2"), 11)]).unwrap(),
            [Kept::InOrder, Kept::Again],
            "the same work twice in one delivery"
        );
        let apply = envelope(&NodeWork::Apply { deployment: "d1".into() });
        assert_eq!(desired.keep(&[("d1", &apply, 0)]).unwrap(), [Kept::InOrder], "work made on the node");
        assert_eq!(
            types(&desired),
            [vec!["work.deploy", "work.refresh", "work.stop", "work.apply"], vec!["work.stop"; 2]]
        );

        desired.done_refreshing("d1").unwrap();
        assert_eq!(types(&desired), [vec!["work.deploy", "work.stop", "work.apply"], vec!["work.stop"; 2]]);
        desired.forget("d1").unwrap();
        assert_eq!(types(&desired), [vec!["work.stop"; 2]]);
    }

    #[test]
    fn work_that_comes_after_later_work_is_late_while_its_deployment_is_held_and_superseded_once_removed() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let desired = Desired::open(&db, "").unwrap();
        let stop = envelope(&NodeWork::Stop { deployment: "d1".into() });
        let remove = envelope(&NodeWork::Remove { deployment: "d1".into() });
        // The deploy was lost on the link; the stop after it came first.
        assert_eq!(desired.keep(&[("d1", &stop, 7)]).unwrap(), [Kept::InOrder]);
        assert_eq!(desired.keep(&[("d1", &envelope(&deploy("d1")), 5)]).unwrap(), [Kept::Late]);
        let order: Vec<String> = desired.of("d1").unwrap().into_iter().map(|e| e.event_type).collect();
        assert_eq!(order, ["work.deploy", "work.stop"], "taken up again in the order the engine wrote it");

        assert_eq!(desired.keep(&[("d1", &remove, 9)]).unwrap(), [Kept::InOrder]);
        desired.forget("d1").unwrap();
        let lost = envelope(&NodeWork::Start { deployment: "d1".into() });
        assert_eq!(desired.keep(&[("d1", &lost, 8)]).unwrap(), [Kept::Superseded], "the removal came after it");
        assert!(desired.of("d1").unwrap().is_empty());
        assert_eq!(desired.keep(&[("d1", &envelope(&deploy("d1")), 12)]).unwrap(), [Kept::InOrder], "sent back later");
    }

    #[test]
    fn a_work_log_written_before_stream_order_is_read_first_and_in_the_order_received() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let desired = Desired::open(&db, "").unwrap();
        let tree = db.open_tree("desired").unwrap();
        for (order, work) in [(40u64, deploy("d1")), (41, NodeWork::Stop { deployment: "d1".into() })] {
            let mut key = b"d1/".to_vec();
            key.extend_from_slice(&order.to_be_bytes());
            tree.insert(key, envelope(&work).encode()).unwrap();
        }
        let start = envelope(&NodeWork::Start { deployment: "d1".into() });
        assert_eq!(desired.keep(&[("d1", &start, 3)]).unwrap(), [Kept::InOrder]);
        assert_eq!(types(&desired), [vec!["work.deploy", "work.stop", "work.start"]]);
    }
}
