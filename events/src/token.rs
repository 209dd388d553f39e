//! An API token: who may call the engine's HTTP API, on which tenant, in which roles.
//!
//! A token is `<id>.<secret>`. The log keeps the id, the subject (who the token stands for, the
//! actor of every event its calls cause), its tenant (none: every tenant), its roles and the
//! SHA-256 of the secret, never the secret itself. Tokens live outside every tenant, under
//! [`NAMESPACE`], so that no tenant's subscriber reads them. Issuing and revoking are events;
//! a revoked token never works again.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::aggregate::{event_payload, Aggregate, Ctx};
use crate::subject::check_token;

/// The tenant token events are stored under: no tenant may take this name (the API refuses
/// tenant names that start with `_`).
pub const NAMESPACE: &str = "_engine";

/// The id of the admin token an engine issues itself on its first start.
pub const FIRST_ADMIN: &str = "admin";

/// What a token allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Role {
    /// Tenants, tokens, node enrollment and credentials on the bus; and everything else.
    Admin,
    /// The catalog: applications, versions, publishing.
    Vendor,
    /// Deployments: launch, stage, apply, update, stop, start, uninstall.
    Operator,
    /// Reads only: deployments, nodes, the catalog, history, logs.
    Auditor,
    /// Enrolls a node never enrolled, with the key it made itself (`edge-node install`), and
    /// nothing else.
    Installer,
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Role, String> {
        match s {
            "admin" => Ok(Role::Admin),
            "vendor" => Ok(Role::Vendor),
            "operator" => Ok(Role::Operator),
            "auditor" => Ok(Role::Auditor),
            "installer" => Ok(Role::Installer),
            _ => Err(format!("no role `{s}`: use admin, vendor, operator, auditor or installer")),
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Admin => "admin",
            Role::Vendor => "vendor",
            Role::Operator => "operator",
            Role::Auditor => "auditor",
            Role::Installer => "installer",
        })
    }
}

/// The SHA-256 of a token's secret, in hex: what the log keeps. A secret is 32 random bytes,
/// so a plain hash is enough; it needs no stretching.
pub fn secret_hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Splits `<id>.<secret>` as a caller presents it; `None` when it is not of that shape.
pub fn parse(presented: &str) -> Option<(&str, &str)> {
    let (id, secret) = presented.split_once('.')?;
    (check_token("token", id).is_ok() && !secret.is_empty()).then_some((id, secret))
}

/// What an issued token grants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// Who the token stands for: the actor of the events its calls cause.
    pub subject: String,
    /// The one tenant it may act on; `None`: every tenant.
    pub tenant: Option<String>,
    pub roles: BTreeSet<Role>,
}

