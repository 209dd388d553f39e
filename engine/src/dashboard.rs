//! The web dashboard: HTML rendered on the server, on a port of its own, with its stylesheet
//! and its one small script built into the binary. Nothing is fetched from anywhere else.
//!
//! Signing in takes an API token: it is kept in a cookie the page's scripts cannot read
//! (`HttpOnly`), sent back to this origin alone (`SameSite=Strict`; `Secure` over HTTPS), and
//! every request presents it as the API's bearer token, so the dashboard may do exactly what
//! the token may do through the API, no more, and each call spends from the token's budget. A
//! token of every tenant switches tenants (a cookie beside it). A form posted from another
//! origin is refused.
//!
//! The pages call the API's own handlers in this process: the same checks, the same errors.
//! A deployment's page follows its status without a reload: server-sent events, each sent
//! when the projector writes the deployment's part of the read model, that is, as the log
//! brings its events.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use futures::Stream;
use maud::Markup;
use serde::Deserialize;
use uuid::Uuid;

use events::projection::deployments::DeploymentView;
use events::token::Role;

use crate::api::{self, ApiError, AppState, Body};
use crate::auth::{Auth, Caller, Me, READERS};

mod view;

const SESSION: &str = "session";
const TENANT: &str = "tenant";
/// How long a live stream runs before the browser must open it again, presenting its token.
const STREAM_FOR: Duration = Duration::from_secs(60);
/// Rows of a listing page.
const PAGE: &str = "50";

#[derive(Debug, Clone)]
pub struct Dashboard {
    api: AppState,
    auth: Auth,
    /// Served over HTTPS: the cookies say `Secure`.
    secure: bool,
}

pub fn router(api: AppState, auth: Auth, secure: bool) -> Router {
    let state = Dashboard { api, auth: auth.clone(), secure };
    let signed_in = Router::new()
        .route("/", get(|| async { Redirect::to("/deployments") }))
        .route("/fleet", get(fleet))
        .route("/deployments", get(deployments))
        .route("/deployments/{id}", get(deployment))
        .route("/deployments/{id}/live", get(live))
        .route("/deployments/{id}/logs", get(logs))
        .route("/deployments/{id}/confirm/{action}", get(confirm))
        .route("/deployments/{id}/{action}", post(act))
        .route("/catalog", get(catalog).post(register))
        .route("/catalog/{id}/versions", post(add_version))
        .route("/catalog/{id}/versions/{version}/{action}", post(version_action))
        .route("/launch", get(launch_form).post(launch))
        .route("/updates", get(updates))
        .route("/updates/{id}", post(update_now))
        .route("/summaries", get(summaries))
        .route("/reference", get(reference))
        .route("/tenant", post(switch_tenant))
        .layer(axum::middleware::from_fn_with_state(auth, crate::auth::authenticate))
        .layer(axum::middleware::from_fn(session));
    Router::new()
        .route("/signin", get(|| async { Html(view::sign_in(None).into_string()) }).post(sign_in))
        .route("/signout", post(sign_out))
        .route("/assets/dashboard.css", get(|| async { asset("text/css", include_str!("dashboard/dashboard.css")) }))
        .route(
            "/assets/dashboard.js",
            get(|| async { asset("text/javascript", include_str!("dashboard/dashboard.js")) }),
        )
        .merge(signed_in)
        .fallback(|| async { Failure::new(StatusCode::NOT_FOUND, "no such page") })
        .with_state(state)
        .layer(axum::middleware::from_fn(same_origin))
        .layer(axum::middleware::from_fn(hardened))
        .layer(axum::extract::DefaultBodyLimit::max(api::MAX_BODY))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, api::REQUEST_TIMEOUT))
        .layer(tower::limit::ConcurrencyLimitLayer::new(api::MAX_CONCURRENT))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(api::panicked))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "max-age=300")], body).into_response()
}

/// Every answer: no framing, no referrer to other sites, scripts and styles from this origin alone, and pages
/// never cached.
async fn hardened(request: Request, next: axum::middleware::Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    let csp = "default-src 'self'; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'; form-action 'self'";
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(csp));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
    response
}

