//! The one envelope every event travels in, its MessagePack encoding and its hash chain.
//!
//! `prev_hash` is the SHA-256 of the encoded previous event on the same subject; the first
//! event of a subject has none, so the store loads a new aggregate with one direct get. Every
//! envelope names its `signer` and carries an Ed25519 `signature` over its canonical bytes, the
//! envelope encoded without the signature ([`Envelope::signed`], [`Envelope::verify`]). The
//! payload is read through [`Envelope::event`], which lifts older schema versions (see
//! `crate::aggregate`).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::aggregate::EventPayload;

/// An immutable fact as stored in the log.
///
/// Encoded as MessagePack with named fields, so a field added later never breaks stored
/// history. `prev_hash` is the SHA-256 (hex) of the encoded previous event on the same
/// subject: altering, removing or reordering an event breaks the chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    #[serde(with = "hyphenated")]
    pub id: Uuid,
    #[serde(rename = "type")]
    pub event_type: String,
    pub schema_version: u16,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub tenant: String,
    pub actor: String,
    #[serde(with = "hyphenated")]
    pub correlation_id: Uuid,
    #[serde(with = "hyphenated")]
    pub causation_id: Uuid,
    pub time: DateTime<Utc>,
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
    pub prev_hash: Option<String>,
    /// Where it stands among its writer's own events, for a writer that numbers them: a node
    /// numbers its reports, so that they are ordered without its clock. Signed with the rest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<Order>,
    /// The public key (an nkey, `U...`) of whoever wrote it: the engine, or the node whose
    /// report it is. Absent from events written before events were signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer: Option<String>,
    /// The Ed25519 signature by `signer` over [`Envelope::signed_bytes`], in hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

/// A writer's own count of what it wrote: `sequence` rises by one or more with each event, in
/// an `epoch` that begins with the writer's local state (a node whose state is wiped begins a
/// new one, and counts from the start again).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    pub epoch: u64,
    pub sequence: u64,
}

impl Order {
    /// Written before `other` by the same writer, in the same epoch.
    pub fn precedes(&self, other: &Order) -> bool {
        self.epoch == other.epoch && self.sequence < other.sequence
    }
}

/// Who and why: what the caller knows about an event besides its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    pub tenant: String,
    pub actor: String,
    pub correlation_id: Uuid,
    pub causation_id: Uuid,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("not an event envelope: {0}")]
    Envelope(String),
    #[error("payload of {event_type} does not decode: {reason}")]
    Payload { event_type: String, reason: String },
    #[error("{event_type} has no schema version {schema_version}")]
    UnknownVersion { event_type: String, schema_version: u16 },
    #[error("envelope says {declared} but the payload is {payload}")]
    TypeMismatch { declared: String, payload: &'static str },
}

/// Why an envelope's signature does not stand.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("it is not signed")]
    Unsigned,
    #[error("its signer `{0}` is not a public key")]
    BadSigner(String),
    #[error("its signature does not verify under {0}")]
    Forged(String),
}

/// Something that signs envelopes: the holder of a key.
pub trait Sign {
    /// The public key the signatures verify under.
    fn public_key(&self) -> String;
    fn sign(&self, bytes: &[u8]) -> Vec<u8>;
}

impl Sign for nkeys::KeyPair {
    fn public_key(&self) -> String {
        nkeys::KeyPair::public_key(self)
    }

    fn sign(&self, bytes: &[u8]) -> Vec<u8> {
        nkeys::KeyPair::sign(self, bytes).expect("a key pair with its seed signs")
    }
}

impl Envelope {
    /// Wraps `event` with its id, time, metadata and the hash of the previous event.
    pub fn new<E: EventPayload>(
        id: Uuid,
        time: DateTime<Utc>,
        aggregate_type: &str,
        aggregate_id: &str,
        meta: &Metadata,
        event: &E,
        prev_hash: Option<String>,
    ) -> Envelope {
        Envelope {
            id,
            event_type: event.event_type().to_owned(),
            schema_version: event.schema_version(),
            aggregate_type: aggregate_type.to_owned(),
            aggregate_id: aggregate_id.to_owned(),
            tenant: meta.tenant.clone(),
            actor: meta.actor.clone(),
            correlation_id: meta.correlation_id,
            causation_id: meta.causation_id,
            time,
            payload: event.to_payload(),
            prev_hash,
            order: None,
            signer: None,
            signature: None,
        }
    }

