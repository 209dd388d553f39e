//! The work the node has accepted, kept in sled before it is acked, so that a restarted node
//! takes up again what it was asked to do: for each deployment, every piece of work it
//! received, in order, until it is removed.

use events::Envelope;

#[derive(Debug, Clone)]
pub struct Desired {
    db: sled::Db,
    tree: sled::Tree,
}

/// `<deployment>/<order>`: a deployment's work sorts together, in the order received.
fn key(deployment: &str, order: u64) -> Vec<u8> {
    let mut key = format!("{deployment}/").into_bytes();
    key.extend_from_slice(&order.to_be_bytes());
    key
}

impl Desired {
    pub fn open(db: &sled::Db) -> sled::Result<Desired> {
        Ok(Desired { db: db.clone(), tree: db.open_tree("desired")? })
    }

    /// Keeps a work envelope of `deployment`, durably, before it is acked.
    pub fn keep(&self, deployment: &str, envelope: &Envelope) -> sled::Result<()> {
        self.tree.insert(key(deployment, self.db.generate_id()?), envelope.encode())?;
        self.db.flush()?;
        Ok(())
    }

    /// Forgets a deployment that is gone from the node.
    pub fn forget(&self, deployment: &str) -> sled::Result<()> {
        for entry in self.tree.scan_prefix(format!("{deployment}/")) {
            self.tree.remove(entry?.0)?;
        }
        Ok(())
    }

    /// Every kept work envelope, grouped by deployment, each group in the order received.
    pub fn all(&self) -> anyhow::Result<Vec<Vec<Envelope>>> {
        let mut groups: Vec<(String, Vec<Envelope>)> = Vec::new();
        for entry in self.tree.iter() {
            let (key, bytes) = entry?;
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