/// Refuses a form posted from another origin: its `Origin` must name this host.
async fn same_origin(request: Request, next: axum::middleware::Next) -> Response {
    if request.method() == axum::http::Method::POST {
        let headers = request.headers();
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| request.uri().authority().map(|a| a.as_str()))
            .unwrap_or_default();
        let origin = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok());
        // Without an `Origin`, a browser's own word on where the form came from.
        let fetched_here = headers.get("sec-fetch-site").is_some_and(|s| s == "same-origin");
        let same = match origin {
            Some(o) => o.split_once("://").is_some_and(|(_, rest)| rest == host),
            None => fetched_here,
        };
        if !same {
            let origin = origin.unwrap_or_default();
            let why = format!("a form from {origin} is not taken here ({host})");
            return Failure::new(StatusCode::FORBIDDEN, why).into_response();
        }
    }
    next.run(request).await
}

fn cookies(headers: &HeaderMap) -> HashMap<String, String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .fold(HashMap::new(), |mut kept, (k, v)| {
            // The first of a name wins: a browser sends the most specific cookie first.
            kept.entry(k.to_owned()).or_insert_with(|| v.to_owned());
            kept
        })
}

/// Turns the session cookie into the API's bearer token (and the tenant cookie into
/// `x-tenant`); without one, or once the token no longer works, to the sign-in page.
async fn session(mut request: Request, next: axum::middleware::Next) -> Response {
    let kept = cookies(request.headers());
    let Some(token) = kept.get(SESSION).filter(|t| !t.is_empty()) else {
        return Redirect::to("/signin").into_response();
    };
    let Ok(bearer) = HeaderValue::from_str(&format!("Bearer {token}")) else {
        return Redirect::to("/signin").into_response();
    };
    let headers = request.headers_mut();
    headers.insert(header::AUTHORIZATION, bearer);
    if let Some(tenant) = kept.get(TENANT).and_then(|t| HeaderValue::from_str(t).ok()) {
        headers.insert("x-tenant", tenant);
    }
    let response = next.run(request).await;
    if response.status() == StatusCode::UNAUTHORIZED {
        let html = view::sign_in(Some("The token no longer works: it was revoked, or is unknown. Sign in again."));
        return (StatusCode::UNAUTHORIZED, Html(html.into_string())).into_response();
    }
    response
}

fn cookie(state: &Dashboard, name: &str, value: &str, max_age: Option<u32>) -> HeaderValue {
    let secure = if state.secure { "; Secure" } else { "" };
    let age = max_age.map(|s| format!("; Max-Age={s}")).unwrap_or_default();
    let text = format!("{name}={value}; Path=/; HttpOnly; SameSite=Strict{secure}{age}");
    HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static("invalid=; Max-Age=0"))
}

#[derive(Debug, Deserialize)]
struct SignIn {
    token: String,
}

async fn sign_in(State(state): State<Dashboard>, Form(form): Form<SignIn>) -> Response {
    let token = form.token.trim();
    if let Err(why) = crate::auth::admit(&state.auth, token).await {
        let why = why.error();
        let html = view::sign_in(Some(why.parts().0));
        return (why.status(), Html(html.into_string())).into_response();
    }
    let mut response = Redirect::to("/deployments").into_response();
    let headers = response.headers_mut();
    headers.append(header::SET_COOKIE, cookie(&state, SESSION, token, None));
    headers.append(header::SET_COOKIE, cookie(&state, TENANT, "", Some(0)));
    response
}

async fn sign_out(State(state): State<Dashboard>) -> Response {
    let mut response = Redirect::to("/signin").into_response();
    let headers = response.headers_mut();
    headers.append(header::SET_COOKIE, cookie(&state, SESSION, "", Some(0)));
    headers.append(header::SET_COOKIE, cookie(&state, TENANT, "", Some(0)));
    response
}

#[derive(Debug, Deserialize)]
struct TenantForm {
    tenant: String,
}

async fn switch_tenant(
    State(state): State<Dashboard>,
    caller: Caller,
    Form(form): Form<TenantForm>,
) -> Result<Response, Failure> {
    let tenant = form.tenant.trim();
    events::token::check_tenant(tenant).map_err(|e| Failure::new(StatusCode::BAD_REQUEST, e))?;
    caller.meta_on(tenant, READERS)?;
    let mut response = Redirect::to("/fleet").into_response();
    response.headers_mut().append(header::SET_COOKIE, cookie(&state, TENANT, tenant, None));
    Ok(response)
}

