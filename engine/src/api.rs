//! The HTTP JSON API. Every error is a 4xx or 5xx with `{"error": ..., "field": ...}`, the
//! field naming what was wrong.
//!
//! Every call but `/healthz` is authenticated by a bearer token, and each handler names the
//! roles that may make it (`crate::auth`): the tenant and the actor come from the token, never
//! from what the caller claims.
//!
//! Web-safe: the API speaks HTTPS when given a certificate (`engine serve` always gives it
//! one). A command (POST) must say `Content-Type: application/json`: a browser sends a form
//! or plain text to any address without asking, but JSON across origins only after a preflight
//! this API never answers (415 otherwise); nor does a browser add a bearer token by itself, so
//! a page under a rebound DNS name has nothing to present. A body past [`MAX_BODY`] is refused
//! (413), a request that takes longer than [`REQUEST_TIMEOUT`] is answered 408, at most
//! [`MAX_CONCURRENT`] requests are served at once (the rest wait), and each token has a rate
//! budget (429 with `Retry-After` past it).

use std::time::Duration;

use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use events::application::{Application, ApplicationCommand, ApplicationRejection, Settings, SettingsError};
use events::deployment::{Deployment, DeploymentCommand, DeploymentRejection, Launch, Mode};
use events::node::{Labels, Node, NodeCommand, NodeRejection};
use events::projection::deployments::DeploymentView;
use events::subject::check_token;
use events::tenant::{Tenant, TenantCommand, TenantRejection};
use events::token::Role;
use events::Aggregate;

use crate::auth::{Auth, Caller, READERS};
use crate::command::{CommandError, CommandHandler, CommandMeta, Committed};
use crate::read_model::{Deployments, Notifications, Page};
use bus::store::{ReadError, StoreError};

/// The largest request body: a compose file with room to spare, well under the bus's 4 MB.
pub const MAX_BODY: usize = 1024 * 1024;
/// How long a request may take before it is answered 408.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Requests served at once.
pub const MAX_CONCURRENT: usize = 256;

/// How long a launch waits for its deployment to reach the read model before answering.
const READ_YOUR_WRITE: Duration = Duration::from_secs(5);
const MAX_PAGE: usize = 500;

#[derive(Debug, Clone)]
pub struct AppState {
    pub commands: CommandHandler,
    pub deployments: Deployments,
    pub notifications: Notifications,
    pub nodes: crate::read_model::Nodes,
    pub catalog: crate::read_model::Catalog,
    pub liveness: crate::liveness::Liveness,
    pub issuer: crate::credentials::Issuer,
    /// The tenants' keys, which seal every secret before it is stored.
    pub keys: crate::secrets::TenantKeys,
    /// Asks registries what a tag names now.
    pub registry: reqwest::Client,
    /// The engine's figures, scraped at `/metrics`.
    pub metrics: crate::metrics::Metrics,
}

/// The API's OpenAPI 3.1 document, made from the handlers themselves.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "edge-orchestrator engine API",
        description = "Event-sourced orchestration of edge applications: the catalog, deployments, nodes, tenants and tokens. \
            Every call but /healthz presents `Authorization: Bearer <id>.<secret>`. Errors are `{\"error\", \"field\"}`."
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    components(schemas(ApiError))
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let bearer = HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("<id>.<secret>").build();
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme("bearer", SecurityScheme::Http(bearer));
    }
}

/// Every route, each registered with its documentation: a route is in the document because
/// it is in the router.
fn documented() -> utoipa_axum::router::OpenApiRouter<AppState> {
    use utoipa::OpenApi as _;
    use utoipa_axum::routes;
    utoipa_axum::router::OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(healthz))
        .routes(routes!(metrics))
        .routes(routes!(crate::auth::me))
        .routes(routes!(register_application, list_applications))
        .routes(routes!(add_version))
        .routes(routes!(add_margo_version))
        .routes(routes!(publish))
        .routes(routes!(delete_version))
        .routes(routes!(withdraw))
        .routes(routes!(get_application, delete_application))
        .routes(routes!(launch, list_deployments))
        .routes(routes!(get_deployment, uninstall))
        .routes(routes!(stop))
        .routes(routes!(start))
        .routes(routes!(update))
        .routes(routes!(force_update))
        .routes(routes!(apply))
        .routes(routes!(list_notifications))
        .routes(routes!(summary))
        .routes(routes!(deployment_history))
        .routes(routes!(deployment_logs))
        .routes(routes!(delete_tenant))
        .routes(routes!(get_policy, set_policy))
        .routes(routes!(list_nodes))
        .routes(routes!(get_node))
        .routes(routes!(node_telemetry))
        .routes(routes!(enroll_node))
        .routes(routes!(revoke_node))
        .routes(routes!(admit_margo))
        .routes(routes!(unregister_margo))
        .routes(routes!(subscriber_credential))
        .routes(routes!(auditor_credential))
        .routes(routes!(crate::auth::create_token))
        .routes(routes!(crate::auth::revoke_token))
}

/// The API's OpenAPI document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    documented().split_for_parts().1
}

#[utoipa::path(get, path = "/healthz", tag = "engine", summary = "`ok` while the engine serves (no token needed)",
    security(()), responses((status = 200, content_type = "text/plain", body = String)))]
async fn healthz() -> &'static str {
    "ok"
}

pub fn router(state: AppState, auth: Auth) -> Router {
    let (router, doc) = documented().split_for_parts();
    let doc = bytes::Bytes::from(doc.to_pretty_json().unwrap_or_default());
    let document = move || std::future::ready(([(axum::http::header::CONTENT_TYPE, "application/json")], doc.clone()));
    router
        .route("/openapi.json", get(document))
        .fallback(unknown_route)
        .method_not_allowed_fallback(wrong_method)
        .with_state(state)
        .layer(axum::middleware::from_fn_with_state(auth, crate::auth::authenticate))
        .layer(axum::middleware::from_fn(json_only))
        .layer(axum::middleware::from_fn(traced))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, REQUEST_TIMEOUT))
        .layer(tower::limit::ConcurrencyLimitLayer::new(MAX_CONCURRENT))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(panicked))
}

/// What a call whose handler panicked gets: a 500 in the API's own shape, never a dropped
/// connection. The panic is logged; the engine goes on.
pub(crate) fn panicked(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    tracing::error!(panic = what, "an API handler panicked");
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, None, "internal error (logged by the engine)").into_response()
}

async fn unknown_route(uri: axum::http::Uri) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, None, format!("no such route: `{}`", uri.path()))
}

async fn wrong_method(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, None, format!("`{}` does not take {method}", uri.path()))
}

/// Answers with the request's `traceparent`, when it has a valid one: its trace id is the
/// correlation id of every event, work and report the call causes.
async fn traced(request: Request, next: axum::middleware::Next) -> Response {
    let traceparent = request
        .headers()
        .get(bus::trace::HEADER)
        .filter(|v| v.to_str().ok().and_then(bus::trace::trace_id).is_some())
        .cloned();
    let mut response = next.run(request).await;
    if let Some(traceparent) = traceparent {
        response.headers_mut().insert(bus::trace::HEADER, traceparent);
    }
    response
}

/// Refuses a command that is not JSON (415), whatever its handler reads.
async fn json_only(request: Request, next: axum::middleware::Next) -> Result<Response, ApiError> {
    if matches!(*request.method(), axum::http::Method::POST | axum::http::Method::PUT) {
        let json = request
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
        if !json {
            let error = "a command's body must be JSON, sent as `Content-Type: application/json`";
            return Err(ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, None, error));
        }
    }
    Ok(next.run(request).await)
}

// ---------------------------------------------------------------------------------------------
// Errors

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ApiError {
    #[serde(skip)]
    status: StatusCode,
    error: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<String>,
    /// Where a body that is not JSON broke, counted from 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    line: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    column: Option<usize>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, field: Option<&str>, error: impl std::fmt::Display) -> ApiError {
        ApiError { status, error: error.to_string(), field: field.map(str::to_owned), line: None, column: None }
    }

    pub(crate) fn status(&self) -> StatusCode {
        self.status
    }

    /// What went wrong, and the field it names, if any.
    pub(crate) fn parts(&self) -> (&str, Option<&str>) {
        (&self.error, self.field.as_deref())
    }

    fn invalid(field: &str, error: impl std::fmt::Display) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, Some(field), error)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(&self)).into_response()
    }
}

