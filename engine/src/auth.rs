//! Who calls the API, and what each caller may do.
//!
//! Every call but `/healthz` presents `Authorization: Bearer <id>.<secret>`, an API token
//! (`events::token`). [`authenticate`] folds the token's aggregate (one direct get says whether
//! the cached fold is current, so a revocation takes effect on the next call, on every engine),
//! compares the secret's hash, and answers 401 when there is no token, a malformed one, an
//! unknown one, a wrong secret or a revoked token. A token then spends from its own rate
//! budget ([`RateLimit`]); past it, 429 with `Retry-After`.
//!
//! A handler asks the [`Caller`] for the command's metadata, naming the roles that may make
//! the call: the tenant is the token's own, or the one `x-tenant` names when the token allows
//! it; the actor is always the token's subject. A tenant or role the token does not allow: 403.
//!
//! On its first start on a log with no first admin token, the engine issues one
//! ([`first_admin`]) and writes it to `admin.token` (mode 0600) in its data directory.

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use governor::{DefaultKeyedRateLimiter, Quota};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use events::token::{self, Grant, Role, Token, TokenCommand, TokenRejection, NAMESPACE};

use crate::api::{ApiError, AppState, Body};
use crate::command::{CommandError, CommandHandler, CommandMeta};

/// The file, in the data directory, that holds the first admin token.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

/// Requests a token may make: a sustained rate per second and a burst.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub per_second: NonZeroU32,
    pub burst: NonZeroU32,
}

impl Default for RateLimit {
    fn default() -> RateLimit {
        RateLimit {
            per_second: NonZeroU32::new(100).expect("non-zero"),
            burst: NonZeroU32::new(200).expect("non-zero"),
        }
    }
}

/// The authentication state shared by every request.
#[derive(Debug, Clone)]
pub struct Auth {
    commands: CommandHandler,
    limiter: Arc<DefaultKeyedRateLimiter<String>>,
}

impl Auth {
    pub fn new(commands: CommandHandler, limit: RateLimit) -> Auth {
        let quota = Quota::per_second(limit.per_second).allow_burst(limit.burst);
        Auth { commands, limiter: Arc::new(DefaultKeyedRateLimiter::keyed(quota)) }
    }
}

/// The token a request was authenticated with.
#[derive(Debug, Clone)]
pub(crate) struct Principal {
    id: String,
    grant: Grant,
}

fn unauthorized(why: &str) -> Response {
    let mut response = ApiError::new(StatusCode::UNAUTHORIZED, Some("authorization"), why).into_response();
    response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// Authenticates every request but `/healthz`, then spends from its token's rate budget.
pub async fn authenticate(State(auth): State<Auth>, mut request: Request, next: axum::middleware::Next) -> Response {
    if request.uri().path() == "/healthz" {
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    let Some(presented) = presented else {
        return unauthorized("this call needs `Authorization: Bearer <token>`");
    };
    match admit(&auth, presented).await {
        Ok(principal) => {
            request.extensions_mut().insert(principal);
            next.run(request).await
        }
        Err(refused) => {
            let mut response = refused.into_response();
            let status = response.status();
            if status == StatusCode::UNAUTHORIZED {
                response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            response
        }
    }
}

/// The token `presented` (`<id>.<secret>`) if it is known, right and not revoked (401
/// otherwise), after spending from its rate budget (429 past it, with `Retry-After`).
pub(crate) async fn admit(auth: &Auth, presented: &str) -> Result<Principal, AdmitError> {
    let unauthorized =
        |why: &str| AdmitError::Refused(ApiError::new(StatusCode::UNAUTHORIZED, Some("authorization"), why));
    let Some((id, secret)) = token::parse(presented) else {
        return Err(unauthorized("the bearer token is not of the form `<id>.<secret>`"));
    };
    let folded: Token = auth.commands.state(NAMESPACE, id).await.map_err(|e| AdmitError::Refused(e.into()))?;
    let Some(grant) = folded.verify(secret) else {
        return Err(unauthorized("the bearer token is unknown, wrong or revoked"));
    };
    if let Err(wait) = auth.limiter.check_key(&id.to_owned()) {
        let wait = wait.wait_time_from(governor::clock::Clock::now(&governor::clock::DefaultClock::default()));
        let seconds = wait.as_secs().saturating_add(u64::from(wait.subsec_nanos() > 0));
        let error = format!("token `{id}` is over its rate limit: retry in {seconds} s");
        return Err(AdmitError::Limited { error: ApiError::new(StatusCode::TOO_MANY_REQUESTS, None, error), seconds });
    }
    Ok(Principal { id: id.to_owned(), grant: grant.clone() })
}

/// Why a token was not admitted.
#[derive(Debug)]
pub(crate) enum AdmitError {
    Refused(ApiError),
    Limited { error: ApiError, seconds: u64 },
}

impl AdmitError {
    pub(crate) fn error(&self) -> &ApiError {
        match self {
            AdmitError::Refused(error) | AdmitError::Limited { error, .. } => error,
        }
    }
}

impl IntoResponse for AdmitError {
    fn into_response(self) -> Response {
        match self {
            AdmitError::Refused(error) => error.into_response(),
            AdmitError::Limited { error, seconds } => {
                let mut response = error.into_response();
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
                response
            }
        }
    }
}

/// The authenticated caller of a handler, with what it asked for in its headers.
#[derive(Debug, Clone)]
pub struct Caller {
    principal: Principal,
    /// `x-tenant`, when the caller named a tenant.
    tenant: Option<String>,
    /// `idempotency-key`: makes a retried command harmless.
    idempotency_key: Option<Uuid>,
    /// The trace id of a valid `traceparent`: the correlation id of the commands it causes.
    trace: Option<Uuid>,
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Caller, ApiError> {
        let principal = parts.extensions.get::<Principal>().cloned().ok_or_else(|| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, None, "the request was not authenticated")
        })?;
        let header = |name: &str| -> Result<Option<&str>, ApiError> {
            parts
                .headers
                .get(name)
                .map(|v| v.to_str().map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, Some(name), "not ASCII")))
                .transpose()
        };
        let tenant = header("x-tenant")?.map(str::to_owned);
        let idempotency_key = header("idempotency-key")?.map(idempotency_key).transpose()?;
        // A malformed trace context is ignored, as the W3C says.
        let trace = header(bus::trace::HEADER).ok().flatten().and_then(bus::trace::trace_id);
        Ok(Caller { principal, tenant, idempotency_key, trace })
    }
}