// ---------------------------------------------------------------------------------------------
// Failures

/// What a page could not do: a page that says so, with the API's status.
#[derive(Debug)]
pub struct Failure {
    status: StatusCode,
    message: String,
}

impl Failure {
    fn new(status: StatusCode, message: impl std::fmt::Display) -> Failure {
        Failure { status, message: message.to_string() }
    }
}

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Failure {
        Failure::new(e.status(), e.parts().0)
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Failure {
        ApiError::from(e).into()
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.status, Html(view::failure(self.status.as_u16(), &self.message).into_string())).into_response()
    }
}

/// What an API handler answered: its JSON on success, else its error.
async fn answered(response: Response) -> Result<serde_json::Value, ApiError> {
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), api::MAX_BODY)
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, None, e))?;
    let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    if status.is_success() {
        return Ok(value);
    }
    let error = value.get("error").and_then(|e| e.as_str()).unwrap_or("no message");
    let field = value.get("field").and_then(|f| f.as_str());
    Err(ApiError::new(status, field, error))
}

// ---------------------------------------------------------------------------------------------
// Pages

async fn me(caller: &Caller) -> Result<Me, Failure> {
    Ok(crate::auth::me(caller.clone()).await?.0)
}

async fn render(caller: &Caller, title: &str, current: &str, body: Markup) -> Result<Html<String>, Failure> {
    Ok(Html(view::page(title, current, &me(caller).await?, body).into_string()))
}

/// A query of the listing's page size, its cursor and the given parameters that are set.
fn query(params: &[(&str, Option<&String>)]) -> Query<HashMap<String, String>> {
    let mut query: HashMap<String, String> = HashMap::from([("limit".to_owned(), PAGE.to_owned())]);
    for (name, value) in params {
        if let Some(value) = value.filter(|v| !v.is_empty()) {
            query.insert((*name).to_owned(), value.clone());
        }
    }
    Query(query)
}

/// The address of the next page: `path` with `params` and the cursor.
fn next_page(path: &str, params: &[(&str, Option<&String>)], cursor: Option<String>) -> Option<String> {
    let cursor = cursor?;
    let mut pairs: Vec<String> = params
        .iter()
        .filter_map(|(k, v)| v.filter(|v| !v.is_empty()).map(|v| format!("{k}={}", crate::url_encode(v))))
        .collect();
    pairs.push(format!("cursor={}", crate::url_encode(&cursor)));
    Some(format!("{path}?{}", pairs.join("&")))
}

async fn fleet(
    State(state): State<Dashboard>,
    caller: Caller,
    Query(asked): Query<HashMap<String, String>>,
) -> Result<Html<String>, Failure> {
    let meta = caller.meta(READERS)?;
    let page =
        api::list_nodes(State(state.api.clone()), caller.clone(), query(&[("cursor", asked.get("cursor"))])).await?.0;
    let lines: Vec<view::NodeLine> = page
        .items
        .into_iter()
        .map(|record| {
            let heard = state.api.liveness.latest(&meta.tenant, &record.id);
            let containers = heard.as_ref().map(|h| h.heartbeat.containers.as_slice()).unwrap_or_default();
            view::NodeLine {
                heard: heard.as_ref().map(|h| h.received),
                running: containers.iter().filter(|c| c.state == "running").count(),
                containers: containers.len(),
                // From 0.0, not the -0.0 an empty float sum starts from.
                cpu_percent: containers.iter().map(|c| c.cpu_percent).fold(0.0, |sum, c| sum + c),
                memory_bytes: containers.iter().map(|c| c.memory_bytes).fold(0, u64::saturating_add),
                record,
            }
        })
        .collect();
    let next = next_page("/fleet", &[], page.next_cursor);
    render(&caller, "Fleet", "/fleet", view::fleet(&lines, next)).await
}