impl From<ReadError> for ApiError {
    fn from(e: ReadError) -> ApiError {
        StoreError::from(e).into()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        tracing::error!(error = %e, "store failure");
        let status = match e {
            StoreError::Read(ReadError::Corrupt { .. }) => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError::new(status, None, e)
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> ApiError {
        tracing::error!(error = format!("{e:#}"), "internal failure");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, None, format!("{e:#}"))
    }
}

/// Maps a domain rejection to a status and the field it is about.
pub(crate) trait Rejection: std::error::Error {
    fn status_and_field(&self) -> (StatusCode, &'static str);
}

impl Rejection for ApplicationRejection {
    fn status_and_field(&self) -> (StatusCode, &'static str) {
        use ApplicationRejection as R;
        match self {
            R::AlreadyRegistered => (StatusCode::CONFLICT, "id"),
            R::NotRegistered => (StatusCode::NOT_FOUND, "id"),
            R::EmptyName => (StatusCode::UNPROCESSABLE_ENTITY, "name"),
            R::InvalidVersion { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "version"),
            R::VersionExists { .. } | R::AlreadyPublished { .. } => (StatusCode::CONFLICT, "version"),
            R::InvalidImage { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "image"),
            R::InvalidSettings(SettingsError::InvalidParameter(_)) => (StatusCode::UNPROCESSABLE_ENTITY, "parameters"),
            R::InvalidSettings(SettingsError::SecretWithValue(_)) => (StatusCode::UNPROCESSABLE_ENTITY, "secrets"),
            R::InvalidSettings(_) => (StatusCode::UNPROCESSABLE_ENTITY, "profiles"),
            R::UnknownVersion { .. } => (StatusCode::NOT_FOUND, "version"),
            R::InvalidCompose(_) => (StatusCode::UNPROCESSABLE_ENTITY, "compose"),
            R::PolicyDenied(v) if v.key == "image" => (StatusCode::UNPROCESSABLE_ENTITY, "image"),
            R::PolicyDenied(_) => (StatusCode::UNPROCESSABLE_ENTITY, "compose"),
            R::PublishedNotDeleted { .. } | R::NotPublished { .. } | R::AlreadyWithdrawn { .. } => {
                (StatusCode::CONFLICT, "version")
            }
            R::LiveDeployments(_) => (StatusCode::CONFLICT, "id"),
        }
    }
}

impl Rejection for DeploymentRejection {
    fn status_and_field(&self) -> (StatusCode, &'static str) {
        use DeploymentRejection as R;
        match self {
            R::AlreadyLaunched => (StatusCode::CONFLICT, "id"),
            R::InvalidSecret(_) | R::SecretIsParameter(_) => (StatusCode::UNPROCESSABLE_ENTITY, "secrets"),
            R::NotLaunched => (StatusCode::NOT_FOUND, "id"),
            R::UnknownApplication(_) => (StatusCode::UNPROCESSABLE_ENTITY, "application"),
            R::UnknownVersion { .. } | R::VersionNotPublished { .. } | R::VersionWithdrawn { .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, "version")
            }
            R::NoNodes | R::UnknownNode(_) | R::DuplicateNode(_) | R::NotATarget(_) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "nodes")
            }
            R::NotANodeStatus(_) | R::FailureWithoutError | R::BelowContainer { .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, "status")
            }
            R::AlreadyDesired(_) | R::Uninstalled | R::NothingToApply => (StatusCode::CONFLICT, "id"),
            R::NeverApplied => (StatusCode::UNPROCESSABLE_ENTITY, "instantly_apply"),
            R::NoSelector | R::EmptySelector => (StatusCode::UNPROCESSABLE_ENTITY, "selector"),
            R::Settings(SettingsError::UnknownProfile(_)) => (StatusCode::UNPROCESSABLE_ENTITY, "profile"),
            R::Settings(SettingsError::MissingSecret(_)) => (StatusCode::UNPROCESSABLE_ENTITY, "secrets"),
            R::Settings(_) | R::Compose(_) => (StatusCode::UNPROCESSABLE_ENTITY, "overrides"),
            R::InvalidRollout(_) => (StatusCode::UNPROCESSABLE_ENTITY, "rollout.batch"),
        }
    }
}

impl Rejection for NodeRejection {
    fn status_and_field(&self) -> (StatusCode, &'static str) {
        use NodeRejection as R;
        match self {
            R::NotRegistered | R::NotEnrolled => (StatusCode::NOT_FOUND, "id"),
            R::InvalidLabel(_) => (StatusCode::UNPROCESSABLE_ENTITY, "labels"),
            R::InvalidKey(_) => (StatusCode::UNPROCESSABLE_ENTITY, "public_key"),
            R::KeyRevoked(_) | R::KeyInUse(_) => (StatusCode::CONFLICT, "public_key"),
            R::Revoked => (StatusCode::CONFLICT, "id"),
            R::InvalidFingerprint(_) => (StatusCode::UNPROCESSABLE_ENTITY, "fingerprint"),
            R::NativeNode | R::MargoDevice => (StatusCode::CONFLICT, "id"),
            R::NotAdmitted(_) => (StatusCode::FORBIDDEN, "certificate"),
        }
    }
}

impl<R: Rejection> From<CommandError<R>> for ApiError {
    fn from(e: CommandError<R>) -> ApiError {
        match e {
            CommandError::Rejected(r) => {
                let (status, field) = r.status_and_field();
                ApiError::new(status, Some(field), r)
            }
            CommandError::Contention { .. } | CommandError::Interrupted { .. } => {
                ApiError::new(StatusCode::CONFLICT, None, e)
            }
            CommandError::Store(e) => e.into(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Extractors

/// A JSON body whose errors name the field at fault.
#[derive(Debug)]
pub struct Body<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes =
            bytes::Bytes::from_request(req, state).await.map_err(|e| ApiError::new(e.status(), None, e.body_text()))?;
        let deserializer = &mut serde_json::Deserializer::from_slice(&bytes);
        serde_path_to_error::deserialize(deserializer).map(Body).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let message = inner.to_string();
            // A body that is not JSON at all names where it broke, not a field.
            if !inner.is_data() {
                let mut error =
                    ApiError::new(StatusCode::BAD_REQUEST, None, format!("the body is not valid JSON: {message}"));
                (error.line, error.column) = (Some(inner.line()), Some(inner.column()));
                return error;
            }
            let field = missing_field(&message)
                .map(|f| if path == "." { f.to_owned() } else { format!("{path}.{f}") })
                .unwrap_or(path);
            let field = if field == "." { None } else { Some(field) };
            let error = match &field {
                Some(f) => format!("{f}: {message}"),
                None => format!("the body does not fit: {message}"),
            };
            ApiError::new(StatusCode::BAD_REQUEST, field.as_deref(), error)
        })
    }
}

/// `value` as one subject token, or a 422 naming `field`.
fn token(field: &str, value: &str) -> Result<(), ApiError> {
    check_token(field, value).map_err(|e| ApiError::invalid(field, e))
}

fn missing_field(message: &str) -> Option<&str> {
    message.strip_prefix("missing field `")?.split('`').next()
}

/// `meta` for a command: refused (410) once the tenant is deleted.
async fn live_meta(state: &AppState, caller: &Caller, roles: &[Role]) -> Result<CommandMeta, ApiError> {
    Ok(live_tenant(state, caller, roles).await?.0)
}

/// `meta` for a command, with the tenant it acts on: refused (410) once the tenant is deleted.
async fn live_tenant(state: &AppState, caller: &Caller, roles: &[Role]) -> Result<(CommandMeta, Tenant), ApiError> {
    let meta = caller.meta(roles)?;
    let tenant: Tenant = state.commands.state(&meta.tenant, &meta.tenant).await?;
    if tenant.deleted {
        return Err(ApiError::new(StatusCode::GONE, Some("x-tenant"), format!("tenant `{}` is deleted", meta.tenant)));
    }
    Ok((meta, tenant))
}

fn status_of(committed: &Committed) -> StatusCode {
    if committed.duplicate {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    }
}

// ---------------------------------------------------------------------------------------------
// Catalog

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"id": "sample", "name": "Sample app"}))]
pub struct RegisterApplication {
    pub id: String,
    pub name: String,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ApplicationBody {
    pub id: String,
    pub name: String,
    pub versions: Vec<VersionBody>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct VersionBody {
    pub version: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub image: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<Object>)]
    pub services: Vec<events::compose::Service>,
    #[serde(flatten)]
    pub settings: Settings,
    pub published: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub published_at: Option<chrono::DateTime<chrono::Utc>>,
    /// The digest each image's tag named when the version was published: what nodes run.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub digests: std::collections::BTreeMap<String, String>,
    /// When it was withdrawn: no launch or update takes it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub withdrawn_at: Option<chrono::DateTime<chrono::Utc>>,
}

fn application_body(id: &str, app: &Application) -> ApplicationBody {
    ApplicationBody {
        id: id.to_owned(),
        name: app.name.clone(),
        versions: app
            .versions
            .values()
            .map(|v| VersionBody {
                version: v.version.clone(),
                image: v.image.clone(),
                services: v.services.clone(),
                settings: v.settings.clone(),
                published: v.published_at.is_some(),
                published_at: v.published_at,
                digests: v.digests.clone(),
                withdrawn_at: v.withdrawn_at,
            })
            .collect(),
    }
}

async fn application_response(
    state: &AppState,
    tenant: &str,
    id: &str,
    status: StatusCode,
) -> Result<(StatusCode, Json<ApplicationBody>), ApiError> {
    let app: Application = state.commands.state(tenant, id).await?;
    Ok((status, Json(application_body(id, &app))))
}

#[utoipa::path(post, path = "/v1/applications", tag = "catalog", summary = "Register an application (vendor)", request_body = RegisterApplication, responses((status = 201, body = ApplicationBody), (status = "4XX", description = "Refused: `error` says why, `field` names what was wrong", body = ApiError)))]
pub(crate) async fn register_application(
    State(state): State<AppState>,
    caller: Caller,
    Body(body): Body<RegisterApplication>,
) -> Result<impl IntoResponse, ApiError> {
    let meta = live_meta(&state, &caller, &[Role::Vendor]).await?;
    token("id", &body.id)?;
    let command = ApplicationCommand::Register { name: body.name };
    let committed = state.commands.execute::<Application>(&body.id, &command, &meta).await?;
    application_response(&state, &meta.tenant, &body.id, status_of(&committed)).await
}

/// The tenant's applications, a page at a time by id: each name and its versions.
#[utoipa::path(get, path = "/v1/applications", tag = "catalog", summary = "The catalog by id, a page at a time", params(("limit" = Option<usize>, Query, description = "1 to 500; 50 by default"), ("cursor" = Option<String>, Query, description = "The next_cursor of the page before")), responses((status = 200, body = Page<events::projection::catalog::CatalogEntry>), (status = "4XX", description = "Refused: `error` says why, `field` names what was wrong", body = ApiError)))]
pub(crate) async fn list_applications(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<std::collections::HashMap<String, String>>,
) -> Result<Json<Page<events::projection::catalog::CatalogEntry>>, ApiError> {
    let meta = caller.meta(READERS)?;
    let (limit, cursor) = page_params(&query, &[])?;
    Ok(Json(state.catalog.list(&meta.tenant, cursor, limit)?))
}