fn idempotency_key(key: &str) -> Result<Uuid, ApiError> {
    let bad = |why: String| ApiError::new(StatusCode::BAD_REQUEST, Some("idempotency-key"), why);
    let id = Uuid::parse_str(key).map_err(|e| bad(format!("not a UUID: {e}")))?;
    // A launch takes the key as its deployment id, and deployments list in id order.
    if id.get_version_num() != 7 {
        return Err(bad("must be a UUID v7 (time-ordered)".to_owned()));
    }
    Ok(id)
}

impl Caller {
    /// The tenant the call acts on: `x-tenant`, else the token's own, else `default`.
    pub(crate) fn tenant(&self) -> Result<&str, ApiError> {
        let tenant = self.tenant.as_deref().or(self.principal.grant.tenant.as_deref()).unwrap_or("default");
        token::check_tenant(tenant).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, Some("x-tenant"), e))?;
        Ok(tenant)
    }

    /// Whether the caller's token has `role`.
    pub fn is(&self, role: Role) -> bool {
        self.principal.grant.roles.contains(&role)
    }

    /// The metadata of a call on the caller's tenant by one of `roles` (or an admin), or 403.
    pub fn meta(&self, roles: &[Role]) -> Result<CommandMeta, ApiError> {
        let tenant = self.tenant()?.to_owned();
        self.meta_on(&tenant, roles)
    }

    /// The metadata of a call on `tenant` by one of `roles` (or an admin), or 403.
    pub fn meta_on(&self, tenant: &str, roles: &[Role]) -> Result<CommandMeta, ApiError> {
        let Principal { id, grant } = &self.principal;
        if !grant.allows(tenant, roles) {
            let roles = roles.iter().chain([&Role::Admin]).map(Role::to_string).collect::<Vec<_>>().join(" or ");
            let error = format!("token `{id}` may not do this on tenant `{tenant}`: it needs the role {roles} there");
            return Err(ApiError::new(StatusCode::FORBIDDEN, None, error));
        }
        let mut meta = CommandMeta::new(tenant, &grant.subject);
        if let Some(key) = self.idempotency_key {
            meta.command_id = key;
            meta.correlation_id = key;
        }
        if let Some(trace) = self.trace {
            meta.correlation_id = trace;
        }
        Ok(meta)
    }

    /// The caller, its commands made harmless to retry by `key` (a UUID v7).
    pub(crate) fn with_idempotency_key(mut self, key: Uuid) -> Result<Caller, ApiError> {
        self.idempotency_key = Some(idempotency_key(&key.to_string())?);
        Ok(self)
    }

    /// True when the token acts on every tenant (it belongs to none).
    pub(crate) fn global(&self) -> bool {
        self.principal.grant.tenant.is_none()
    }
}

