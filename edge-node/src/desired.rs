//! The work the node has accepted, kept in sled before it is acked, so that a restarted node
//! takes up again what it was asked to do: for each deployment, the `deploy`, the latest
//! `update` and the latest change (stop, start or remove).

use events::work::NodeWork;
use events::Envelope;

#[derive(Debug, Clone)]
pub struct Desired {
    db: sled::Db,
    tree: sled::Tree,
}

fn key(deployment: &str, slot: &str) -> Vec<u8> {
    format!("{deployment}/{slot}").into_bytes()
}

impl Desired {
    pub fn open(db: &sled::Db) -> sled::Result<Desired> {
        Ok(Desired { db: db.clone(), tree: db.open_tree("desired")? })
    }

    /// Keeps a work envelope, durably, before it is acked.
    pub fn keep(&self, work: &NodeWork, envelope: &Envelope) -> sled::Result<()> {
        let slot = match work {
            NodeWork::Deploy { .. } => "deploy",
            NodeWork::Update { .. } => "update",
            NodeWork::Stop { .. } | NodeWork::Start { .. } | NodeWork::Remove { .. } => "change",
        };
        self.tree.insert(key(work.deployment(), slot), envelope.encode())?;
        self.db.flush()?;
        Ok(())
    }

    /// Forgets a deployment that is gone from the node.
    pub fn forget(&self, deployment: &str) -> sled::Result<()> {
        for slot in ["deploy", "update", "change"] {
            self.tree.remove(key(deployment, slot))?;
        }
        Ok(())
    }

    /// Every kept work envelope: each deployment's `deploy`, then its latest update, then its
    /// latest change.
    pub fn all(&self) -> anyhow::Result<Vec<Envelope>> {
        let (mut deploys, mut updates, mut changes) = (Vec::new(), Vec::new(), Vec::new());
        for entry in self.tree.iter() {
            let (key, bytes) = entry?;
            let envelope = Envelope::decode(&bytes)?;
            match () {
                _ if key.ends_with(b"/deploy") => deploys.push(envelope),
                _ if key.ends_with(b"/update") => updates.push(envelope),
                _ => changes.push(envelope),
            }
        }
        deploys.extend(updates);
        deploys.extend(changes);
        Ok(deploys)
    }
}