#[utoipa::path(get, path = "/v1/applications/{id}", tag = "catalog", summary = "An application and its versions", params(("id" = String, Path, description = "The id")), responses((status = 200, body = ApplicationBody), (status = "4XX", description = "Refused: `error` says why, `field` names what was wrong", body = ApiError)))]
pub(crate) async fn get_application(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<ApplicationBody>, ApiError> {
    let meta = caller.meta(READERS)?;
    token("id", &id)?;
    let app: Application = state.commands.state(&meta.tenant, &id).await?;
    if !app.registered {
        return Err(ApiError::new(StatusCode::NOT_FOUND, Some("id"), format!("application `{id}` does not exist")));
    }
    Ok(Json(application_body(&id, &app)))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"version": "1.0.0", "image": "127.0.0.1:5000/sample/app:1.0.0", "parameters": {"GREETING": "hello"}, "profiles": {"quiet": {"GREETING": "hi"}}}))]
pub struct AddVersion {
    pub version: String,
    /// The image of a single-container version.
    #[serde(default)]
    pub image: Option<String>,
    /// A compose file (YAML text) for a version of several containers.
    #[serde(default)]
    pub compose: Option<String>,
    /// Environment variables the launch may set, with their defaults.
    #[serde(default)]
    pub parameters: std::collections::BTreeMap<String, String>,
    /// Named sets of values for some parameters.
    #[serde(default)]
    pub profiles: std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>>,
    /// Environment variables whose values are secret: each launch must give them sealed
    /// (`secrets`), never as a parameter, profile or override.
    #[serde(default)]
    pub secrets: std::collections::BTreeSet<String>,
}

#[utoipa::path(post, path = "/v1/applications/{id}/versions", tag = "catalog", summary = "Add a draft version: one image, or a compose file (vendor)", request_body = AddVersion, params(("id" = String, Path, description = "The id")), responses((status = 201, body = ApplicationBody), (status = "4XX", description = "Refused: `error` says why, `field` names what was wrong", body = ApiError)))]
pub(crate) async fn add_version(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Body(body): Body<AddVersion>,
) -> Result<impl IntoResponse, ApiError> {
    let (meta, tenant) = live_tenant(&state, &caller, &[Role::Vendor]).await?;
    token("id", &id)?;
    let settings = Settings { parameters: body.parameters, profiles: body.profiles, secrets: body.secrets };
    let version = body.version;
    let policy = tenant.policy;
    let command = match (body.image, body.compose) {
        (Some(image), None) => ApplicationCommand::AddVersion { version, image, settings, policy },
        (None, Some(compose)) => ApplicationCommand::AddComposeVersion { version, compose, settings, policy },
        (Some(_), Some(_)) => return Err(ApiError::invalid("compose", "give `image` or `compose`, not both")),
        (None, None) => return Err(ApiError::invalid("image", "give `image`, or `compose` for several containers")),
    };
    add(&state, &meta, &id, command).await
}

/// Adds a version to application `id`: the application as it is then.
async fn add(
    state: &AppState,
    meta: &CommandMeta,
    id: &str,
    command: ApplicationCommand,
) -> Result<(StatusCode, Json<ApplicationBody>), ApiError> {
    let committed = state.commands.execute::<Application>(id, &command, meta).await?;
    application_response(state, &meta.tenant, id, status_of(&committed)).await
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"description": "apiVersion: margo.org/v1-alpha1\nkind: ApplicationDescription\n...", "packages": {"sample-docker": "services:\n  web:\n    image: 127.0.0.1:5000/sample/app:1.0.0\n"}}))]
pub struct AddMargoVersion {
    /// The application description, `margo.yaml` (YAML text).
    pub description: String,
    /// The compose file of each component of its `compose` profile, by component name: what
    /// each package holds.
    #[serde(default)]
    pub packages: std::collections::BTreeMap<String, String>,
}

/// Adds a draft compose version from a Margo application description: its `compose` profile,
/// its parameters and its required resources (see `events::margo::description`).
#[utoipa::path(post, path = "/v1/applications/{id}/versions/margo", tag = "catalog", summary = "Add a draft version from a Margo application description (vendor)", request_body = AddMargoVersion, params(("id" = String, Path, description = "The id")), responses((status = 201, body = ApplicationBody), (status = "4XX", description = "Refused: `error` says why, `field` names what was wrong", body = ApiError)))]
pub(crate) async fn add_margo_version(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Body(body): Body<AddMargoVersion>,
) -> Result<impl IntoResponse, ApiError> {
    let (meta, tenant) = live_tenant(&state, &caller, &[Role::Vendor]).await?;
    token("id", &id)?;
    let described = events::margo::description::read(&id, &body.description, &body.packages)
        .map_err(|refused| ApiError::invalid(&refused.field, refused.message))?;
    let settings = Settings { parameters: described.parameters, ..Settings::default() };
    let command = ApplicationCommand::AddComposeVersion {
        version: described.version,
        compose: described.compose,
        settings,
        policy: tenant.policy,
    };
    add(&state, &meta, &id, command).await
}

#[utoipa::path(post, path = "/v1/applications/{id}/versions/{version}/publish", tag = "catalog", summary = "Publish a version, each image pinned to its digest (vendor)", params(("id" = String, Path, description = "The id"), ("version" = String, Path, description = "The version")), responses((status = 200, body = ApplicationBody), (status = "4XX", description = "Refused: `error` says why, `field` names what was wrong", body = ApiError)))]
pub(crate) async fn publish(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, version)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    let meta = live_meta(&state, &caller, &[Role::Vendor]).await?;
    token("id", &id)?;
    // Every image pinned to what its tag names now.
    let app: Application = state.commands.state(&meta.tenant, &id).await?;
    let digests = match app.version(&version).filter(|v| v.published_at.is_none()) {
        Some(v) => crate::registry::resolve_all(&state.registry, v.images()).await.map_err(unresolved)?,
        None => Default::default(),
    };
    let command = ApplicationCommand::Publish { version, digests };
    state.commands.execute::<Application>(&id, &command, &meta).await?;
    application_response(&state, &meta.tenant, &id, StatusCode::OK).await
}

#[utoipa::path(delete, path = "/v1/applications/{id}/versions/{version}", tag = "catalog", summary = "Delete a draft version (vendor)",
    params(("id" = String, Path,), ("version" = String, Path,)), responses((status = 200, body = ApplicationBody), (status = "4XX", description = "Refused: `error` says why, `field` names what was wrong", body = ApiError)))]
pub(crate) async fn delete_version(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, version)): Path<(String, String)>,
) -> Result<impl IntoResponse, ApiError> {
    let meta = live_meta(&state, &caller, &[Role::Vendor]).await?;
    token("id", &id)?;
    state.commands.execute::<Application>(&id, &ApplicationCommand::DeleteVersion { version }, &meta).await?;
    application_response(&state, &meta.tenant, &id, StatusCode::OK).await
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"reason": "crashes on boards with 512 MB"}))]
pub struct WithdrawRequest {
    /// Why, for whoever reads the catalog and the log.
    #[serde(default)]
    pub reason: String,
}

#[utoipa::path(post, path = "/v1/applications/{id}/versions/{version}/withdraw", tag = "catalog",
    summary = "Withdraw (yank) a published version: no launch or update takes it; its deployments go on (vendor)",
    request_body = WithdrawRequest, params(("id" = String, Path,), ("version" = String, Path,)),
    responses((status = 200, body = ApplicationBody), (status = "4XX", description = "Refused: `error` says why, `field` names what was wrong", body = ApiError)))]
pub(crate) async fn withdraw(
    State(state): State<AppState>,
    caller: Caller,
    Path((id, version)): Path<(String, String)>,
    Body(body): Body<WithdrawRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let meta = live_meta(&state, &caller, &[Role::Vendor]).await?;
    token("id", &id)?;
    let command = ApplicationCommand::Withdraw { version, reason: body.reason };
    state.commands.execute::<Application>(&id, &command, &meta).await?;
    application_response(&state, &meta.tenant, &id, StatusCode::OK).await
}

#[utoipa::path(delete, path = "/v1/applications/{id}", tag = "catalog",
    summary = "Delete an application with no live deployment (vendor); its id may be registered again",
    params(("id" = String, Path,)), responses((status = 200, body = Object), (status = "4XX", description = "Refused: `error` says why, `field` names what was wrong", body = ApiError)))]
pub(crate) async fn delete_application(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let meta = live_meta(&state, &caller, &[Role::Vendor]).await?;
    token("id", &id)?;
    // What runs it is read once the read models hold the whole log: a launch just made counts.
    let last = state.commands.store().last_sequence().await.map_err(anyhow::Error::from)?;
    if !crate::projector::wait_for(state.deployments.tree(), last, READ_YOUR_WRITE).await? {
        let error = "the read models are behind the log: ask again shortly";
        return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, None, error));
    }
    let live = state.notifications.live(&meta.tenant, &id)?;
    state.commands.execute::<Application>(&id, &ApplicationCommand::Delete { live }, &meta).await?;
    Ok(Json(serde_json::json!({ "application": id, "deleted": true })))
}

