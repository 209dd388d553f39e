//! Secrets in transit and at rest: never in clear on the bus or in the log.
//!
//! - [`seal_for_node`] encrypts a value so that only one node can read it: an anonymous sealed
//!   box (X25519, XSalsa20-Poly1305) to the X25519 form of the node's enrolled Ed25519 key, which
//!   the node opens with its seed ([`open_as_node`]). The node's key pair is the one it already
//!   has; no other key is enrolled.
//! - [`TenantKey`] encrypts a value under a tenant's own key (ChaCha20-Poly1305, the value's
//!   place as associated data). The engine keeps each tenant's key outside the log, and deleting
//!   the tenant destroys it: what the log holds under it can never be read again.
//!
//! Both are text, `<scheme>.<base64url>`, so that they travel in any JSON or MessagePack field.

use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::ChaCha20Poly1305;
use rand::RngCore;

const NODE_SCHEME: &str = "node1";
const TENANT_SCHEME: &str = "tenant1";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    #[error("`{0}` is not a node's public key")]
    NotANodeKey(String),
    #[error("the node's key has no seed")]
    NoSeed,
    #[error("not a sealed value of this kind")]
    Malformed,
    #[error("the value does not open with this key: it was sealed for another, or altered")]
    WrongKey,
}

fn encode(scheme: &str, bytes: &[u8]) -> String {
    format!("{scheme}.{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

fn decode(scheme: &str, sealed: &str) -> Result<Vec<u8>, SealError> {
    let body = sealed.strip_prefix(scheme).and_then(|rest| rest.strip_prefix('.')).ok_or(SealError::Malformed)?;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(body).map_err(|_| SealError::Malformed)
}

/// `value` sealed so that only the node whose public key is `node_key` (`U...`) opens it.
pub fn seal_for_node(node_key: &str, value: &[u8]) -> Result<String, SealError> {
    let not_a_key = || SealError::NotANodeKey(node_key.to_owned());
    let (_, ed25519) = nkeys::from_public_key(node_key).map_err(|_| not_a_key())?;
    let verifying = ed25519_dalek::VerifyingKey::from_bytes(&ed25519).map_err(|_| not_a_key())?;
    let public = crypto_box::PublicKey::from(verifying.to_montgomery().to_bytes());
    let sealed = public.seal(&mut rand::rngs::OsRng, value).map_err(|_| SealError::Malformed)?;
    Ok(encode(NODE_SCHEME, &sealed))
}

/// Opens what [`seal_for_node`] sealed for `node`.
pub fn open_as_node(node: &nkeys::KeyPair, sealed: &str) -> Result<Vec<u8>, SealError> {
    let seed = node.seed().map_err(|_| SealError::NoSeed)?;
    let (_, seed) = nkeys::decode_seed(&seed).map_err(|_| SealError::NoSeed)?;
    let scalar = ed25519_dalek::SigningKey::from_bytes(&seed).to_scalar_bytes();
    let secret = crypto_box::SecretKey::from(scalar);
    secret.unseal(&decode(NODE_SCHEME, sealed)?).map_err(|_| SealError::WrongKey)
}

/// A tenant's key: 32 random bytes, kept by the engine outside the log.
#[derive(Clone)]
pub struct TenantKey([u8; 32]);

impl std::fmt::Debug for TenantKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TenantKey(***)")
    }
}

impl TenantKey {
    pub fn generate() -> TenantKey {
        let mut key = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut key);
        TenantKey(key)
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<TenantKey> {
        Some(TenantKey(bytes.try_into().ok()?))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// `value` encrypted under this key, bound to `place` (where it is kept: a tenant, a
    /// deployment and a name), so that it does not open anywhere else.
    pub fn seal(&self, place: &str, value: &[u8]) -> String {
        let mut nonce = [0u8; 12];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let cipher = ChaCha20Poly1305::new((&self.0).into());
        let payload = Payload { msg: value, aad: place.as_bytes() };
        let sealed = cipher.encrypt((&nonce).into(), payload).expect("encryption of a value in memory cannot fail");
        encode(TENANT_SCHEME, &[nonce.as_slice(), &sealed].concat())
    }

    /// Opens what [`TenantKey::seal`] sealed at `place`.
    pub fn open(&self, place: &str, sealed: &str) -> Result<Vec<u8>, SealError> {
        let bytes = decode(TENANT_SCHEME, sealed)?;
        let (nonce, body) = bytes.split_at_checked(12).ok_or(SealError::Malformed)?;
        let cipher = ChaCha20Poly1305::new((&self.0).into());
        cipher.decrypt(nonce.into(), Payload { msg: body, aad: place.as_bytes() }).map_err(|_| SealError::WrongKey)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_node_a_value_was_sealed_for_opens_it() {
        let (node, other) = (nkeys::KeyPair::new_user(), nkeys::KeyPair::new_user());
        let sealed = seal_for_node(&node.public_key(), b"s3cret").unwrap();
        assert!(sealed.starts_with("node1."), "{sealed}");
        assert!(!sealed.contains("s3cret"));
        assert_eq!(open_as_node(&node, &sealed).unwrap(), b"s3cret");
        assert_eq!(open_as_node(&other, &sealed), Err(SealError::WrongKey));
        assert_eq!(open_as_node(&node, "node1.AAAA"), Err(SealError::WrongKey));
        assert_eq!(open_as_node(&node, "tenant1.AAAA"), Err(SealError::Malformed));
        let public_only = nkeys::KeyPair::from_public_key(&node.public_key()).unwrap();
        assert_eq!(open_as_node(&public_only, &sealed), Err(SealError::NoSeed));
        assert!(matches!(seal_for_node("nope", b"x"), Err(SealError::NotANodeKey(_))));
    }

    #[test]
    fn a_tenant_key_opens_its_values_in_their_place_only() {
        let key = TenantKey::generate();
        let sealed = key.seal("acme/d1/DB_PASSWORD", b"s3cret");
        assert_eq!(key.open("acme/d1/DB_PASSWORD", &sealed).unwrap(), b"s3cret");
        assert_eq!(key.open("acme/d2/DB_PASSWORD", &sealed), Err(SealError::WrongKey));
        assert_eq!(TenantKey::generate().open("acme/d1/DB_PASSWORD", &sealed), Err(SealError::WrongKey));
        assert_eq!(key.open("acme/d1/DB_PASSWORD", "tenant1.AA"), Err(SealError::Malformed));
        assert_ne!(sealed, key.seal("acme/d1/DB_PASSWORD", b"s3cret"), "a fresh nonce each time");
    }
}
