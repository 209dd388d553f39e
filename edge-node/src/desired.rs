//! The work the node has accepted, kept in sled before it is acked, so that a restarted node
//! takes up again what it was asked to do: for each deployment, the `deploy` and the latest
//! change (stop, start or remove) after it.

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
            NodeWork::Stop { .. } | NodeWork::Start { .. } | NodeWork::Remove { .. } => "change",
        };
        self.tree.insert(key(work.deployment(), slot), envelope.encode())?;
        self.db.flush()?;
        Ok(())
    }

    /// Forgets a deployment that is gone from the node.
    pub fn forget(&self, deployment: &str) -> sled::Result<()> {
        self.tree.remove(key(deployment, "deploy"))?;
        self.tree.remove(key(deployment, "change"))?;
        Ok(())
    }

    /// Every kept work envelope, each deployment's `deploy` before its change.
    pub fn all(&self) -> anyhow::Result<Vec<Envelope>> {
        let mut deploys = Vec::new();
        let mut changes = Vec::new();
        for entry in self.tree.iter() {
            let (key, bytes) = entry?;
            let envelope = Envelope::decode(&bytes)?;
            if key.ends_with(b"/deploy") {
                deploys.push(envelope);
            } else {
                changes.push(envelope);
            }
        }
        deploys.extend(changes);
        Ok(deploys)
    }
}