/// A tag the registry could not resolve: missing (422, naming the image), or the registry
/// out of reach (503).
fn unresolved(e: crate::registry::ResolveError) -> ApiError {
    use crate::registry::ResolveError as E;
    match e {
        E::NotFound { .. } | E::Unauthorized { .. } => ApiError::invalid("image", e),
        E::Unreachable { .. } | E::NoDigest { .. } => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, Some("image"), e),
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"application": "sample", "version": "1.0.0", "selector": {"site": "lab"}, "profile": "quiet", "overrides": {"GREETING": "hey"}, "staged": false, "rollout": {"batch": "25%", "max_failures": 1}}))]
pub struct LaunchRequest {
    pub application: String,
    pub version: String,
    /// Explicit target nodes; or else a `selector`.
    #[serde(default)]
    pub nodes: Option<Vec<String>>,
    /// Every node whose labels include these pairs, now and as nodes join or change.
    #[serde(default)]
    pub selector: Option<events::node::Labels>,
    /// A profile of the version.
    #[serde(default)]
    pub profile: Option<String>,
    /// Single parameter values over the defaults and the profile.
    #[serde(default)]
    pub overrides: std::collections::BTreeMap<String, String>,
    /// Download in the background first (Kelvin's `staged`); default false.
    #[serde(default)]
    pub staged: bool,
    /// Start as soon as downloaded; with `staged`, false waits for an apply. Default true.
    #[serde(default = "yes")]
    pub instantly_apply: bool,
    /// At most `batch` nodes (a number, or a percent as `"25%"`) at a time; halt once more
    /// than `max_failures` failed.
    #[serde(default)]
    pub rollout: Option<RolloutRequest>,
    /// Environment values never stored in clear: sealed under the tenant's key before the
    /// launch is stored, shown as `***`.
    #[serde(default)]
    #[schema(value_type = std::collections::BTreeMap<String, String>)]
    pub secrets: SecretValues,
}

/// Values in clear on their way to be sealed: printed, each is `***`.
#[derive(Default, Deserialize)]
#[serde(transparent)]
pub struct SecretValues(pub std::collections::BTreeMap<String, String>);

impl std::fmt::Debug for SecretValues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.0.keys().map(|name| (name, events::REDACTED))).finish()
    }
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RolloutRequest {
    pub batch: Batch,
    #[serde(default)]
    pub max_failures: u32,
}

/// A number of nodes, or a percent of them written `"N%"`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum Batch {
    Nodes(u32),
    Percent(String),
}

impl RolloutRequest {
    fn rollout(&self) -> Result<events::deployment::Rollout, ApiError> {
        let (batch, percent) = match &self.batch {
            Batch::Nodes(n) => (*n, false),
            Batch::Percent(text) => {
                let number = text.strip_suffix('%').and_then(|n| n.trim().parse::<u32>().ok());
                let n =
                    number.ok_or_else(|| ApiError::invalid("rollout.batch", format!("`{text}` is not N or \"N%\"")))?;
                (n, true)
            }
        };
        Ok(events::deployment::Rollout { batch, percent, max_failures: self.max_failures })
    }
}

#[utoipa::path(post, path = "/v1/deployments", tag = "deployments", summary = "Launch a published version onto nodes or a selector (operator)", request_body = LaunchRequest, responses((status = 201, body = DeploymentAnswer), (status = 202, body = DeploymentAnswer, description = "Stored; the read model has not caught up yet"), (status = "4XX", description = "Refused: `error` says why, `field` names what was wrong", body = ApiError)))]
pub(crate) async fn launch(
    State(state): State<AppState>,
    caller: Caller,
    Body(body): Body<LaunchRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let meta = live_meta(&state, &caller, &[Role::Operator]).await?;
    token("application", &body.application)?;
    let (nodes, registered_nodes) = match (&body.nodes, &body.selector) {
        (Some(_), Some(_)) => return Err(ApiError::invalid("selector", "name the nodes or a selector, not both")),
        (None, None) => return Err(ApiError::invalid("nodes", "name the nodes or a selector")),
        (Some(nodes), None) => {
            let mut registered = std::collections::BTreeSet::new();
            for node in nodes {
                check_token("node", node).map_err(|e| ApiError::invalid("nodes", e))?;
                let known: Node = state.commands.state(&meta.tenant, node).await?;
                if known.registered {
                    registered.insert(node.clone());
                }
            }
            (nodes.clone(), registered)
        }
        (None, Some(selector)) => {
            for key in selector.keys() {
                check_token("selector key", key).map_err(|e| ApiError::invalid("selector", e))?;
            }
            let matching: Vec<String> =
                state.nodes.all_of(&meta.tenant)?.into_iter().filter(|n| n.matches(selector)).map(|n| n.id).collect();
            let registered = matching.iter().cloned().collect();
            (matching, registered)
        }
    };
    let application: Application = state.commands.state(&meta.tenant, &body.application).await?;
    let known = KnownValues::of(&application, &body.version);
    // With an idempotency key, the deployment id is the key: a retried launch finds it.
    let id = meta.command_id.to_string();
    let secrets = state.keys.seal(&meta.tenant, &id, &body.secrets.0).await?;
    let command = DeploymentCommand::Launch(Launch {
        application_id: body.application,
        application,
        version: body.version,
        nodes,
        registered_nodes,
        mode: Mode { staged: body.staged, instantly_apply: body.instantly_apply },
        selector: body.selector,
        profile: body.profile,
        overrides: body.overrides,
        rollout: body.rollout.as_ref().map(RolloutRequest::rollout).transpose()?,
        secrets,
    });
    let committed = state.commands.execute::<Deployment>(&id, &command, &meta).await.map_err(|e| known.explain(e))?;
    deployment_response(&state, &meta.tenant, id, &committed).await
}

/// The profiles and parameters a version has: what an error about one names, with the nearest.
struct KnownValues {
    profiles: Vec<String>,
    parameters: Vec<String>,
}

impl KnownValues {
    fn of(application: &Application, version: &str) -> KnownValues {
        let settings = application.version(version).map(|v| v.settings.clone()).unwrap_or_default();
        KnownValues {
            profiles: settings.profiles.into_keys().collect(),
            parameters: settings.parameters.into_keys().collect(),
        }
    }

    /// The API's error for `e`; one about a profile or a parameter lists the valid ones.
    fn explain(&self, e: CommandError<DeploymentRejection>) -> ApiError {
        use events::application::SettingsError as S;
        let (field, wrong, known, kind) = match &e {
            CommandError::Rejected(DeploymentRejection::Settings(S::UnknownProfile(p))) => {
                ("profile", p, &self.profiles, "profiles")
            }
            CommandError::Rejected(DeploymentRejection::Settings(S::UnknownParameter(p))) => {
                ("overrides", p, &self.parameters, "parameters")
            }
            _ => return e.into(),
        };
        let names: Vec<&str> = known.iter().map(String::as_str).collect();
        let nearest = events::nearest(wrong, &names, 3).map(|n| format!(" (did you mean `{n}`?)")).unwrap_or_default();
        let listed = match names.is_empty() {
            true => format!("the version has no {kind}"),
            false => format!("its {kind}: {}", names.join(", ")),
        };
        ApiError::invalid(field, format!("{e}{nearest}; {listed}"))
    }
}

/// Answers a deployment command with the deployment as the read model shows it once it has
/// caught up with the command's events.
async fn deployment_response(
    state: &AppState,
    tenant: &str,
    id: String,
    committed: &Committed,
) -> Result<(StatusCode, Json<DeploymentAnswer>), ApiError> {
    let sequence = committed.events.last().map_or(0, |e| e.sequence);
    if !crate::projector::wait_for(state.deployments.tree(), sequence, READ_YOUR_WRITE).await? {
        // Stored, but the read model has not caught up: accepted, to be read later.
        return Ok((StatusCode::ACCEPTED, Json(DeploymentAnswer { id, sequence, deployment: None })));
    }
    let view = state.deployments.get(tenant, &id)?;
    Ok((status_of(committed), Json(DeploymentAnswer { id, sequence, deployment: view })))
}

/// Carries out a deployment command; `explain` makes the API's error of one refused.
async fn deployment_command(
    state: &AppState,
    caller: &Caller,
    id: String,
    command: DeploymentCommand,
    explain: &(dyn Fn(CommandError<DeploymentRejection>) -> ApiError + Sync),
) -> Result<(StatusCode, Json<DeploymentAnswer>), ApiError> {
    let meta = live_meta(state, caller, &[Role::Operator]).await?;
    check_token("id", &id).map_err(|e| ApiError::new(StatusCode::NOT_FOUND, Some("id"), e))?;
    let committed = state.commands.execute::<Deployment>(&id, &command, &meta).await.map_err(explain)?;
    let (status, body) = deployment_response(state, &meta.tenant, id, &committed).await?;
    // The request is accepted; the nodes carry it out.
    Ok((if status == StatusCode::CREATED { StatusCode::ACCEPTED } else { status }, body))
}

#[utoipa::path(post, path = "/v1/deployments/{id}/stop", tag = "deployments", summary = "Stop its containers on every node (operator)", params(("id" = String, Path, description = "The id")), responses((status = 202, body = DeploymentAnswer), (status = "4XX", description = "Refused: `error` says why, `field` names what was wrong", body = ApiError)))]
pub(crate) async fn stop(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    deployment_command(&state, &caller, id, DeploymentCommand::Stop, &ApiError::from).await
}