async fn deployments(
    State(state): State<Dashboard>,
    caller: Caller,
    Query(asked): Query<HashMap<String, String>>,
) -> Result<Html<String>, Failure> {
    let filters = view::Filters {
        status: asked.get("status").cloned(),
        staged: asked.get("staged").cloned(),
        application: asked.get("application").cloned(),
    };
    let params = [
        ("status", filters.status.as_ref()),
        ("staged", filters.staged.as_ref()),
        ("application", filters.application.as_ref()),
    ];
    let mut with_cursor = params.to_vec();
    with_cursor.push(("cursor", asked.get("cursor")));
    let page = api::list_deployments(State(state.api.clone()), caller.clone(), query(&with_cursor)).await?.0;
    let meta = caller.meta(READERS)?;
    let applications =
        state.api.catalog.list(&meta.tenant, None, 500)?.items.into_iter().map(|a| a.id).collect::<Vec<_>>();
    let next = next_page("/deployments", &params, page.next_cursor);
    render(&caller, "Deployments", "/deployments", view::deployments(&page.items, &filters, &applications, next)).await
}

async fn view_of(state: &Dashboard, caller: &Caller, id: &str) -> Result<DeploymentView, Failure> {
    Ok(api::get_deployment(State(state.api.clone()), caller.clone(), Path(id.to_owned())).await?.0)
}

/// A page of a deployment's history, after `cursor`.
async fn history_page(
    state: &Dashboard,
    caller: &Caller,
    id: &str,
    cursor: Option<&String>,
) -> Result<crate::read_model::Page<events::projection::history::HistoryEntry>, ApiError> {
    let mut history_query = query(&[("cursor", cursor)]);
    history_query.0.insert("limit".to_owned(), "100".to_owned());
    Ok(api::deployment_history(State(state.api.clone()), caller.clone(), Path(id.to_owned()), history_query).await?.0)
}

async fn deployment(
    State(state): State<Dashboard>,
    caller: Caller,
    Path(id): Path<String>,
    Query(asked): Query<HashMap<String, String>>,
) -> Result<Html<String>, Failure> {
    let view = view_of(&state, &caller, &id).await?;
    let history = history_page(&state, &caller, &id, asked.get("history")).await?;
    let next = history.next_cursor.map(|c| format!("/deployments/{id}?history={}#history", crate::url_encode(&c)));
    let title = format!("{} {}", view.application, view.id);
    render(&caller, &title, "/deployments", view::deployment(&view, &history.items, next)).await
}

/// The deployment's nodes and containers, sent again each time the projector writes its part
/// of the read model (or its nodes' state changes), at most every 100 ms.
async fn live(
    State(state): State<Dashboard>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, Failure> {
    let meta = caller.meta(READERS)?;
    view_of(&state, &caller, &id).await?;
    let tree = state.api.deployments.tree();
    let prefixes = [
        events::projection::deployments::key(&meta.tenant, &id),
        events::projection::deployments::nodes_prefix(&meta.tenant, &id),
        events::projection::nodes::key(&meta.tenant, ""),
    ];
    let (changed, watching) = tokio::sync::watch::channel(());
    for prefix in prefixes {
        // Each subscriber is drained at once, whatever the browser reads: the projector's writes
        // never wait on a page.
        let mut subscriber = tree.watch_prefix(prefix);
        let changed = changed.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    event = &mut subscriber => match event {
                        Some(_) => { changed.send_replace(()); }
                        None => return,
                    },
                    () = changed.closed() => return,
                }
            }
        });
    }
    drop(changed);
    let first = std::sync::atomic::AtomicBool::new(true);
    let stream = futures::stream::unfold(
        (watching, state, caller, id, first),
        |(mut watching, state, caller, id, first)| async move {
            if !first.swap(false, std::sync::atomic::Ordering::Relaxed) {
                watching.changed().await.ok()?;
                tokio::time::sleep(Duration::from_millis(100)).await;
                watching.borrow_and_update();
            }
            let html = match view_of(&state, &caller, &id).await {
                Ok(view) => view::live(&view).into_string(),
                Err(e) => format!("<p class=\"notice error\">{}</p>", maud::html! { (e.message) }.into_string()),
            };
            let mut events = vec![Ok(Event::default().event("view").data(html))];
            if let Ok(history) = history_page(&state, &caller, &id, None).await {
                let timeline = view::timeline(&history.items).into_string();
                events.push(Ok(Event::default().event("history").data(timeline)));
            }
            Some((futures::stream::iter(events), (watching, state, caller, id, first)))
        },
    );
    // A stream ends within a minute: the browser opens it again, and the token is checked again.
    let stream = futures::StreamExt::take_until(futures::StreamExt::flatten(stream), tokio::time::sleep(STREAM_FOR));
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

