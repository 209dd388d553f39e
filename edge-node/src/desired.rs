//! The work the node has accepted, kept in sled before it is acked, so that a restarted node
//! takes up again what it was asked to do: for each deployment, every piece of work it
//! received, in order, until it is removed.
//!
//! Every stream sequence handled is kept beside the work log, so work delivered again after a
//! lost ack is recognised and not carried out twice, while work the link lost on its way,
//! redelivered after later work (the consumer's ack wait is 2 s), is still carried out.

use events::Envelope;

#[derive(Debug, Clone)]
pub struct Desired {
    db: sled::Db,
    tree: sled::Tree,
}

/// `#<sequence>`: a stream sequence of work kept. No deployment key starts with `#`.
fn handled(sequence: u64) -> Vec<u8> {
    let mut key = b"#".to_vec();
    key.extend_from_slice(&sequence.to_be_bytes());
    key
}

/// How many stream sequences behind the newest a handled one is still remembered.
const HANDLED_KEPT: u64 = 100_000;

/// `<deployment>/<order>`: a deployment's work sorts together, in the order received.
fn key(deployment: &str, order: u64) -> Vec<u8> {
    let mut key = format!("{deployment}/").into_bytes();
    key.extend_from_slice(&order.to_be_bytes());
    key
}

impl Desired {
    /// The work log in `db`, in a tree whose name starts with `prefix`.
    pub fn open(db: &sled::Db, prefix: &str) -> sled::Result<Desired> {
        Ok(Desired { db: db.clone(), tree: db.open_tree(format!("{prefix}desired"))? })
    }

    /// Keeps a work envelope of `deployment`, durably, before it is acked; `false` for one
    /// whose stream sequence was kept already: work delivered again (its ack was lost), not to
    /// be carried out twice. Redeliveries may come after later work, so each sequence is
    /// remembered, not only the last. Sequence 0 is work made on the node itself.
    pub fn keep(&self, deployment: &str, envelope: &Envelope, sequence: u64) -> sled::Result<bool> {
        let seen = handled(sequence);
        if sequence != 0 && self.tree.contains_key(&seen)? {
            return Ok(false);
        }
        let mut batch = sled::Batch::default();
        batch.insert(key(deployment, self.db.generate_id()?), envelope.encode());
        if sequence != 0 {
            batch.insert(seen, &[]);
            // Redelivery comes within minutes: sequences far behind are forgotten.
            if sequence.is_multiple_of(1024) {
                for old in self.tree.range(handled(0)..handled(sequence.saturating_sub(HANDLED_KEPT))) {
                    batch.remove(old?.0);
                }
            }
        }
        self.tree.apply_batch(batch)?;
        self.db.flush()?;
        Ok(true)
    }

    /// Forgets a deployment that is gone from the node.
    pub fn forget(&self, deployment: &str) -> sled::Result<()> {
        for entry in self.tree.scan_prefix(format!("{deployment}/")) {
            self.tree.remove(entry?.0)?;
        }
        Ok(())
    }

    /// Drops a deployment's `refresh` work once it was carried out, so that a restart does not
    /// do it again.
    pub fn done_refreshing(&self, deployment: &str) -> anyhow::Result<()> {
        for entry in self.tree.scan_prefix(format!("{deployment}/")) {
            let (key, bytes) = entry?;
            if Envelope::decode(&bytes)?.event_type == "work.refresh" {
                self.tree.remove(key)?;
            }
        }
        Ok(())
    }

    /// Every kept work envelope, grouped by deployment, each group in the order received.
    pub fn all(&self) -> anyhow::Result<Vec<Vec<Envelope>>> {
        let mut groups: Vec<(String, Vec<Envelope>)> = Vec::new();
        for entry in self.tree.iter() {
            let (key, bytes) = entry?;
            if key.starts_with(b"#") {
                continue;
            }
            let deployment = key.split(|b| *b == b'/').next().unwrap_or_default().to_vec();
            let deployment = String::from_utf8_lossy(&deployment).into_owned();
            let envelope = Envelope::decode(&bytes)?;
            match groups.last_mut() {
                Some((last, group)) if *last == deployment => group.push(envelope),
                _ => groups.push((deployment, vec![envelope])),
            }
        }
        Ok(groups.into_iter().map(|(_, group)| group).collect())
    }
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

    #[test]
    fn work_is_kept_once_in_order_per_deployment_and_a_done_refresh_is_dropped() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let desired = Desired::open(&db, "").unwrap();
        let deploy = NodeWork::Deploy {
            deployment: "d1".into(),
            application: "a".into(),
            version: "1.0.0".into(),
            image: "i".into(),
            mode: Default::default(),
            env: Default::default(),
            services: vec![],
            secrets: Default::default(),
        };
        let refresh = NodeWork::Refresh { deployment: "d1".into() };
        let stop = NodeWork::Stop { deployment: "d1".into() };
        let sequence = |work: &NodeWork| match work {
            NodeWork::Deploy { .. } => 1,
            NodeWork::Refresh { .. } => 2,
            _ => 3,
        };
        for work in [&deploy, &refresh, &stop] {
            assert!(desired.keep("d1", &envelope(work), sequence(work)).unwrap());
        }
        assert!(desired.keep("d2", &envelope(&NodeWork::Stop { deployment: "d2".into() }), 10).unwrap());
        assert!(!desired.keep("d1", &envelope(&stop), 3).unwrap(), "work delivered again is not kept twice");
        assert!(desired.keep("d2", &envelope(&stop), 4).unwrap(), "work first delivered after later work is kept");
        let types = |desired: &Desired| -> Vec<Vec<String>> {
            desired.all().unwrap().iter().map(|g| g.iter().map(|e| e.event_type.clone()).collect()).collect()
        };
        assert_eq!(types(&desired), [vec!["work.deploy", "work.refresh", "work.stop"], vec!["work.stop", "work.stop"]]);

        desired.done_refreshing("d1").unwrap();
        assert_eq!(types(&desired), [vec!["work.deploy", "work.stop"], vec!["work.stop", "work.stop"]]);
        desired.forget("d1").unwrap();
        assert_eq!(types(&desired), [vec!["work.stop", "work.stop"]]);
    }
}