#[utoipa::path(post, path = "/v1/deployments/{id}/start", tag = "deployments", summary = "Start its containers again (operator)", params(("id" = String, Path, description = "The id")), responses((status = 202, body = DeploymentAnswer), (status = "4XX", description = "Refused: `error` says why, `field` names what was wrong", body = ApiError)))]
pub(crate) async fn start(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    deployment_command(&state, &caller, id, DeploymentCommand::Start, &ApiError::from).await
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"version": "1.1.0", "rollout": {"batch": 2}, "rollback_within": 60}))]
pub struct UpdateRequest {
    pub version: String,
    #[serde(default)]
    pub staged: bool,
    #[serde(default = "yes")]
    pub instantly_apply: bool,
    #[serde(default)]
    pub rollout: Option<RolloutRequest>,
    /// Go back to the current version if the new one fails to start, or stops running within
    /// this many seconds on a node.
    #[serde(default)]
    pub rollback_within: Option<u32>,
    /// A profile in place of the deployment's; with the same version, what fixes a launch in
    /// place.
    #[serde(default)]
    pub profile: Option<String>,
    /// Parameter values in place of the deployment's overrides, whole.
    #[serde(default)]
    pub overrides: Option<std::collections::BTreeMap<String, String>>,
}

#[utoipa::path(post, path = "/v1/deployments/{id}/update", tag = "deployments", summary = "Move to another published version (operator)", request_body = UpdateRequest, params(("id" = String, Path, description = "The id")), responses((status = 202, body = DeploymentAnswer), (status = "4XX", description = "Refused: `error` says why, `field` names what was wrong", body = ApiError)))]
pub(crate) async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Body(body): Body<UpdateRequest>,
) -> Result<impl IntoResponse, ApiError> {
    let meta = live_meta(&state, &caller, &[Role::Operator]).await?;
    token("id", &id)?;
    let deployment: Deployment = state.commands.state(&meta.tenant, &id).await?;
    let application: Application = if deployment.launched {
        state.commands.state(&meta.tenant, &deployment.application).await?
    } else {
        Application::default()
    };
    let mode = Mode { staged: body.staged, instantly_apply: body.instantly_apply };
    let rollout = body.rollout.as_ref().map(RolloutRequest::rollout).transpose()?;
    let rollback_within = body.rollback_within;
    let reconfigure = (body.profile.is_some() || body.overrides.is_some()).then(|| events::deployment::Reconfigure {
        profile: body.profile.or_else(|| deployment.profile.clone()),
        overrides: body.overrides.unwrap_or_else(|| deployment.overrides.clone()),
    });
    let version = body.version;
    let known = KnownValues::of(&application, &version);
    let command = DeploymentCommand::Update { application, version, mode, rollout, rollback_within, reconfigure };
    deployment_command(&state, &caller, id, command, &|e| known.explain(e)).await
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"deployments": ["0192f6a1-0000-7000-8000-00000000002a"]}))]
pub struct ApplyRequest {
    pub deployments: Vec<String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ApplyResponse {
    /// One answer per deployment, in the order asked.
    pub results: Vec<ApplyResult>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ApplyResult {
    pub id: String,
    /// 202 when applied; otherwise the error for that deployment alone.
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Applies several staged deployments at once; each succeeds or fails on its own.
#[utoipa::path(post, path = "/v1/deployments/apply", tag = "deployments", summary = "Start staged deployments, each on its own (operator)", request_body = ApplyRequest, responses((status = 200, body = ApplyResponse), (status = "4XX", description = "Refused: `error` says why, `field` names what was wrong", body = ApiError)))]
pub(crate) async fn apply(
    State(state): State<AppState>,
    caller: Caller,
    Body(body): Body<ApplyRequest>,
) -> Result<Json<ApplyResponse>, ApiError> {
    live_meta(&state, &caller, &[Role::Operator]).await?;
    if body.deployments.is_empty() {
        return Err(ApiError::invalid("deployments", "name at least one deployment"));
    }
    let mut results = Vec::with_capacity(body.deployments.len());
    for id in body.deployments {
        let result =
            match deployment_command(&state, &caller, id.clone(), DeploymentCommand::Apply, &ApiError::from).await {
                Ok((status, _)) => ApplyResult { id, status: status.as_u16(), error: None },
                Err(e) => ApplyResult { id, status: e.status.as_u16(), error: Some(e.error) },
            };
        results.push(result);
    }
    Ok(Json(ApplyResponse { results }))
}

/// Resolves the version's tags again and moves every node to what they name now: only the
/// containers whose digest changed are recreated.
#[utoipa::path(post, path = "/v1/deployments/{id}/force-update", tag = "deployments", summary = "Take what the version's tags name now (operator)", params(("id" = String, Path, description = "The id")), responses((status = 202, body = DeploymentAnswer), (status = "4XX", description = "Refused: `error` says why, `field` names what was wrong", body = ApiError)))]
pub(crate) async fn force_update(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let meta = live_meta(&state, &caller, &[Role::Operator]).await?;
    check_token("id", &id).map_err(|e| ApiError::new(StatusCode::NOT_FOUND, Some("id"), e))?;
    let deployment: Deployment = state.commands.state(&meta.tenant, &id).await?;
    let mut digests = std::collections::BTreeMap::new();
    if deployment.launched {
        let app: Application = state.commands.state(&meta.tenant, &deployment.application).await?;
        if let Some(version) = app.version(&deployment.version) {
            let resolved = crate::registry::resolve_all(&state.registry, version.images()).await.map_err(unresolved)?;
            digests =
                resolved.into_iter().map(|(image, d)| (events::application::unpinned(&image).to_owned(), d)).collect();
        }
    }
    deployment_command(&state, &caller, id, DeploymentCommand::ForceUpdate { digests }, &ApiError::from).await
}

#[utoipa::path(delete, path = "/v1/deployments/{id}", tag = "deployments", summary = "Uninstall: remove its containers from every node (operator)", params(("id" = String, Path, description = "The id")), responses((status = 202, body = DeploymentAnswer), (status = "4XX", description = "Refused: `error` says why, `field` names what was wrong", body = ApiError)))]
pub(crate) async fn uninstall(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    deployment_command(&state, &caller, id, DeploymentCommand::Uninstall, &ApiError::from).await
}

/// The answer to a deployment command: the deployment, once the read model shows the command.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeploymentAnswer {
    pub id: String,
    /// The stream sequence of the command's last event.
    pub sequence: u64,
    /// The deployment as the read model shows it, once it has caught up.
    pub deployment: Option<DeploymentView>,
}

#[utoipa::path(get, path = "/v1/deployments/{id}", tag = "deployments", summary = "A deployment: each node's and container's status", params(("id" = String, Path, description = "The id")), responses((status = 200, body = DeploymentView), (status = "4XX", description = "Refused: `error` says why, `field` names what was wrong", body = ApiError)))]
pub(crate) async fn get_deployment(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<DeploymentView>, ApiError> {
    let meta = caller.meta(READERS)?;
    let mut view = state
        .deployments
        .get(&meta.tenant, &id)?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, Some("id"), format!("deployment `{id}` does not exist")))?;
    state.nodes.mark_unreachable(&mut view)?;
    Ok(Json(view))
}

pub use events::projection::history::HistoryEntry;

/// Every status the deployment went through, on every node, in order: the log's own account,
/// not the read model's latest. A page at a time: `cursor` is the stream sequence of the last
/// entry seen.
#[utoipa::path(get, path = "/v1/deployments/{id}/history", tag = "deployments", summary = "Every status it went through, from the log", params(("id" = String, Path, description = "The id"), ("limit" = Option<usize>, Query, description = "1 to 500; 50 by default"), ("cursor" = Option<String>, Query, description = "The next_cursor of the page before")), responses((status = 200, body = Page<HistoryEntry>), (status = "4XX", description = "Refused: `error` says why, `field` names what was wrong", body = ApiError)))]
pub(crate) async fn deployment_history(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(query): Query<std::collections::HashMap<String, String>>,
) -> Result<Json<Page<HistoryEntry>>, ApiError> {
    let meta = caller.meta(READERS)?;
    token("id", &id)?;
    let (limit, cursor) = page_params(&query, &[])?;
    let after = match cursor {
        Some(text) => text
            .parse::<u64>()
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, Some("cursor"), format!("cursor `{text}`: {e}")))?,
        None => 0,
    };
    let subject = events::subject::aggregate(&meta.tenant, Deployment::TYPE, &id);
    let store = state.commands.store();
    let mut loaded = store.load(&subject).await?.events;
    let Some(first) = loaded.first().map(|e| e.sequence) else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, Some("id"), format!("deployment `{id}` does not exist")));
    };
    // What each node said is on its pair's subject.
    loaded.extend(store.load_matching(&events::subject::deployment_nodes(&meta.tenant, &id), first.max(after)).await?);
    loaded.retain(|e| e.sequence > after);
    loaded.sort_by_key(|e| e.sequence);
    let mut items = Vec::with_capacity(limit);
    let mut more = false;
    for stored in &loaded {
        let corrupt = |source| ReadError::Corrupt { sequence: stored.sequence, source };
        let fact = events::projection::Fact::of(&stored.envelope).map_err(corrupt)?;
        if let Some(entry) = events::projection::history::entry(stored.sequence, &stored.envelope, fact) {
            if items.len() >= limit {
                more = true;
                break;
            }
            items.push(entry);
        }
    }
    let next_cursor = if more { items.last().map(|e| e.sequence.to_string()) } else { None };
    Ok(Json(Page { items, next_cursor }))
}