async fn logs(
    State(state): State<Dashboard>,
    caller: Caller,
    Path(id): Path<String>,
    Query(asked): Query<HashMap<String, String>>,
) -> Result<Html<String>, Failure> {
    let mut params: HashMap<String, String> = HashMap::new();
    for key in ["node", "cursor"] {
        if let Some(value) = asked.get(key).filter(|v| !v.is_empty()) {
            params.insert(key.to_owned(), value.clone());
        }
    }
    let page = api::deployment_logs(State(state.api.clone()), caller.clone(), Path(id.clone()), Query(params)).await?.0;
    let node = page.node.clone();
    let next = next_page(&format!("/deployments/{id}/logs"), &[("node", Some(&node))], page.next_cursor.clone());
    render(&caller, "Logs", "/deployments", view::logs(&id, &page, next)).await
}

fn action_name(action: &str) -> Result<&'static str, Failure> {
    view::ACTIONS
        .iter()
        .find(|(a, _)| *a == action)
        .map(|(_, name)| *name)
        .ok_or_else(|| Failure::new(StatusCode::NOT_FOUND, format!("no action `{action}`")))
}

async fn published_versions(state: &Dashboard, caller: &Caller, application: &str) -> Result<Vec<String>, Failure> {
    let app = api::get_application(State(state.api.clone()), caller.clone(), Path(application.to_owned())).await?.0;
    Ok(app.versions.into_iter().filter(|v| v.published).map(|v| v.version).collect())
}

async fn confirm(
    State(state): State<Dashboard>,
    caller: Caller,
    Path((id, action)): Path<(String, String)>,
) -> Result<Html<String>, Failure> {
    let name = action_name(&action)?;
    let view = view_of(&state, &caller, &id).await?;
    let versions =
        if action == "update" { published_versions(&state, &caller, &view.application).await? } else { Vec::new() };
    let key = Uuid::now_v7().to_string();
    let body = view::confirm(&view, &action, name, &versions, &key);
    render(&caller, &format!("{name} {id}"), "/deployments", body).await
}

#[derive(Debug, Deserialize)]
struct ActionForm {
    /// Makes a form sent twice one command.
    #[serde(default)]
    key: Option<Uuid>,
    #[serde(default)]
    version: Option<String>,
}

async fn act(
    State(state): State<Dashboard>,
    caller: Caller,
    Path((id, action)): Path<(String, String)>,
    Form(form): Form<ActionForm>,
) -> Result<Response, Failure> {
    action_name(&action)?;
    let caller = match form.key {
        Some(key) => caller.with_idempotency_key(key)?,
        None => caller,
    };
    let api = State(state.api.clone());
    let path = Path(id.clone());
    let response = match action.as_str() {
        "stop" => api::stop(api, caller, path).await.into_response(),
        "start" => api::start(api, caller, path).await.into_response(),
        "force-update" => api::force_update(api, caller, path).await.into_response(),
        "uninstall" => api::uninstall(api, caller, path).await.into_response(),
        "apply" => {
            let body = Body(api::ApplyRequest { deployments: vec![id.clone()] });
            let answer = api::apply(api, caller, body).await?.0;
            if let Some(refused) = answer.results.into_iter().find_map(|r| r.error) {
                return Err(Failure::new(StatusCode::CONFLICT, refused));
            }
            StatusCode::ACCEPTED.into_response()
        }
        _ => {
            let version = form.version.ok_or_else(|| Failure::new(StatusCode::BAD_REQUEST, "name the version"))?;
            api::update(api, caller, path, Body(update_to(version))).await.into_response()
        }
    };
    answered(response).await?;
    Ok(Redirect::to(&format!("/deployments/{id}")).into_response())
}

fn update_to(version: String) -> api::UpdateRequest {
    api::UpdateRequest {
        version,
        staged: false,
        instantly_apply: true,
        rollout: None,
        rollback_within: None,
        profile: None,
        overrides: None,
    }
}

