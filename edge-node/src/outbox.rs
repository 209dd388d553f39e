//! The outbox: every report is written to sled first, then published from here oldest first
//! (the driver sends many before awaiting their acks) with its event id as `Nats-Msg-Id`, and
//! removed only once JetStream acknowledged it. A node that
//! loses its link or restarts loses no report, and a report sent twice is stored once.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use sled::Transactional;
use uuid::Uuid;

use events::envelope::{chain_hash, Metadata, Order};
use events::report::{self, NodeReport};
use events::Envelope;

const LAST_HASH: &[u8] = b"last_hash";
/// The epoch of the node's count of its reports: chosen when the outbox is first opened.
const EPOCH: &[u8] = b"epoch";

#[derive(Debug, Clone)]
pub struct Outbox {
    db: sled::Db,
    pending: sled::Tree,
    meta: sled::Tree,
    /// The epoch in which this outbox numbers its reports ([`events::envelope::Order`]).
    epoch: u64,
    /// The node's key: every report is signed by it.
    signer: Option<std::sync::Arc<nkeys::KeyPair>>,
}

/// A report waiting to be published.
#[derive(Debug, Clone)]
pub struct Pending {
    pub key: u64,
    pub msg_id: String,
    pub bytes: Bytes,
    /// The correlation id of the work it answers: its `traceparent`'s trace id.
    pub trace: Uuid,
}

impl Outbox {
    /// The outbox in `db`, in trees whose names start with `prefix`, signing with `signer`.
    pub fn open(db: &sled::Db, prefix: &str, signer: Option<std::sync::Arc<nkeys::KeyPair>>) -> sled::Result<Outbox> {
        let (pending, meta) = (db.open_tree(format!("{prefix}outbox"))?, db.open_tree(format!("{prefix}outbox_meta"))?);
        // The random half of a v7 id.
        let chosen = Uuid::now_v7().as_u64_pair().1.to_be_bytes();
        let epoch = match meta.compare_and_swap(EPOCH, None as Option<&[u8]>, Some(&chosen[..]))? {
            Ok(()) => chosen,
            Err(kept) => kept.current.as_deref().and_then(|e| <[u8; 8]>::try_from(e).ok()).unwrap_or(chosen),
        };
        Ok(Outbox { db: db.clone(), pending, meta, epoch: u64::from_be_bytes(epoch), signer })
    }

    /// Wraps `report` in an envelope chained to the node's previous report and stores it,
    /// durably.
    pub fn push(&self, node: &str, meta: &Metadata, report: &NodeReport, now: DateTime<Utc>) -> anyhow::Result<Uuid> {
        let id = self.write(node, meta, report, now)?;
        // On disk before anything else happens: a crash after this loses no report.
        self.db.flush()?;
        Ok(id)
    }

    /// Wraps `report` in an envelope chained to the node's previous report and stores it, on
    /// disk with the database's next flush ([`Outbox::flush`]), which the caller makes before
    /// anything the report tells of happens. The publisher flushes too before it sends, so no
    /// report leaves that a crash could take back.
    pub fn write(&self, node: &str, meta: &Metadata, report: &NodeReport, now: DateTime<Utc>) -> anyhow::Result<Uuid> {
        let prev_hash = self.meta.get(LAST_HASH)?.map(|h| String::from_utf8_lossy(&h).into_owned());
        let id = Uuid::now_v7();
        let key = self.db.generate_id()?;
        let mut envelope = Envelope::new(id, now, report::AGGREGATE_TYPE, node, meta, report, prev_hash);
        // Numbered by the outbox, whose count only rises: the engine orders the node's reports
        // by it, whatever the node's clock says.
        envelope.order = Some(Order { epoch: self.epoch, sequence: key });
        if let Some(key) = &self.signer {
            envelope = envelope.signed(key.as_ref());
        }
        let bytes = envelope.encode();
        // The report and the new end of the chain are written together.
        (&self.pending, &self.meta)
            .transaction(|(pending, meta)| {
                pending.insert(&key.to_be_bytes(), bytes.as_slice())?;
                meta.insert(LAST_HASH, chain_hash(&bytes).as_bytes())?;
                Ok::<_, sled::transaction::ConflictableTransactionError<()>>(())
            })
            .map_err(|e| anyhow::anyhow!("writing the outbox: {e:?}"))?;
        Ok(id)
    }

    /// The oldest reports not yet acknowledged, at most `limit`.
    pub fn oldest(&self, limit: usize) -> anyhow::Result<Vec<Pending>> {
        let mut oldest = Vec::with_capacity(limit.min(1024));
        for entry in self.pending.iter() {
            if oldest.len() >= limit {
                break;
            }
            let (key, bytes) = entry?;
            // A corrupt entry (a disk's fault) cannot be sent: it is dropped, and the rest go.
            let decoded = <[u8; 8]>::try_from(key.as_ref()).map_err(|e| e.to_string()).and_then(|number| {
                Envelope::decode(&bytes)
                    .map(|envelope| (u64::from_be_bytes(number), envelope))
                    .map_err(|e| e.to_string())
            });
            match decoded {
                Ok((number, envelope)) => oldest.push(Pending {
                    key: number,
                    msg_id: envelope.id.to_string(),
                    bytes: Bytes::copy_from_slice(&bytes),
                    trace: envelope.correlation_id,
                }),
                Err(error) => {
                    tracing::error!(error, "dropping a corrupt report from the outbox");
                    self.pending.remove(key)?;
                }
            }
        }
        Ok(oldest)
    }

    pub fn remove(&self, key: u64) -> sled::Result<()> {
        self.pending.remove(key.to_be_bytes()).map(|_| ())
    }

    /// Makes what was written and removed durable (the work log's too: they share the
    /// database): a report written is then kept through a crash, and one removed is not sent
    /// again (beyond the server's window of duplicates, one sent again would be stored twice).
    pub fn flush(&self) -> sled::Result<()> {
        self.db.flush().map(drop)
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_corrupt_report_is_dropped_and_the_rest_are_sent_numbered_in_order() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let outbox = Outbox::open(&db, "", None).unwrap();
        let id = Uuid::nil();
        let meta = Metadata { tenant: "t".into(), actor: "node:n".into(), correlation_id: id, causation_id: id };
        let report = NodeReport::AppliedLocally { deployment: "d".into() };
        outbox.push("n", &meta, &report, chrono::DateTime::UNIX_EPOCH).unwrap();
        // A disk's fault between two reports.
        let corrupt = db.generate_id().unwrap();
        outbox.pending.insert(corrupt.to_be_bytes(), &b"\xc1 not a report"[..]).unwrap();
        outbox.push("n", &meta, &report, chrono::DateTime::UNIX_EPOCH).unwrap();

        let pending = outbox.oldest(10).unwrap();
        assert_eq!(pending.len(), 2, "the corrupt one is dropped, the others stay");
        assert_eq!(outbox.len(), 2);
        let orders: Vec<Order> =
            pending.iter().map(|p| Envelope::decode(&p.bytes).unwrap().order.expect("numbered")).collect();
        assert!(orders[0].precedes(&orders[1]), "{orders:?}");
        // Opened again, the outbox counts on in the same epoch.
        let again = Outbox::open(&db, "", None).unwrap();
        assert_eq!(again.epoch, outbox.epoch);
    }
}