/// `limit` (1 to `MAX_PAGE`, 50 by default) and `cursor` from a query; a parameter neither
/// these nor one of `filters` is refused.
fn page_params<'q>(
    query: &'q std::collections::HashMap<String, String>,
    filters: &[&str],
) -> Result<(usize, Option<&'q str>), ApiError> {
    let bad = |field: &str, why: String| ApiError::new(StatusCode::BAD_REQUEST, Some(field), why);
    let known = |k: &str| k == "limit" || k == "cursor" || filters.contains(&k);
    if let Some(unknown) = query.keys().find(|k| !known(k)) {
        let expected = ["limit", "cursor"].iter().chain(filters).map(|f| format!("`{f}`")).collect::<Vec<_>>();
        return Err(bad(unknown, format!("unknown parameter `{unknown}`, expected one of {}", expected.join(", "))));
    }
    let limit = match query.get("limit") {
        Some(text) => text.parse::<usize>().map_err(|e| bad("limit", format!("limit `{text}`: {e}")))?,
        None => 50,
    };
    if limit == 0 || limit > MAX_PAGE {
        return Err(bad("limit", format!("limit must be 1 to {MAX_PAGE}")));
    }
    Ok((limit, query.get("cursor").map(String::as_str)))
}

#[utoipa::path(get, path = "/v1/deployments", tag = "deployments", summary = "Deployments in launch order, a page at a time, filtered", params(("limit" = Option<usize>, Query, description = "1 to 500; 50 by default"), ("cursor" = Option<String>, Query, description = "The next_cursor of the page before"), ("staged" = Option<bool>, Query,), ("status" = Option<events::Status>, Query,), ("application" = Option<String>, Query,), ("version" = Option<String>, Query,), ("node" = Option<String>, Query,), ("include_removed" = Option<bool>, Query,)), responses((status = 200, body = Page<DeploymentView>), (status = "4XX", description = "Refused: `error` says why, `field` names what was wrong", body = ApiError)))]
pub(crate) async fn list_deployments(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<std::collections::HashMap<String, String>>,
) -> Result<Json<Page<DeploymentView>>, ApiError> {
    let meta = caller.meta(READERS)?;
    let filters = ["staged", "status", "application", "version", "node", "include_removed"];
    let (limit, cursor) = page_params(&query, &filters)?;
    let bad = |field: &str, why: String| ApiError::new(StatusCode::BAD_REQUEST, Some(field), why);
    let staged = match query.get("staged").map(String::as_str) {
        None => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(other) => return Err(bad("staged", format!("staged `{other}`: expected true or false"))),
    };
    let status = match query.get("status") {
        None => None,
        Some(text) => Some(
            events::Status::ALL
                .into_iter()
                .find(|s| s.as_str() == text)
                .ok_or_else(|| bad("status", format!("status `{text}` is not one of the statuses")))?,
        ),
    };
    let include_removed = match query.get("include_removed").map(String::as_str) {
        None | Some("true") => true,
        Some("false") => false,
        Some(other) => {
            return Err(bad("include_removed", format!("include_removed `{other}`: expected true or false")))
        }
    };
    let (application, version, node) = (query.get("application"), query.get("version"), query.get("node"));
    // A read model that fails while the list is filtered fails the call, never hides a deployment.
    let failed = std::cell::RefCell::new(None::<anyhow::Error>);
    let wanted = |d: &DeploymentView| {
        staged.is_none_or(|s| d.staged == s)
            && status.is_none_or(|s| d.status == s)
            && application.is_none_or(|a| &d.application == a)
            && version.is_none_or(|v| &d.version == v)
            && node.is_none_or(|n| match state.deployments.targets(&meta.tenant, &d.id, n) {
                Ok(targets) => targets,
                Err(e) => {
                    failed.borrow_mut().get_or_insert(e);
                    false
                }
            })
            && (include_removed || d.status != events::Status::Removed)
    };
    let mut page = state.deployments.list(&meta.tenant, cursor, limit, wanted)?;
    if let Some(e) = failed.into_inner() {
        return Err(e.into());
    }
    for view in &mut page.items {
        state.nodes.mark_unreachable(view)?;
    }
    Ok(Json(page))
}

/// Deployments running an older version than the newest published one of their application.
#[utoipa::path(get, path = "/v1/notifications", tag = "deployments", summary = "Deployments running an older version than the newest published", params(("limit" = Option<usize>, Query, description = "1 to 500; 50 by default"), ("cursor" = Option<String>, Query, description = "The next_cursor of the page before")), responses((status = 200, body = Page<events::projection::notifications::Notification>), (status = "4XX", description = "Refused: `error` says why, `field` names what was wrong", body = ApiError)))]
pub(crate) async fn list_notifications(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<std::collections::HashMap<String, String>>,
) -> Result<Json<Page<events::projection::notifications::Notification>>, ApiError> {
    let meta = caller.meta(READERS)?;
    let (limit, cursor) = page_params(&query, &[])?;
    Ok(Json(state.notifications.list(&meta.tenant, cursor, limit)?))
}

// ---------------------------------------------------------------------------------------------
// Nodes

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct NodeBody {
    pub id: String,
    pub labels: events::node::Labels,
    pub state: Option<events::node::NodeState>,
    /// When the engine last heard the node, by the engine's clock: its last heartbeat's
    /// arrival, or, for a node not heard since the engine started, the last one recorded.
    pub last_heartbeat: Option<chrono::DateTime<chrono::Utc>>,
    /// How far the node's clock was ahead of the engine's at its last heartbeat (behind when
    /// negative), in milliseconds; absent until the engine hears it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clock_skew_ms: Option<i64>,
    /// Reports on its subject the engine refused (`node.report_refused`), and the last.
    pub refused_reports: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_refused: Option<events::node::Refused>,
    /// A Margo device's certificate fingerprint: it runs no edge node and polls the Margo API.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub margo: Option<String>,
}

#[utoipa::path(get, path = "/v1/nodes/{id}", tag = "nodes", summary = "A node: labels, state, last heard", params(("id" = String, Path, description = "The id")), responses((status = 200, body = NodeBody), (status = "4XX", description = "Refused: `error` says why, `field` names what was wrong", body = ApiError)))]
async fn get_node(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<NodeBody>, ApiError> {
    let meta = caller.meta(READERS)?;
    token("id", &id)?;
    let node: Node = state.commands.state(&meta.tenant, &id).await?;
    if !node.registered {
        return Err(ApiError::new(StatusCode::NOT_FOUND, Some("id"), format!("node `{id}` is not registered")));
    }
    let heard = state.liveness.latest(&meta.tenant, &id);
    Ok(Json(NodeBody {
        id,
        labels: node.labels,
        state: node.state,
        last_heartbeat: heard.as_ref().map(|h| h.received).or(node.last_heartbeat),
        clock_skew_ms: heard.map(|h| h.clock_skew_ms),
        refused_reports: node.refused_reports,
        last_refused: node.last_refused,
        margo: node.margo.map(|m| m.fingerprint),
    }))
}

/// Counts (running, failed, pending, stopped, total) per deployment, per node and per
/// application and version, over the tenant's deployments.
#[utoipa::path(get, path = "/v1/summary", tag = "deployments", summary = "Counts per deployment, node, application and version", responses((status = 200, body = events::projection::summary::Summary), (status = "4XX", description = "Refused: `error` says why, `field` names what was wrong", body = ApiError)))]
pub(crate) async fn summary(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<events::projection::summary::Summary>, ApiError> {
    let meta = caller.meta(READERS)?;
    let views = state.deployments.all_of(&meta.tenant)?;
    Ok(Json(events::projection::summary::summarize(&views)))
}

/// The engine's figures in Prometheus text format; the nodes and deployments counted are the
/// caller's tenant's.
#[utoipa::path(get, path = "/metrics", tag = "engine", summary = "The engine's figures in Prometheus text format", responses((status = 200, content_type = "text/plain", body = String), (status = "4XX", description = "Refused: `error` says why, `field` names what was wrong", body = ApiError)))]
async fn metrics(State(state): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    let meta = caller.meta(READERS)?;
    let store = state.commands.store();
    let folded = crate::projector::checkpoint(state.deployments.tree()).map_err(anyhow::Error::from)?;
    let mut scraped = crate::metrics::Scraped {
        projector_lag: store.last_sequence().await.map_err(anyhow::Error::from)?.saturating_sub(folded),
        dead_letters: store.dead_letters().count(),
        ..Default::default()
    };
    for consumer in crate::worker::CONSUMERS {
        // A consumer not made yet (its worker starting) has nothing pending.
        let pending = store.consumers().consumer_info(consumer).await.map_or(0, |info| info.num_pending);
        scraped.consumer_pending.push((consumer.to_owned(), pending));
    }
    let mut nodes = std::collections::BTreeMap::<String, u64>::new();
    for node in state.nodes.all_of(&meta.tenant)? {
        let node_state = node.state.map_or("enrolled".to_owned(), |s| format!("{s:?}").to_lowercase());
        let count = nodes.entry(node_state).or_default();
        *count = count.saturating_add(1);
    }
    scraped.nodes = nodes.into_iter().collect();
    let deployments = state.deployments.count_by_status(&meta.tenant)?;
    scraped.deployments = deployments.into_iter().map(|(status, count)| (status.as_str().to_owned(), count)).collect();
    let text = state.metrics.encode(&scraped).map_err(|e| anyhow::anyhow!("encoding the metrics: {e}"))?;
    Ok(([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response())
}

/// How long the engine waits for a node to answer a logs request.
const LOGS_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LogsPage {
    pub node: String,
    pub containers: Vec<events::logs::ContainerLogs>,
    /// Pass as `cursor` for the next page; absent when every container is read to the end.
    pub next_cursor: Option<String>,
}

/// A page (200 lines) of a deployment's container logs on one node, fetched from the node.
#[utoipa::path(get, path = "/v1/deployments/{id}/logs", tag = "deployments", summary = "200 lines of its containers' logs on one node", params(("id" = String, Path, description = "The id"), ("node" = Option<String>, Query,), ("cursor" = Option<String>, Query,), ("timestamps" = Option<bool>, Query,)), responses((status = 200, body = LogsPage), (status = "4XX", description = "Refused: `error` says why, `field` names what was wrong", body = ApiError)))]
pub(crate) async fn deployment_logs(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(query): Query<std::collections::HashMap<String, String>>,
) -> Result<Json<LogsPage>, ApiError> {
    use events::logs::{LogsReply, LogsRequest};
    let meta = caller.meta(&[Role::Operator, Role::Auditor])?;
    let bad = |field: &str, why: String| ApiError::new(StatusCode::BAD_REQUEST, Some(field), why);
    if let Some(unknown) = query.keys().find(|k| !matches!(k.as_str(), "node" | "cursor" | "timestamps")) {
        return Err(bad(unknown, format!("unknown parameter `{unknown}`, expected `node`, `cursor` or `timestamps`")));
    }
    let timestamps = match query.get("timestamps").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => return Err(bad("timestamps", format!("timestamps `{other}`: expected true or false"))),
    };
    let view = state
        .deployments
        .get(&meta.tenant, &id)?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, Some("id"), format!("deployment `{id}` does not exist")))?;
    let node = match query.get("node") {
        Some(node) if view.nodes.contains_key(node) => node.clone(),
        Some(node) => return Err(bad("node", format!("node `{node}` is not a target of this deployment"))),
        None if view.nodes.len() == 1 => view.nodes.keys().next().cloned().unwrap_or_default(),
        None => return Err(bad("node", "the deployment has several nodes: name one".to_owned())),
    };
    let cursor = match query.get("cursor") {
        Some(text) => events::logs::decode_cursor(text).map_err(|e| bad("cursor", e))?,
        None => Default::default(),
    };
    let request = LogsRequest { deployment: id, cursor, limit: events::logs::PAGE_LINES, timestamps };
    let payload = serde_json::to_vec(&request).map_err(anyhow::Error::from)?;
    let subject = events::logs::subject(&meta.tenant, &node);
    let answer = tokio::time::timeout(LOGS_TIMEOUT, state.commands.store().client().request(subject, payload.into()))
        .await
        .map_err(|_| ApiError::new(StatusCode::GATEWAY_TIMEOUT, Some("node"), format!("node `{node}` did not answer")))?
        .map_err(|e| {
            ApiError::new(StatusCode::BAD_GATEWAY, Some("node"), format!("node `{node}` is not reachable: {e}"))
        })?;
    let reply: LogsReply = serde_json::from_slice(&answer.payload).map_err(anyhow::Error::from)?;
    if let Some(error) = reply.error {
        // A node reading other logs says so at once: ask again soon.
        let (status, field) = if error.code == "busy" {
            (StatusCode::SERVICE_UNAVAILABLE, "node")
        } else {
            (StatusCode::NOT_FOUND, "id")
        };
        return Err(ApiError::new(status, Some(field), format!("{}: {}", error.code, error.message)));
    }
    let next_cursor = events::logs::encode_cursor(&reply.next_cursor());
    Ok(Json(LogsPage { node, containers: reply.containers, next_cursor }))
}

/// The node's latest heartbeat: its containers' state, restarts, CPU and memory.
#[utoipa::path(get, path = "/v1/nodes/{id}/telemetry", tag = "nodes", summary = "Its latest heartbeat", params(("id" = String, Path, description = "The id")), responses((status = 200, body = events::telemetry::Heartbeat), (status = "4XX", description = "Refused: `error` says why, `field` names what was wrong", body = ApiError)))]
async fn node_telemetry(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<events::telemetry::Heartbeat>, ApiError> {
    let meta = caller.meta(READERS)?;
    token("id", &id)?;
    state.liveness.latest(&meta.tenant, &id).map(|heard| Json(heard.heartbeat)).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            Some("id"),
            format!("no heartbeat from node `{id}` since the engine started"),
        )
    })
}