    /// The bytes a signature covers: the encoded envelope, signer included, without the
    /// signature itself.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let unsigned = Envelope { signature: None, ..self.clone() };
        unsigned.encode()
    }

    /// Signs it as `key`.
    pub fn signed(mut self, key: &dyn Sign) -> Envelope {
        self.signer = Some(key.public_key());
        self.signature = None;
        let signature = key.sign(&self.signed_bytes());
        self.signature = Some(hex::encode(signature));
        self
    }

    /// Checks that its signature verifies under the key it names; returns that key. Whether
    /// the key may write this event is the reader's question.
    pub fn verify(&self) -> Result<&str, SignatureError> {
        let (Some(signer), Some(signature)) = (&self.signer, &self.signature) else {
            return Err(SignatureError::Unsigned);
        };
        let key = nkeys::KeyPair::from_public_key(signer).map_err(|_| SignatureError::BadSigner(signer.clone()))?;
        let signature = hex::decode(signature).map_err(|_| SignatureError::Forged(signer.clone()))?;
        key.verify(&self.signed_bytes(), &signature).map_err(|_| SignatureError::Forged(signer.clone()))?;
        Ok(signer)
    }

    pub fn encode(&self) -> Vec<u8> {
        rmp_serde::to_vec_named(self).expect("an envelope always serializes")
    }

    pub fn decode(bytes: &[u8]) -> Result<Envelope, DecodeError> {
        rmp_serde::from_slice(bytes).map_err(|e| DecodeError::Envelope(e.to_string()))
    }

    /// The typed event inside.
    pub fn event<E: EventPayload>(&self) -> Result<E, DecodeError> {
        E::from_payload(&self.event_type, self.schema_version, &self.payload)
    }
}

/// The link of the hash chain: SHA-256 of an encoded envelope, as lowercase hex.
pub fn chain_hash(encoded: &[u8]) -> String {
    hex::encode(Sha256::digest(encoded))
}

/// UUIDs as hyphenated strings in every format, readable by any MessagePack tool.
mod hyphenated {
    use serde::{Deserialize, Deserializer, Serializer};
    use uuid::Uuid;

    pub fn serialize<S: Serializer>(id: &Uuid, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&id.hyphenated())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Uuid, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Uuid::parse_str(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::application::ApplicationEvent;

    fn sample() -> Envelope {
        let meta = Metadata {
            tenant: "acme".into(),
            actor: "vendor".into(),
            correlation_id: Uuid::from_u128(2),
            causation_id: Uuid::from_u128(3),
        };
        let time = DateTime::parse_from_rfc3339("2026-01-02T03:04:05Z").unwrap().to_utc();
        let event = ApplicationEvent::Registered { name: "Sample".into() };
        Envelope::new(Uuid::from_u128(1), time, "application", "sample", &meta, &event, None)
    }

    #[test]
    fn round_trips_through_messagepack_with_named_fields() {
        let envelope = sample();
        let bytes = envelope.encode();
        assert_eq!(Envelope::decode(&bytes).unwrap(), envelope);
        // Named fields: the field names are in the bytes.
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("aggregate_id") && text.contains("prev_hash"), "{text}");
        assert!(text.contains("00000000-0000-0000-0000-000000000001"), "{text}");
        let event: ApplicationEvent = envelope.event().unwrap();
        assert_eq!(event, ApplicationEvent::Registered { name: "Sample".into() });
    }

    #[test]
    fn a_payload_that_does_not_match_its_declared_type_is_refused() {
        let mut envelope = sample();
        envelope.event_type = "application.published".into();
        let err = envelope.event::<ApplicationEvent>().unwrap_err();
        assert!(matches!(err, DecodeError::TypeMismatch { .. }), "{err}");
    }

    #[test]
    fn an_unknown_schema_version_is_refused() {
        let mut envelope = sample();
        envelope.schema_version = 9;
        let err = envelope.event::<ApplicationEvent>().unwrap_err();
        assert_eq!(err.to_string(), "application.registered has no schema version 9");
    }

    #[test]
    fn a_signed_envelope_verifies_under_its_signer_and_nothing_else() {
        let key = nkeys::KeyPair::new_user();
        let signed = sample().signed(&key);
        assert_eq!(signed.verify(), Ok(key.public_key().as_str()));
        let decoded = Envelope::decode(&signed.encode()).unwrap();
        assert_eq!(decoded.verify(), Ok(key.public_key().as_str()));

        assert_eq!(sample().verify(), Err(SignatureError::Unsigned));
        let mut altered = signed.clone();
        altered.actor = "someone else".into();
        assert!(matches!(altered.verify(), Err(SignatureError::Forged(_))));
        let mut claimed = signed.clone();
        claimed.signer = Some(nkeys::KeyPair::new_user().public_key());
        assert!(matches!(claimed.verify(), Err(SignatureError::Forged(_))));
        let mut garbage = signed;
        garbage.signer = Some("not a key".into());
        assert!(matches!(garbage.verify(), Err(SignatureError::BadSigner(_))));
    }

    #[test]
    fn an_unsigned_envelope_encodes_as_before_signatures_existed() {
        let bytes = sample().encode();
        assert!(!String::from_utf8_lossy(&bytes).contains("signer"));
    }

    #[test]
    fn the_chain_hash_changes_with_any_byte() {
        let a = sample().encode();
        let mut b = sample();
        b.actor = "someone else".into();
        assert_ne!(chain_hash(&a), chain_hash(&b.encode()));
        assert_eq!(chain_hash(&a), chain_hash(&sample().encode()));
        assert_eq!(chain_hash(&a).len(), 64);
    }
}