/// Who a token stands for, the tenant its calls act on and what it may do there.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"token": "0192f6a1000070008000000000000042", "subject": "otto", "tenant": "acme", "every_tenant": false, "roles": ["operator"]}))]
pub struct Me {
    /// The token's id.
    pub token: String,
    pub subject: String,
    /// The tenant a call without `x-tenant` acts on.
    pub tenant: String,
    /// True when the token acts on every tenant (`x-tenant` chooses).
    pub every_tenant: bool,
    pub roles: Vec<Role>,
}

/// `GET /v1/me`: what the caller's token is.
#[utoipa::path(get, path = "/v1/me", tag = "tokens", summary = "What the caller's token is", responses((status = 200, body = Me), (status = "4XX", description = "Refused: `error` says why, `field` names what was wrong", body = ApiError)))]
pub async fn me(caller: Caller) -> Result<Json<Me>, ApiError> {
    let tenant = caller.tenant()?.to_owned();
    let Principal { id, grant } = caller.principal;
    Ok(Json(Me {
        token: id,
        subject: grant.subject,
        tenant,
        every_tenant: grant.tenant.is_none(),
        roles: grant.roles.into_iter().collect(),
    }))
}

/// Who may read a tenant's deployments, nodes and catalog.
pub const READERS: &[Role] = &[Role::Vendor, Role::Operator, Role::Auditor];

// ---------------------------------------------------------------------------------------------
// Tokens

/// A new token: its id and the secret, which the log never holds.
fn new_secret() -> (String, String) {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let id = Uuid::now_v7().simple().to_string();
    (id, secret)
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"subject": "otto", "tenant": "acme", "roles": ["operator", "auditor"]}))]
pub struct CreateToken {
    /// Who the token stands for: the actor of everything it does.
    pub subject: String,
    /// The one tenant it acts on; absent, every tenant (only a token of every tenant may make one).
    #[serde(default)]
    pub tenant: Option<String>,
    pub roles: Vec<Role>,
}

/// A token as its maker receives it: the only time its secret is shown (never by `Debug`).
#[derive(Serialize, Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"id": "0192f6a1000070008000000000000042", "token": "0192f6a1000070008000000000000042.c2VjcmV0", "subject": "otto", "tenant": "acme", "roles": ["operator"]}))]
pub struct IssuedToken {
    pub id: String,
    /// `Authorization: Bearer <token>`.
    pub token: String,
    pub subject: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    pub roles: Vec<Role>,
}

impl std::fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedToken")
            .field("id", &self.id)
            .field("token", &events::REDACTED)
            .field("subject", &self.subject)
            .field("tenant", &self.tenant)
            .field("roles", &self.roles)
            .finish()
    }
}

impl crate::api::Rejection for TokenRejection {
    fn status_and_field(&self) -> (StatusCode, &'static str) {
        use TokenRejection as R;
        match self {
            R::AlreadyIssued | R::AlreadyRevoked => (StatusCode::CONFLICT, "id"),
            R::NotIssued => (StatusCode::NOT_FOUND, "id"),
            R::NoRoles => (StatusCode::UNPROCESSABLE_ENTITY, "roles"),
            R::InvalidSubject(_) => (StatusCode::UNPROCESSABLE_ENTITY, "subject"),
            R::InvalidTenant(_) => (StatusCode::UNPROCESSABLE_ENTITY, "tenant"),
            R::InvalidHash => (StatusCode::INTERNAL_SERVER_ERROR, "secret_sha256"),
        }
    }
}

/// Issues token `id` with `secret` for `grant`.
pub async fn issue(
    commands: &CommandHandler,
    id: &str,
    grant: Grant,
    secret: &str,
    meta: &CommandMeta,
) -> Result<(), CommandError<TokenRejection>> {
    let command = TokenCommand::Issue { grant, secret_sha256: token::secret_hash(secret) };
    commands.execute::<Token>(id, &command, meta).await.map(drop)
}

