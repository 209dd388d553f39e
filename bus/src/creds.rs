//! NATS credentials: a user JWT and the seed of the key it was issued to, in the decorated
//! text format every NATS client reads. The same key signs the events its holder writes.

use std::path::Path;
use std::sync::Arc;

use base64::Engine as _;

const JWT_BEGIN: &str = "-----BEGIN NATS USER JWT-----";
const JWT_END: &str = "------END NATS USER JWT------";
const SEED_BEGIN: &str = "-----BEGIN USER NKEY SEED-----";
const SEED_END: &str = "------END USER NKEY SEED------";

#[derive(Debug, thiserror::Error)]
pub enum CredsError {
    #[error("reading {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("no user JWT in the credentials (a `{JWT_BEGIN}` block)")]
    NoJwt,
    #[error("the user JWT is malformed: {0}")]
    BadJwt(String),
    #[error("no user seed: the credentials hold none and no key file was given")]
    NoSeed,
    #[error("the seed is not a NATS user seed: {0}")]
    BadSeed(String),
    #[error("the seed is of key {seed} but the JWT was issued to {subject}")]
    Mismatch { seed: String, subject: String },
}

/// A user's JWT and its key pair.
#[derive(Clone)]
pub struct Credentials {
    jwt: String,
    key: Arc<nkeys::KeyPair>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The seed never appears in a log.
        f.debug_struct("Credentials").field("key", &self.key.public_key()).finish_non_exhaustive()
    }
}

impl Credentials {
    /// Reads a credentials file; `key_file`, if given, holds the seed (a node whose key never
    /// left it keeps its JWT and its seed apart).
    pub fn read(path: &Path, key_file: Option<&Path>) -> Result<Credentials, CredsError> {
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|source| CredsError::Read { path: p.display().to_string(), source })
        };
        let text = read(path)?;
        let seed = match key_file {
            Some(file) => Some(read(file)?.trim().to_owned()),
            None => None,
        };
        Credentials::parse(&text, seed.as_deref())
    }

    /// Parses the decorated text; `seed` stands for a seed block it lacks.
    pub fn parse(text: &str, seed: Option<&str>) -> Result<Credentials, CredsError> {
        let jwt = block(text, JWT_BEGIN, JWT_END).ok_or(CredsError::NoJwt)?;
        let seed = match block(text, SEED_BEGIN, SEED_END) {
            Some(seed) => seed,
            None => seed.map(str::to_owned).ok_or(CredsError::NoSeed)?,
        };
        let key = nkeys::KeyPair::from_seed(&seed).map_err(|e| CredsError::BadSeed(e.to_string()))?;
        if key.key_pair_type() != nkeys::KeyPairType::User {
            return Err(CredsError::BadSeed(format!("a {:?} seed", key.key_pair_type())));
        }
        let subject = jwt_subject(&jwt)?;
        if subject != key.public_key() {
            return Err(CredsError::Mismatch { seed: key.public_key(), subject });
        }
        Ok(Credentials { jwt, key: Arc::new(key) })
    }

    pub fn jwt(&self) -> &str {
        &self.jwt
    }

    pub fn key(&self) -> &Arc<nkeys::KeyPair> {
        &self.key
    }

    /// The public key: who signs what this holder writes.
    pub fn public_key(&self) -> String {
        self.key.public_key()
    }

    /// The decorated text of `jwt` and `seed` (the seed block left out when `None`).
    pub fn format(jwt: &str, seed: Option<&str>) -> String {
        let mut text = format!("{JWT_BEGIN}\n{jwt}\n{JWT_END}\n");
        if let Some(seed) = seed {
            text.push_str(&format!(
                "\n************************* IMPORTANT *************************\n\
                 NKEY Seed printed below can be used to sign and prove identity.\n\
                 NKEYs are sensitive and should be treated as secrets.\n\n\
                 {SEED_BEGIN}\n{seed}\n{SEED_END}\n"
            ));
        }
        text
    }

    /// The prefix of the reply subjects its JWT lets it receive on (`_INBOX_...`), if it is
    /// confined to one.
    pub fn inbox_prefix(&self) -> Option<String> {
        let claims = jwt_claims(&self.jwt).ok()?;
        let allowed = claims.pointer("/nats/sub/allow")?.as_array()?.clone();
        allowed
            .iter()
            .filter_map(|s| s.as_str()?.strip_suffix(".>"))
            .find(|s| s.starts_with("_INBOX"))
            .map(str::to_owned)
    }

    /// Whether its JWT confines it to the JetStream API the engine's account exports to the
    /// outside ([`crate::OUTSIDE_API`]).
    pub fn is_outside(&self) -> bool {
        let Ok(claims) = jwt_claims(&self.jwt) else { return false };
        let prefix = format!("{}.", crate::OUTSIDE_API);
        claims
            .pointer("/nats/pub/allow")
            .and_then(|allowed| allowed.as_array())
            .is_some_and(|allowed| allowed.iter().any(|s| s.as_str().is_some_and(|s| s.starts_with(&prefix))))
    }

    /// The connection options that authenticate as this user.
    pub fn options(&self) -> async_nats::ConnectOptions {
        let key = self.key.clone();
        async_nats::ConnectOptions::with_jwt(self.jwt.clone(), move |nonce| {
            let key = key.clone();
            async move { key.sign(&nonce).map_err(async_nats::AuthError::new) }
        })
    }
}