/// The tenant's nodes, a page at a time by id: labels and state. `selector` (`key=value`
/// pairs separated by commas) keeps the nodes a launch with that selector would reach now;
/// `state` those in one state.
#[utoipa::path(get, path = "/v1/nodes", tag = "nodes", summary = "The nodes by id: labels and state; a selector previews its nodes", params(("limit" = Option<usize>, Query, description = "1 to 500; 50 by default"), ("cursor" = Option<String>, Query, description = "The next_cursor of the page before"), ("selector" = Option<String>, Query, description = "key=value pairs separated by commas"), ("state" = Option<String>, Query,)), responses((status = 200, body = Page<events::projection::nodes::NodeRecord>), (status = "4XX", description = "Refused: `error` says why, `field` names what was wrong", body = ApiError)))]
pub(crate) async fn list_nodes(
    State(state): State<AppState>,
    caller: Caller,
    Query(query): Query<std::collections::HashMap<String, String>>,
) -> Result<Json<Page<events::projection::nodes::NodeRecord>>, ApiError> {
    let meta = caller.meta(READERS)?;
    let (limit, cursor) = page_params(&query, &["selector", "state"])?;
    let bad = |field: &str, why: String| ApiError::new(StatusCode::BAD_REQUEST, Some(field), why);
    let selector = match query.get("selector") {
        Some(text) => Some(parse_selector(text).map_err(|e| bad("selector", e))?),
        None => None,
    };
    let wanted_state = match query.get("state").map(String::as_str) {
        None => None,
        Some(text) => Some(node_state(text).ok_or_else(|| {
            bad("state", format!("state `{text}` is not one of enrolled, online, offline, unreachable, revoked"))
        })?),
    };
    let wanted = |n: &events::projection::nodes::NodeRecord| {
        selector.as_ref().is_none_or(|s| n.matches(s)) && wanted_state.is_none_or(|s| n.state == s)
    };
    Ok(Json(state.nodes.list(&meta.tenant, cursor, limit, wanted)?))
}

/// A node state by its name; `enrolled` is a node not yet heard.
fn node_state(text: &str) -> Option<Option<events::node::NodeState>> {
    match text {
        "enrolled" => Some(None),
        _ => serde_json::from_value(serde_json::Value::String(text.to_owned())).ok().map(Some),
    }
}

/// `key=value` pairs separated by commas.
pub fn parse_selector(text: &str) -> Result<Labels, String> {
    let mut labels = Labels::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').ok_or_else(|| format!("`{pair}` is not key=value"))?;
        check_token("selector key", key.trim()).map_err(|e| e.to_string())?;
        labels.insert(key.trim().to_owned(), value.trim().to_owned());
    }
    if labels.is_empty() {
        return Err("a selector needs at least one key=value".to_owned());
    }
    Ok(labels)
}

impl Rejection for TenantRejection {
    fn status_and_field(&self) -> (StatusCode, &'static str) {
        match self {
            TenantRejection::Deleted => (StatusCode::GONE, "id"),
            TenantRejection::InvalidPolicy(_) => (StatusCode::UNPROCESSABLE_ENTITY, "policy"),
        }
    }
}

/// Deletes a tenant: its deployments are removed from every node, its read models forgotten,
/// and no further command is taken for it.
#[utoipa::path(delete, path = "/v1/tenants/{id}", tag = "tenants", summary = "Delete a tenant (admin)", params(("id" = String, Path, description = "The id")), responses((status = 202, body = Object), (status = "4XX", description = "Refused: `error` says why, `field` names what was wrong", body = ApiError)))]
async fn delete_tenant(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    events::token::check_tenant(&id).map_err(|e| ApiError::invalid("id", e))?;
    let meta = caller.meta_on(&id, &[Role::Admin])?;
    let committed = state.commands.execute::<Tenant>(&id, &TenantCommand::Delete, &meta).await?;
    let sequence = committed.events.last().map_or(0, |e| e.sequence);
    Ok((StatusCode::ACCEPTED, Json(serde_json::json!({ "tenant": id, "sequence": sequence }))))
}

/// A tenant's workload policy: the host directories its versions may bind-mount and the
/// registries their images may come from.
#[utoipa::path(get, path = "/v1/tenants/{id}/policy", tag = "tenants", summary = "The tenant's workload policy", params(("id" = String, Path, description = "The id")), responses((status = 200, body = events::policy::Policy), (status = "4XX", description = "Refused: `error` says why, `field` names what was wrong", body = ApiError)))]
async fn get_policy(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<events::policy::Policy>, ApiError> {
    events::token::check_tenant(&id).map_err(|e| ApiError::invalid("id", e))?;
    caller.meta_on(&id, READERS)?;
    let tenant: Tenant = state.commands.state(&id, &id).await?;
    Ok(Json(tenant.policy))
}

/// Sets a tenant's workload policy, whole; versions added from then on are checked against it.
#[utoipa::path(put, path = "/v1/tenants/{id}/policy", tag = "tenants", summary = "Set the tenant's workload policy, whole (admin)", request_body = events::policy::Policy, params(("id" = String, Path, description = "The id")), responses((status = 200, body = events::policy::Policy), (status = "4XX", description = "Refused: `error` says why, `field` names what was wrong", body = ApiError)))]
async fn set_policy(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Body(policy): Body<events::policy::Policy>,
) -> Result<impl IntoResponse, ApiError> {
    events::token::check_tenant(&id).map_err(|e| ApiError::invalid("id", e))?;
    let meta = caller.meta_on(&id, &[Role::Admin])?;
    let command = TenantCommand::SetPolicy(policy);
    state.commands.execute::<Tenant>(&id, &command, &meta).await.map_err(|e| match e {
        CommandError::Rejected(TenantRejection::InvalidPolicy(v)) => ApiError::invalid(&v.key, v.message),
        e => e.into(),
    })?;
    let tenant: Tenant = state.commands.state(&id, &id).await?;
    Ok(Json(tenant.policy))
}

// ---------------------------------------------------------------------------------------------
// Credentials

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"labels": {"site": "lab"}, "public_key": "UCD5X6CUZYZUQNNWLCQDWBT6H3J3HPXMTZ3PJCVFNNJV74P5NM2WBKZJ"}))]
pub struct EnrollBody {
    #[serde(default)]
    labels: Labels,
    /// The node's own public key (`edge-node keygen`): its seed never leaves the node.
    #[serde(default)]
    public_key: Option<String>,
}