async fn catalog_page(
    state: &Dashboard,
    caller: &Caller,
    cursor: Option<&String>,
    error: Option<view::FormError>,
    typed: &view::VersionForm,
) -> Result<Response, Failure> {
    let page = api::list_applications(State(state.api.clone()), caller.clone(), query(&[("cursor", cursor)])).await?.0;
    let next = next_page("/catalog", &[], page.next_cursor);
    let status = if error.is_some() { StatusCode::UNPROCESSABLE_ENTITY } else { StatusCode::OK };
    let body = view::catalog(&page.items, next, error.as_ref(), typed);
    Ok((status, render(caller, "Catalog", "/catalog", body).await?).into_response())
}

async fn catalog(
    State(state): State<Dashboard>,
    caller: Caller,
    Query(asked): Query<HashMap<String, String>>,
) -> Result<Response, Failure> {
    catalog_page(&state, &caller, asked.get("cursor"), None, &view::VersionForm::default()).await
}

/// Shows the catalog again with `error` beside the field it names, or goes back to it.
async fn catalog_after(
    state: &Dashboard,
    caller: &Caller,
    form: &str,
    outcome: Result<serde_json::Value, ApiError>,
    typed: &view::VersionForm,
) -> Result<Response, Failure> {
    match outcome {
        Ok(_) => Ok(Redirect::to(&format!("/catalog#app-{form}")).into_response()),
        Err(e) if e.status().is_client_error() && e.status() != StatusCode::FORBIDDEN => {
            let (message, field) = e.parts();
            let error =
                view::FormError { form: form.to_owned(), field: field.map(str::to_owned), message: message.to_owned() };
            catalog_page(state, caller, None, Some(error), typed).await
        }
        Err(e) => Err(e.into()),
    }
}

#[derive(Debug, Deserialize)]
struct RegisterForm {
    id: String,
    name: String,
}

async fn register(
    State(state): State<Dashboard>,
    caller: Caller,
    Form(form): Form<RegisterForm>,
) -> Result<Response, Failure> {
    let body = Body(api::RegisterApplication { id: form.id.trim().to_owned(), name: form.name.trim().to_owned() });
    let outcome =
        answered(api::register_application(State(state.api.clone()), caller.clone(), body).await.into_response()).await;
    let form_id = if outcome.is_ok() { form.id.trim() } else { "register" };
    catalog_after(&state, &caller, form_id, outcome, &view::VersionForm::default()).await
}

async fn add_version(
    State(state): State<Dashboard>,
    caller: Caller,
    Path(id): Path<String>,
    Form(form): Form<view::VersionForm>,
) -> Result<Response, Failure> {
    let given = |text: &str| Some(text.trim().to_owned()).filter(|t| !t.is_empty());
    let body = Body(api::AddVersion {
        version: form.version.trim().to_owned(),
        image: given(&form.image),
        compose: given(&form.compose),
        parameters: Default::default(),
        profiles: Default::default(),
        secrets: Default::default(),
    });
    let response = api::add_version(State(state.api.clone()), caller.clone(), Path(id.clone()), body).await;
    catalog_after(&state, &caller, &id, answered(response.into_response()).await, &form).await
}

/// Publishes, deletes (a draft) or withdraws a version, then shows the catalog again.
async fn version_action(
    State(state): State<Dashboard>,
    caller: Caller,
    Path((id, version, action)): Path<(String, String, String)>,
) -> Result<Response, Failure> {
    let (api, path) = (State(state.api.clone()), Path((id.clone(), version)));
    let response = match action.as_str() {
        "publish" => api::publish(api, caller.clone(), path).await.into_response(),
        "delete" => api::delete_version(api, caller.clone(), path).await.into_response(),
        "withdraw" => {
            let body = Body(api::WithdrawRequest { reason: "withdrawn from the dashboard".to_owned() });
            api::withdraw(api, caller.clone(), path, body).await.into_response()
        }
        other => return Err(Failure::new(StatusCode::NOT_FOUND, format!("no action `{other}` on a version"))),
    };
    catalog_after(&state, &caller, &id, answered(response).await, &view::VersionForm::default()).await
}

#[derive(Debug, Deserialize)]
struct LaunchQuery {
    application: String,
    version: String,
}

async fn launch_page(
    state: &Dashboard,
    caller: &Caller,
    application: &str,
    version: &str,
    error: Option<view::FormError>,
) -> Result<Response, Failure> {
    let meta = caller.meta(&[Role::Operator])?;
    let nodes = state.api.nodes.list(&meta.tenant, None, 500, |_| true)?.items;
    let key = Uuid::now_v7().to_string();
    let status = if error.is_some() { StatusCode::UNPROCESSABLE_ENTITY } else { StatusCode::OK };
    let body = view::launch(application, version, &nodes, &key, error.as_ref());
    Ok((status, render(caller, "Launch", "/catalog", body).await?).into_response())
}