/// The text between `begin` and `end`, trimmed, if both are there and it is not empty.
fn block(text: &str, begin: &str, end: &str) -> Option<String> {
    let (_, after) = text.split_once(begin)?;
    let (inner, _) = after.split_once(end)?;
    let inner = inner.trim();
    (!inner.is_empty()).then(|| inner.to_owned())
}

/// The `sub` claim of a JWT, read without checking its signature (the server does that).
pub fn jwt_subject(jwt: &str) -> Result<String, CredsError> {
    let claims = jwt_claims(jwt)?;
    claims
        .get("sub")
        .and_then(|s| s.as_str())
        .map(str::to_owned)
        .ok_or_else(|| CredsError::BadJwt("no `sub` claim".into()))
}

/// The claims of a JWT as JSON.
pub fn jwt_claims(jwt: &str) -> Result<serde_json::Value, CredsError> {
    let mut parts = jwt.split('.');
    let (Some(_), Some(claims), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(CredsError::BadJwt("not three dot-separated parts".into()));
    };
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(claims.trim_end_matches('='))
        .map_err(|e| CredsError::BadJwt(format!("claims are not base64url: {e}")))?;
    serde_json::from_slice(&bytes).map_err(|e| CredsError::BadJwt(format!("claims are not JSON: {e}")))
}

/// Writes `contents` to `path`, readable by its owner alone: to a file beside it first, then
/// renamed over it, so that a crash leaves the old file or the new one whole.
pub fn write_secret(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    let partial = std::path::PathBuf::from(partial);
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&partial)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&partial, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt_for(subject: &str) -> String {
        let encode = |v: serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        format!("{}.{}.c2ln", encode(serde_json::json!({"typ": "JWT"})), encode(serde_json::json!({"sub": subject})))
    }

    #[test]
    fn credentials_round_trip_through_the_decorated_format() {
        let key = nkeys::KeyPair::new_user();
        let text = Credentials::format(&jwt_for(&key.public_key()), Some(&key.seed().unwrap()));
        let creds = Credentials::parse(&text, None).unwrap();
        assert_eq!(creds.public_key(), key.public_key());
        assert!(!format!("{creds:?}").contains(&key.seed().unwrap()), "the seed is never shown");
    }

    #[test]
    fn a_jwt_without_a_seed_takes_the_key_given_apart() {
        let key = nkeys::KeyPair::new_user();
        let text = Credentials::format(&jwt_for(&key.public_key()), None);
        assert!(matches!(Credentials::parse(&text, None), Err(CredsError::NoSeed)));
        let creds = Credentials::parse(&text, Some(&key.seed().unwrap())).unwrap();
        assert_eq!(creds.public_key(), key.public_key());
    }

    #[test]
    fn bad_credentials_are_named() {
        let key = nkeys::KeyPair::new_user();
        let other = nkeys::KeyPair::new_user();
        let seed = key.seed().unwrap();
        let err = Credentials::parse("nothing here", None).unwrap_err();
        assert_eq!(err.to_string(), "no user JWT in the credentials (a `-----BEGIN NATS USER JWT-----` block)");
        let err = Credentials::parse(&Credentials::format(&jwt_for(&other.public_key()), Some(&seed)), None);
        assert!(matches!(err, Err(CredsError::Mismatch { .. })), "{err:?}");
        let err = Credentials::parse(&Credentials::format("a.b", Some(&seed)), None).unwrap_err();
        assert!(err.to_string().starts_with("the user JWT is malformed"), "{err}");
        let account = nkeys::KeyPair::new_account().seed().unwrap();
        let err = Credentials::parse(&Credentials::format(&jwt_for(&key.public_key()), Some(&account)), None);
        assert!(matches!(err, Err(CredsError::BadSeed(_))), "{err:?}");
        let err = Credentials::parse(&Credentials::format(&jwt_for(&key.public_key()), Some("SUnotaseed")), None);
        assert!(matches!(err, Err(CredsError::BadSeed(_))), "{err:?}");
    }
}