/// `POST /v1/tokens`: an admin makes a token for its own tenant (or, holding a token of every
/// tenant, for any tenant or for all).
#[utoipa::path(post, path = "/v1/tokens", tag = "tokens", summary = "Make a token; its secret is shown once (admin)", request_body = CreateToken, responses((status = 201, body = IssuedToken), (status = "4XX", description = "Refused: `error` says why, `field` names what was wrong", body = ApiError)))]
pub async fn create_token(
    State(state): State<AppState>,
    caller: Caller,
    Body(body): Body<CreateToken>,
) -> Result<impl IntoResponse, ApiError> {
    let tenant = match (&body.tenant, &caller.principal.grant.tenant) {
        (Some(tenant), _) => tenant.clone(),
        (None, Some(own)) => own.clone(),
        (None, None) => "default".to_owned(),
    };
    token::check_tenant(&tenant).map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, Some("tenant"), e))?;
    let mut meta = caller.meta_on(&tenant, &[Role::Admin])?;
    meta.tenant = NAMESPACE.to_owned();
    let scope = match body.tenant {
        Some(tenant) => Some(tenant),
        None if caller.global() => None,
        None => caller.principal.grant.tenant.clone(),
    };
    let grant = Grant { subject: body.subject, tenant: scope, roles: body.roles.into_iter().collect() };
    let (id, secret) = new_secret();
    issue(&state.commands, &id, grant.clone(), &secret, &meta).await?;
    let roles = grant.roles.into_iter().collect();
    let answer =
        IssuedToken { token: format!("{id}.{secret}"), id, subject: grant.subject, tenant: grant.tenant, roles };
    Ok((StatusCode::CREATED, Json(answer)))
}

/// `POST /v1/tokens/{id}/revoke`: an admin of the token's tenant (or of every tenant) revokes it.
#[utoipa::path(post, path = "/v1/tokens/{id}/revoke", tag = "tokens", summary = "Revoke a token (admin)", params(("id" = String, Path, description = "The id")), responses((status = 200, body = Object), (status = "4XX", description = "Refused: `error` says why, `field` names what was wrong", body = ApiError)))]
pub async fn revoke_token(
    State(state): State<AppState>,
    caller: Caller,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    events::subject::check_token("id", &id).map_err(|e| ApiError::new(StatusCode::NOT_FOUND, Some("id"), e))?;
    let folded: Token = state.commands.state(NAMESPACE, &id).await?;
    let not_found = || ApiError::new(StatusCode::NOT_FOUND, Some("id"), format!("no token `{id}`"));
    let grant = folded.grant.ok_or_else(not_found)?;
    let mut meta = match &grant.tenant {
        Some(tenant) => caller.meta_on(tenant, &[Role::Admin])?,
        None if caller.global() => caller.meta_on("default", &[Role::Admin])?,
        None => {
            let error = "revoking a token of every tenant needs the role admin on a token of every tenant";
            return Err(ApiError::new(StatusCode::FORBIDDEN, None, error));
        }
    };
    meta.tenant = NAMESPACE.to_owned();
    state.commands.execute::<Token>(&id, &TokenCommand::Revoke, &meta).await?;
    Ok(Json(serde_json::json!({ "id": id, "revoked": true })))
}

/// Issues the first admin token when the log has none, writing it to [`ADMIN_TOKEN_FILE`] in
/// `data_dir` (mode 0600) before it is stored, so that it is never stored without a copy.
/// Returns the file's path when it issued one.
pub async fn first_admin(commands: &CommandHandler, data_dir: &Path) -> anyhow::Result<Option<PathBuf>> {
    use anyhow::Context;
    let existing: Token = commands.state(NAMESPACE, token::FIRST_ADMIN).await?;
    if existing.issued_at.is_some() {
        return Ok(None);
    }
    let (_, secret) = new_secret();
    let path = data_dir.join(ADMIN_TOKEN_FILE);
    bus::creds::write_secret(&path, &format!("{}.{secret}\n", token::FIRST_ADMIN))
        .with_context(|| format!("writing the first admin token to {}", path.display()))?;
    let grant = Grant { subject: "admin".to_owned(), tenant: None, roles: [Role::Admin].into() };
    let meta = CommandMeta::new(NAMESPACE, "engine");
    match issue(commands, token::FIRST_ADMIN, grant, &secret, &meta).await {
        Ok(()) => Ok(Some(path)),
        // Another engine issued it first: its file is the one that works.
        Err(CommandError::Rejected(TokenRejection::AlreadyIssued)) => {
            std::fs::remove_file(&path).ok();
            Ok(None)
        }
        Err(e) => {
            std::fs::remove_file(&path).ok();
            Err(anyhow::anyhow!("issuing the first admin token: {e}"))
        }
    }
}