async fn launch_form(
    State(state): State<Dashboard>,
    caller: Caller,
    Query(asked): Query<LaunchQuery>,
) -> Result<Response, Failure> {
    launch_page(&state, &caller, &asked.application, &asked.version, None).await
}

/// The launch form as sent: `node` may come several times, so it is read from the pairs.
async fn launch(
    State(state): State<Dashboard>,
    caller: Caller,
    Form(pairs): Form<Vec<(String, String)>>,
) -> Result<Response, Failure> {
    let one = |name: &str| pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.trim().to_owned());
    let (application, version) = (one("application").unwrap_or_default(), one("version").unwrap_or_default());
    let nodes: Vec<String> = pairs.iter().filter(|(k, _)| k == "node").map(|(_, v)| v.clone()).collect();
    let selector = match one("selector").filter(|s| !s.is_empty()) {
        Some(text) => Some(api::parse_selector(&text).map_err(|e| Failure::new(StatusCode::BAD_REQUEST, e))?),
        None => None,
    };
    let caller = match one("key").and_then(|k| Uuid::parse_str(&k).ok()) {
        Some(key) => caller.with_idempotency_key(key)?,
        None => caller,
    };
    let request = api::LaunchRequest {
        application: application.clone(),
        version: version.clone(),
        nodes: (!nodes.is_empty() || selector.is_none()).then_some(nodes),
        selector,
        profile: one("profile").filter(|p| !p.is_empty()),
        overrides: Default::default(),
        staged: one("staged").is_some_and(|s| s == "true"),
        instantly_apply: one("staged").is_none_or(|s| s != "true"),
        rollout: None,
        secrets: Default::default(),
    };
    let response = api::launch(State(state.api.clone()), caller.clone(), Body(request)).await.into_response();
    match answered(response).await {
        Ok(answer) => {
            let id = answer.get("id").and_then(|i| i.as_str()).unwrap_or_default();
            Ok(Redirect::to(&format!("/deployments/{id}")).into_response())
        }
        Err(e) if e.status().is_client_error() && e.status() != StatusCode::FORBIDDEN => {
            let (message, field) = e.parts();
            let error = view::FormError {
                form: "launch".to_owned(),
                field: field.map(str::to_owned),
                message: message.to_owned(),
            };
            launch_page(&state, &caller, &application, &version, Some(error)).await
        }
        Err(e) => Err(e.into()),
    }
}

async fn updates(
    State(state): State<Dashboard>,
    caller: Caller,
    Query(asked): Query<HashMap<String, String>>,
) -> Result<Html<String>, Failure> {
    let page =
        api::list_notifications(State(state.api.clone()), caller.clone(), query(&[("cursor", asked.get("cursor"))]))
            .await?
            .0;
    let next = next_page("/updates", &[], page.next_cursor);
    render(&caller, "Updates", "/updates", view::updates(&page.items, next)).await
}

#[derive(Debug, Deserialize)]
struct UpdateNow {
    version: String,
}

/// The one-click update of a notification: to the version it names.
async fn update_now(
    State(state): State<Dashboard>,
    caller: Caller,
    Path(id): Path<String>,
    Form(form): Form<UpdateNow>,
) -> Result<Response, Failure> {
    let response = api::update(State(state.api.clone()), caller, Path(id.clone()), Body(update_to(form.version))).await;
    answered(response.into_response()).await?;
    Ok(Redirect::to(&format!("/deployments/{id}")).into_response())
}

async fn reference(caller: Caller) -> Result<Html<String>, Failure> {
    let doc = serde_json::to_value(api::openapi()).map_err(anyhow::Error::from)?;
    render(&caller, "API reference", "/reference", view::reference(&doc)).await
}

async fn summaries(State(state): State<Dashboard>, caller: Caller) -> Result<Html<String>, Failure> {
    let summary = api::summary(State(state.api.clone()), caller.clone()).await?.0;
    render(&caller, "Summaries", "/summaries", view::summaries(&summary)).await
}