impl Grant {
    /// True when the grant allows acting on `tenant` in one of `roles` (an admin in any).
    pub fn allows(&self, tenant: &str, roles: &[Role]) -> bool {
        let tenant_ok = self.tenant.as_deref().is_none_or(|t| t == tenant);
        let role_ok = self.roles.contains(&Role::Admin) || roles.iter().any(|r| self.roles.contains(r));
        tenant_ok && role_ok
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Token {
    pub grant: Option<Grant>,
    pub secret_sha256: String,
    pub issued_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl Token {
    /// The grant, when `secret` is this token's and it is not revoked. The hashes are compared
    /// in constant time.
    pub fn verify(&self, secret: &str) -> Option<&Grant> {
        let presented = secret_hash(secret);
        let same = presented.len() == self.secret_sha256.len()
            && presented.bytes().zip(self.secret_sha256.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
        (same && self.revoked_at.is_none()).then_some(self.grant.as_ref()?)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum TokenCommand {
    Issue { grant: Grant, secret_sha256: String },
    Revoke,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenEvent {
    Issued {
        subject: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tenant: Option<String>,
        roles: BTreeSet<Role>,
        secret_sha256: String,
        at: DateTime<Utc>,
    },
    Revoked {
        at: DateTime<Utc>,
    },
}

event_payload!(TokenEvent, "token", {
    Issued => "issued",
    Revoked => "revoked",
});

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenRejection {
    #[error("the token is already issued")]
    AlreadyIssued,
    #[error("no such token")]
    NotIssued,
    #[error("the token is already revoked")]
    AlreadyRevoked,
    #[error("a token needs at least one role")]
    NoRoles,
    #[error("{0}")]
    InvalidSubject(String),
    #[error("{0}")]
    InvalidTenant(String),
    #[error("the secret's hash must be 64 hex digits")]
    InvalidHash,
}

impl Aggregate for Token {
    const TYPE: &'static str = "token";
    type Command = TokenCommand;
    type Event = TokenEvent;
    type Rejection = TokenRejection;

    fn decide(&self, command: &TokenCommand, ctx: &Ctx) -> Result<Vec<TokenEvent>, TokenRejection> {
        match command {
            TokenCommand::Issue { .. } if self.issued_at.is_some() => Err(TokenRejection::AlreadyIssued),
            TokenCommand::Issue { grant, secret_sha256 } => {
                if grant.roles.is_empty() {
                    return Err(TokenRejection::NoRoles);
                }
                check_subject(&grant.subject).map_err(TokenRejection::InvalidSubject)?;
                if let Some(tenant) = &grant.tenant {
                    check_tenant(tenant).map_err(TokenRejection::InvalidTenant)?;
                }
                if secret_sha256.len() != 64 || !secret_sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(TokenRejection::InvalidHash);
                }
                Ok(vec![TokenEvent::Issued {
                    subject: grant.subject.clone(),
                    tenant: grant.tenant.clone(),
                    roles: grant.roles.clone(),
                    secret_sha256: secret_sha256.to_ascii_lowercase(),
                    at: ctx.now,
                }])
            }
            TokenCommand::Revoke if self.issued_at.is_none() => Err(TokenRejection::NotIssued),
            TokenCommand::Revoke if self.revoked_at.is_some() => Err(TokenRejection::AlreadyRevoked),
            TokenCommand::Revoke => Ok(vec![TokenEvent::Revoked { at: ctx.now }]),
        }
    }

    fn evolve(mut self, event: &TokenEvent) -> Token {
        match event {
            TokenEvent::Issued { subject, tenant, roles, secret_sha256, at } => {
                self.grant = Some(Grant { subject: subject.clone(), tenant: tenant.clone(), roles: roles.clone() });
                self.secret_sha256 = secret_sha256.clone();
                self.issued_at = Some(*at);
            }
            TokenEvent::Revoked { at } => self.revoked_at = Some(*at),
        }
        self
    }
}

/// A tenant a caller may name: a subject token that does not start with `_` (reserved).
pub fn check_tenant(tenant: &str) -> Result<(), String> {
    check_token("tenant", tenant)?;
    if tenant.starts_with('_') {
        return Err(format!("tenant `{tenant}` starts with `_`, which is reserved"));
    }
    Ok(())
}

/// A token's subject: printable, without control characters, at most 128 characters.
fn check_subject(subject: &str) -> Result<(), String> {
    if subject.trim().is_empty() {
        return Err("a token's subject must not be empty".to_owned());
    }
    if subject.chars().count() > 128 {
        return Err("a token's subject is longer than 128 characters".to_owned());
    }
    if subject.chars().any(char::is_control) {
        return Err("a token's subject has a control character".to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{given, now};

    fn grant(tenant: Option<&str>, roles: &[Role]) -> Grant {
        Grant { subject: "alice".into(), tenant: tenant.map(str::to_owned), roles: roles.iter().copied().collect() }
    }

    fn issued(grant: &Grant, secret: &str) -> TokenEvent {
        TokenEvent::Issued {
            subject: grant.subject.clone(),
            tenant: grant.tenant.clone(),
            roles: grant.roles.clone(),
            secret_sha256: secret_hash(secret),
            at: now(),
        }
    }

    #[test]
    fn issue_keeps_only_the_hash() {
        let g = grant(Some("acme"), &[Role::Operator]);
        given::<Token>([])
            .when(TokenCommand::Issue { grant: g.clone(), secret_sha256: secret_hash("s3cret") })
            .then([issued(&g, "s3cret")]);
    }

    #[test]
    fn issue_is_refused_without_roles_or_with_a_reserved_tenant_or_bad_hash() {
        let issue = |grant: Grant, hash: &str| TokenCommand::Issue { grant, secret_sha256: hash.to_owned() };
        let hash = secret_hash("x");
        given::<Token>([]).when(issue(grant(None, &[]), &hash)).then_rejected(TokenRejection::NoRoles);
        given::<Token>([])
            .when(issue(grant(Some("_engine"), &[Role::Admin]), &hash))
            .then_rejected(TokenRejection::InvalidTenant("tenant `_engine` starts with `_`, which is reserved".into()));
        given::<Token>([]).when(issue(grant(None, &[Role::Admin]), "abc")).then_rejected(TokenRejection::InvalidHash);
        let twice = grant(None, &[Role::Admin]);
        given::<Token>([issued(&twice, "x")]).when(issue(twice, &hash)).then_rejected(TokenRejection::AlreadyIssued);
    }

    #[test]
    fn verify_takes_the_right_secret_until_revoked() {
        let g = grant(Some("acme"), &[Role::Vendor]);
        let token = Token::default().evolve(&issued(&g, "right"));
        assert_eq!(token.verify("right"), Some(&g));
        assert_eq!(token.verify("wrong"), None);
        assert_eq!(token.verify(""), None);
        let revoked = token.evolve(&TokenEvent::Revoked { at: now() });
        assert_eq!(revoked.verify("right"), None);
        assert_eq!(Token::default().verify("right"), None);
    }

    #[test]
    fn revoke_once() {
        let g = grant(None, &[Role::Admin]);
        given::<Token>([]).when(TokenCommand::Revoke).then_rejected(TokenRejection::NotIssued);
        given::<Token>([issued(&g, "x")]).when(TokenCommand::Revoke).then([TokenEvent::Revoked { at: now() }]);
        given::<Token>([issued(&g, "x"), TokenEvent::Revoked { at: now() }])
            .when(TokenCommand::Revoke)
            .then_rejected(TokenRejection::AlreadyRevoked);
    }

    #[test]
    fn a_grant_allows_its_tenant_and_roles_and_an_admin_everything_in_scope() {
        let operator = grant(Some("acme"), &[Role::Operator]);
        assert!(operator.allows("acme", &[Role::Operator, Role::Admin]));
        assert!(!operator.allows("other", &[Role::Operator]));
        assert!(!operator.allows("acme", &[Role::Vendor]));
        let admin = grant(None, &[Role::Admin]);
        assert!(admin.allows("anyone", &[Role::Vendor]));
        let tenant_admin = grant(Some("acme"), &[Role::Admin]);
        assert!(!tenant_admin.allows("other", &[Role::Admin]));
    }

    #[test]
    fn a_presented_token_splits_at_the_first_dot() {
        assert_eq!(parse("abc.def.ghi"), Some(("abc", "def.ghi")));
        assert_eq!(parse("abc"), None);
        assert_eq!(parse("a*b.x"), None);
        assert_eq!(parse("abc."), None);
        assert_eq!(parse(".x"), None);
    }
}