/// Enrolls a node of the caller's tenant, or gives it a new key: answers its credentials. An
/// installer's token enrolls only a node never enrolled, with a key the node made itself.
#[utoipa::path(post, path = "/v1/nodes/{id}/enroll", tag = "nodes", summary = "Enroll a node: its credentials (admin, or installer for a new node)", request_body = EnrollBody, params(("id" = String, Path, description = "The id")), responses((status = 201, body = Object, description = "The credentials: `creds` and the key"), (status = "4XX", description = "Refused: `error` says why, `field` names what was wrong", body = ApiError)))]
async fn enroll_node(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Body(body): Body<EnrollBody>,
) -> Result<impl IntoResponse, ApiError> {
    let meta = live_meta(&state, &caller, &[Role::Installer]).await?;
    token("id", &id)?;
    if !caller.is(Role::Admin) {
        // No key of the engine's making that the installer would hold, and no node taken over.
        if body.public_key.is_none() {
            let error = "an installer's token enrolls a node with the key it made: give `public_key`";
            return Err(ApiError::new(StatusCode::FORBIDDEN, Some("public_key"), error.to_owned()));
        }
        let node: Node = state.commands.state(&meta.tenant, &id).await?;
        if node.key.is_some() || !node.revoked_keys.is_empty() || node.margo.is_some() {
            let error = format!("node `{id}` was enrolled before: only an admin enrolls it again");
            return Err(ApiError::new(StatusCode::FORBIDDEN, None, error));
        }
    }
    let enrollment = state.issuer.enroll(&id, body.labels, body.public_key, &meta).await?;
    Ok((StatusCode::CREATED, Json(enrollment)))
}

#[utoipa::path(post, path = "/v1/nodes/{id}/revoke", tag = "nodes", summary = "Revoke a node's credential (admin)", params(("id" = String, Path, description = "The id")), responses((status = 200, body = Object), (status = "4XX", description = "Refused: `error` says why, `field` names what was wrong", body = ApiError)))]
async fn revoke_node(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let meta = caller.meta(&[Role::Admin])?;
    token("id", &id)?;
    let key = state.issuer.revoke(&id, &meta).await?;
    Ok(Json(serde_json::json!({ "node": id, "revoked": key })))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"fingerprint": "sha256:4f2a0c6e2b8d1f3a5c7e9b0d2f4a6c8e0b2d4f6a8c0e2b4d6f8a0c2e4b6d8f0a", "labels": {"site": "plant-7"}}))]
pub struct AdmitBody {
    /// `sha256:` and the hexadecimal SHA-256 of the device's X.509 certificate (DER).
    fingerprint: String,
    /// The engine's labels for it, over those its capabilities give.
    #[serde(default)]
    labels: Labels,
}

/// Admits a Margo device as node `id` of the caller's tenant: the certificate with this
/// fingerprint may onboard through the Workload Fleet Manager API.
#[utoipa::path(post, path = "/v1/nodes/{id}/margo", tag = "nodes", summary = "Admit a Margo device by its certificate (admin)", request_body = AdmitBody, params(("id" = String, Path, description = "The id")), responses((status = 201, body = Object), (status = "4XX", description = "Refused: `error` says why, `field` names what was wrong", body = ApiError)))]
async fn admit_margo(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    Body(body): Body<AdmitBody>,
) -> Result<impl IntoResponse, ApiError> {
    let meta = live_meta(&state, &caller, &[Role::Admin]).await?;
    token("id", &id)?;
    let fingerprint = body.fingerprint.to_ascii_lowercase();
    // A certificate is one registered device's, in one tenant.
    let tree = state.nodes.tree();
    let holder = events::projection::margo::holder(&mut crate::projector::Overlay::new(tree), &fingerprint)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if holder.is_some_and(|h| h.tenant != meta.tenant || h.node != id) {
        let error = "this certificate is another node's: unregister that one first";
        return Err(ApiError::new(StatusCode::CONFLICT, Some("fingerprint"), error));
    }
    let command = NodeCommand::AdmitMargo { fingerprint: fingerprint.clone(), labels: body.labels };
    let committed = state.commands.execute::<Node>(&id, &command, &meta).await?;
    // The device may onboard as soon as it is told.
    if let Some(last) = committed.events.last() {
        if !crate::projector::wait_for(tree, last.sequence, READ_YOUR_WRITE).await? {
            let error = "admitted, but the read models are behind the log: onboard shortly";
            return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, None, error));
        }
    }
    Ok((StatusCode::CREATED, Json(serde_json::json!({ "node": id, "fingerprint": fingerprint }))))
}

/// Unregisters the Margo device `id`: its certificate is refused from now on.
#[utoipa::path(delete, path = "/v1/nodes/{id}/margo", tag = "nodes", summary = "Unregister a Margo device (admin)", params(("id" = String, Path, description = "The id")), responses((status = 200, body = Object), (status = "4XX", description = "Refused: `error` says why, `field` names what was wrong", body = ApiError)))]
async fn unregister_margo(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let meta = caller.meta(&[Role::Admin])?;
    token("id", &id)?;
    state.commands.execute::<Node>(&id, &NodeCommand::UnregisterMargo, &meta).await?;
    Ok(Json(serde_json::json!({ "node": id, "unregistered": true })))
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "feed"}))]
pub struct ReaderBody {
    /// Names the credential (and a subscriber's consumer); made up when absent.
    #[serde(default)]
    name: Option<String>,
}

fn reader_name(body: &ReaderBody) -> Result<String, ApiError> {
    let name = body.name.clone().unwrap_or_else(|| Uuid::now_v7().simple().to_string().chars().skip(20).collect());
    token("name", &name)?;
    Ok(name)
}

/// A credential that reads the caller's tenant's events through its own consumer.
#[utoipa::path(post, path = "/v1/credentials/subscriber", tag = "credentials", summary = "A read-only credential for the tenant's events", request_body = ReaderBody, responses((status = 201, body = Object), (status = "4XX", description = "Refused: `error` says why, `field` names what was wrong", body = ApiError)))]
async fn subscriber_credential(
    State(state): State<AppState>,
    caller: Caller,
    Body(body): Body<ReaderBody>,
) -> Result<impl IntoResponse, ApiError> {
    let meta = live_meta(&state, &caller, &[Role::Operator, Role::Auditor]).await?;
    let role = crate::trust::Role::Subscriber { tenant: meta.tenant, id: reader_name(&body)? };
    let credential = state.issuer.reader(&role).await.map_err(StoreError::from)?;
    Ok((StatusCode::CREATED, Json(credential)))
}

/// A credential that reads every tenant's events and writes nothing.
#[utoipa::path(post, path = "/v1/credentials/auditor", tag = "credentials", summary = "A read-only credential for every tenant's events", request_body = ReaderBody, responses((status = 201, body = Object), (status = "4XX", description = "Refused: `error` says why, `field` names what was wrong", body = ApiError)))]
async fn auditor_credential(
    State(state): State<AppState>,
    caller: Caller,
    Body(body): Body<ReaderBody>,
) -> Result<impl IntoResponse, ApiError> {
    // It reads every tenant: only a token of every tenant may have one.
    if !caller.global() {
        let error =
            "an auditor credential reads every tenant: it needs the role auditor or admin on a token of every tenant";
        return Err(ApiError::new(StatusCode::FORBIDDEN, None, error));
    }
    caller.meta(&[Role::Auditor])?;
    let role = crate::trust::Role::Auditor { id: reader_name(&body)? };
    let credential = state.issuer.reader(&role).await.map_err(StoreError::from)?;
    Ok((StatusCode::CREATED, Json(credential)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_on_their_way_in_print_as_stars() {
        let launch: LaunchRequest = serde_json::from_value(serde_json::json!({
            "application": "a", "version": "1.0.0", "nodes": ["n"], "secrets": {"DB_PASSWORD": "hunter2"}
        }))
        .unwrap();
        let printed = format!("{launch:?}");
        assert!(printed.contains(r#""DB_PASSWORD": "***""#) && !printed.contains("hunter2"), "{printed}");
        let issued = crate::auth::IssuedToken {
            id: "t1".into(),
            token: "t1.s3cret".into(),
            subject: "otto".into(),
            tenant: None,
            roles: vec![Role::Operator],
        };
        assert!(!format!("{issued:?}").contains("s3cret"));
    }

    #[tokio::test]
    async fn a_handler_that_panics_answers_500_in_the_apis_shape_and_the_next_call_is_served() {
        use tower::ServiceExt;
        let app = Router::new()
            .route("/panics", get(|| async { panic!("a bug") as &str }))
            .route("/works", get(|| async { "ok" }))
            .layer(tower_http::catch_panic::CatchPanicLayer::custom(panicked));
        let get = |path: &str| Request::get(path).body(axum::body::Body::empty()).unwrap();
        let answer = app.clone().oneshot(get("/panics")).await.unwrap();
        assert_eq!(answer.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = axum::body::to_bytes(answer.into_body(), 1024).await.unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert!(body["error"].as_str().is_some_and(|e| e.starts_with("internal error")), "{body}");
        assert_eq!(app.oneshot(get("/works")).await.unwrap().status(), StatusCode::OK);
    }
}
