//! The dashboard's HTML, rendered on the server: one function per page or part of one.

use maud::{html, Markup, DOCTYPE};

use events::projection::catalog::CatalogEntry;
use events::projection::deployments::DeploymentView;
use events::projection::history::HistoryEntry;
use events::projection::nodes::NodeRecord;
use events::projection::notifications::Notification;
use events::projection::summary::{Counts, Summary};
use events::Status;

use crate::auth::Me;

/// The pages of the navigation bar: path and name.
const PAGES: [(&str, &str); 6] = [
    ("/fleet", "Fleet"),
    ("/deployments", "Deployments"),
    ("/catalog", "Catalog"),
    ("/updates", "Updates"),
    ("/summaries", "Summaries"),
    ("/reference", "API"),
];

/// A page's head: its title, the stylesheet, and the script where the page follows the log.
fn head(title: &str, script: bool) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · edge orchestration" }
            link rel="stylesheet" href="/assets/dashboard.css";
            @if script { script src="/assets/dashboard.js" defer {} }
        }
    }
}

/// A whole page: the navigation, who is signed in and on which tenant, then `body`.
pub fn page(title: &str, current: &str, me: &Me, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title, true))
            body {
                a.skip href="#main" { "Skip to the content" }
                header.top {
                    span.brand { "Edge orchestration" }
                    nav aria-label="Pages" {
                        ul {
                            @for (path, name) in PAGES {
                                li { a href=(path) aria-current=[(path == current).then_some("page")] { (name) } }
                            }
                        }
                    }
                    div.who {
                        span { (me.subject) " · tenant " strong #tenant { (me.tenant) } }
                        @if me.every_tenant {
                            form method="post" action="/tenant" {
                                label.sr { span.name style="color:#fff" { "Tenant" }
                                    input name="tenant" value=(me.tenant) required autocomplete="off";
                                }
                                button.secondary type="submit" { "Switch" }
                            }
                        }
                        form method="post" action="/signout" { button.secondary type="submit" { "Sign out" } }
                    }
                }
                main #main { (body) }
            }
        }
    }
}

/// The sign-in page: an API token, and why the last try failed.
pub fn sign_in(error: Option<&str>) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head("Sign in", false))
            body {
                main #main {
                    h1 { "Sign in" }
                    section.card {
                        form.stack method="post" action="/signin" {
                            label for="token" {
                                span.name { "API token" }
                                span { "The token an admin made for you (" code { "<id>.<secret>" } ")." }
                            }
                            input #token type="password" name="token" required autofocus autocomplete="off"
                                aria-invalid=[error.map(|_| "true")] aria-describedby="token-error";
                            @if let Some(error) = error {
                                p.field-error #token-error role="alert" { (error) }
                            }
                            div { button type="submit" { "Sign in" } }
                        }
                    }
                }
            }
        }
    }
}

/// A page that says what went wrong.
pub fn failure(status: u16, message: &str) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(&format!("Error {status}"), false))
            body { main #main {
                h1 { "Error " (status) }
                p.notice.error role="alert" { (message) }
                p { a href="/deployments" { "Back to the deployments" } }
            } }
        }
    }
}

/// A status as a coloured badge; the in-flight ones share one colour.
pub fn status_badge(status: Status) -> Markup {
    let class = match status {
        Status::Running | Status::Failed | Status::Stopped | Status::Removed | Status::Ready | Status::Staged => {
            status.as_str()
        }
        _ => "pending",
    };
    html! { span class={ "badge " (class) } data-status=(status.as_str()) { (status.as_str()) } }
}

fn badge(class: &str, text: &str) -> Markup {
    html! { span class={ "badge " (class) } { (text) } }
}

fn labels(labels: &events::node::Labels) -> Markup {
    html! {
        span.chips { @for (k, v) in labels { span.chip.mono { (k) "=" (v) } } }
    }
}

fn time(at: &chrono::DateTime<chrono::Utc>) -> Markup {
    html! { time datetime=(at.to_rfc3339()) { (at.format("%Y-%m-%d %H:%M:%S UTC")) } }
}

fn pager(next: Option<String>) -> Markup {
    html! {
        @if let Some(next) = next {
            p.pager { a.button.secondary href=(next) rel="next" { "Next page" } }
        }
    }
}

/// What the fleet page shows of a node beside its record: when it was last heard, and what
/// its last heartbeat said of its containers.
#[derive(Debug)]
pub struct NodeLine {
    pub record: NodeRecord,
    pub heard: Option<chrono::DateTime<chrono::Utc>>,
    pub running: usize,
    pub containers: usize,
    pub cpu_percent: f64,
    pub memory_bytes: u64,
}

pub fn fleet(nodes: &[NodeLine], next: Option<String>) -> Markup {
    html! {
        h1 { "Fleet" }
        @if nodes.is_empty() {
            p.notice { "No node is enrolled in this tenant yet." }
        } @else {
            table {
                caption.muted style="text-align:left" { "Each node of the tenant, with what its last heartbeat said." }
                thead { tr {
                    th scope="col" { "Node" } th scope="col" { "Labels" } th scope="col" { "State" }
                    th scope="col" { "Last heard" } th.num scope="col" { "Workloads running" }
                    th.num scope="col" { "CPU" } th.num scope="col" { "Memory" }
                } }
                tbody {
                    @for n in nodes {
                        @let state = n.record.state.map_or("enrolled".to_owned(), |s| format!("{s:?}").to_lowercase());
                        tr data-node=(n.record.id) {
                            th scope="row" {
                                code { (n.record.id) }
                                @if let Some(fingerprint) = &n.record.margo { " " span.muted title=(fingerprint) { "Margo device" } }
                            }
                            td { (labels(&n.record.labels)) }
                            td { (badge(&state, &state)) }
                            td { @match &n.heard { Some(at) => (time(at)), None => span.muted { "not since the engine started" } } }
                            @if n.record.margo.is_some() {
                                // A Margo device polls; it says nothing of its containers' use.
                                td.num colspan="3" { span.muted { "not reported by Margo devices" } }
                            } @else {
                                td.num { (n.running) " of " (n.containers) }
                                td.num { (format!("{:.1} %", n.cpu_percent)) }
                                td.num { (bytes(n.memory_bytes)) }
                            }
                        }
                    }
                }
            }
        }
        (pager(next))
    }
}

fn bytes(n: u64) -> String {
    let mib = n as f64 / (1024.0 * 1024.0);
    if mib >= 1024.0 {
        format!("{:.2} GiB", mib / 1024.0)
    } else {
        format!("{mib:.1} MiB")
    }
}

/// The deployments page's filters, as asked.
#[derive(Debug, Default)]
pub struct Filters {
    pub status: Option<String>,
    pub staged: Option<String>,
    pub application: Option<String>,
}

pub fn deployments(
    items: &[DeploymentView],
    filters: &Filters,
    applications: &[String],
    next: Option<String>,
) -> Markup {
    let selected = |wanted: &Option<String>, value: &str| wanted.as_deref() == Some(value);
    html! {
        h1 { "Deployments" }
        form.inline.card method="get" action="/deployments" aria-label="Filters" {
            label for="f-status" { span.name { "Status" }
                select #f-status name="status" {
                    option value="" { "any" }
                    @for s in Status::ALL { option value=(s.as_str()) selected[selected(&filters.status, s.as_str())] { (s.as_str()) } }
                }
            }
            label for="f-staged" { span.name { "Staged" }
                select #f-staged name="staged" {
                    option value="" { "any" }
                    option value="true" selected[selected(&filters.staged, "true")] { "staged" }
                    option value="false" selected[selected(&filters.staged, "false")] { "not staged" }
                }
            }
            label for="f-app" { span.name { "Application" }
                select #f-app name="application" {
                    option value="" { "any" }
                    @for a in applications { option value=(a) selected[selected(&filters.application, a)] { (a) } }
                }
            }
            button type="submit" { "Filter" }
        }
        @if items.is_empty() {
            p.notice { "No deployment matches." }
        } @else {
            table {
                thead { tr {
                    th scope="col" { "Deployment" } th scope="col" { "Application" } th scope="col" { "Version" }
                    th scope="col" { "Status" } th scope="col" { "Desired" } th.num scope="col" { "Nodes" }
                } }
                tbody {
                    @for d in items {
                        tr {
                            th scope="row" { a href={ "/deployments/" (d.id) } { code { (d.id) } } }
                            td { (d.application) }
                            td { (d.version) @if d.staged { " " (badge("staged", "staged")) } }
                            td { (status_badge(d.status)) }
                            td { (format!("{:?}", d.desired).to_lowercase()) }
                            td.num { (d.nodes.len()) }
                        }
                    }
                }
            }
        }
        (pager(next))
    }
}

/// The part of a deployment's page that follows the log: its status and each node's and
/// container's.
pub fn live(view: &DeploymentView) -> Markup {
    html! {
        p { "Status " (status_badge(view.status)) " · version " strong { (view.version) }
            @if view.awaiting_apply { " · " (badge("pending", "awaiting apply")) }
            @if let Some(halted) = &view.rollout_halted { " · rollout halted: " (halted) }
            @if let Some(back) = &view.rolled_back { " · " (back) }
        }
        table {
            thead { tr {
                th scope="col" { "Node or container" } th scope="col" { "Status" } th scope="col" { "Error" }
                th scope="col" { "Since" } th scope="col" { "Logs" }
            } }
            tbody {
                @for (node, n) in &view.nodes {
                    tr.node data-node=(node) data-status=(n.status.as_str()) {
                        th scope="row" { code { (node) } }
                        td {
                            (status_badge(n.status))
                            @if n.unreachable { " " (badge("unreachable", "unreachable: last reported")) }
                            @if n.revoked { " " (badge("revoked", "revoked")) }
                            @if !n.released { " " (badge("pending", "held by the rollout")) }
                            @if let Some(over) = &n.overdue { " " span.muted { "overdue: " (over.status.as_str()) " for " (over.waited_ms / 1000) " s" } }
                        }
                        td { @if let Some(e) = &n.error { code { (e.code) } ": " (e.message) } }
                        td { (time(&n.updated_at)) }
                        td { a href={ "/deployments/" (view.id) "/logs?node=" (crate::url_encode(node)) } { "Logs" } }
                    }
                    @for (name, c) in &n.containers {
                        tr.container data-container=(name) data-status=(c.status.as_str()) {
                            td { code { (name) } }
                            td { (status_badge(c.status)) }
                            td { @if let Some(e) = &c.error { code { (e.code) } ": " (e.message) } }
                            td {} td {}
                        }
                    }
                }
            }
        }
    }
}

/// The actions on a deployment, each leading to its confirmation.
pub const ACTIONS: [(&str, &str); 6] = [
    ("stop", "Stop"),
    ("start", "Start"),
    ("update", "Update"),
    ("force-update", "Force update"),
    ("apply", "Apply"),
    ("uninstall", "Uninstall"),
];

pub fn deployment(view: &DeploymentView, history: &[HistoryEntry], history_next: Option<String>) -> Markup {
    html! {
        h1 { (view.application) " " span.muted { "deployment " code { (view.id) } } }
        section.card aria-labelledby="facts" {
            h2 #facts { "What was asked" }
            dl.facts {
                dt { "Application" } dd { (view.application) }
                dt { "Desired" } dd { (format!("{:?}", view.desired).to_lowercase()) }
                dt { "Staged" } dd { (if view.staged { "yes" } else { "no" }) }
                @if let Some(selector) = &view.selector { dt { "Selector" } dd { (labels(selector)) } }
                @if let Some(profile) = &view.profile { dt { "Profile" } dd { (profile) } }
                @if !view.image.is_empty() { dt { "Image" } dd { code { (view.image) } } }
                @if !view.services.is_empty() {
                    dt { "Services" } dd { @for s in &view.services { code { (s.name) } " " } }
                }
            }
            div.actions role="group" aria-label="Actions" {
                @for (action, name) in ACTIONS {
                    a class={ "button" @if action == "uninstall" { " danger" } @else { " secondary" } }
                        href={ "/deployments/" (view.id) "/confirm/" (action) } { (name) }
                }
            }
        }
        section.card aria-labelledby="nodes" {
            h2 #nodes { "Nodes and containers " span.live-state { "updates as the nodes report" } }
            div #live data-stream={ "/deployments/" (view.id) "/live" } aria-live="polite" { (live(view)) }
        }
        section.card aria-labelledby="history" {
            h2 #history { "History" }
            // Followed live on the first page; a later page stays as it was read.
            ol.timeline #timeline data-live=[history_next.is_none().then_some("true")] { (timeline(history)) }
            (pager(history_next))
        }
    }
}

/// The steps of a deployment's history, oldest first.
pub fn timeline(history: &[HistoryEntry]) -> Markup {
    html! {
        @for e in history {
            li {
                span { (time(&e.time)) }
                span { code { (e.node.as_deref().unwrap_or("all")) } }
                span { @if let Some(s) = e.status { (status_badge(s)) } }
                span { (e.actor)
                    @if let Some(v) = &e.version { " · " (v) }
                    @if let Some(note) = &e.note { " · " (note) }
                    @if let Some(err) = &e.error { " · " code { (err.code) } ": " (err.message) }
                }
            }
        }
    }
}

/// The confirmation of one action; an update asks for the version.
pub fn confirm(view: &DeploymentView, action: &str, name: &str, versions: &[String], key: &str) -> Markup {
    html! {
        h1 { (name) " deployment " code { (view.id) } "?" }
        section.card {
            p { (view.application) " " (view.version) ", on " (view.nodes.len()) " node(s), now " (status_badge(view.status)) "." }
            form.stack method="post" action={ "/deployments/" (view.id) "/" (action) } {
                input type="hidden" name="key" value=(key);
                @if action == "update" {
                    label for="version" { span.name { "Version" } span { "A published version of " (view.application) "." } }
                    select #version name="version" required {
                        @for v in versions { option value=(v) selected[v == &view.version] { (v) } }
                    }
                }
                div.actions {
                    button class=@if action == "uninstall" { "danger" } type="submit" { "Yes, " (name.to_lowercase()) }
                    a.button.secondary href={ "/deployments/" (view.id) } { "Cancel" }
                }
            }
        }
    }
}

pub fn logs(id: &str, page: &crate::api::LogsPage, next: Option<String>) -> Markup {
    html! {
        h1 { "Logs of " code { (id) } " on " code { (page.node) } }
        p { a href={ "/deployments/" (id) } { "Back to the deployment" } }
        @for c in &page.containers {
            section.card {
                h2 { code { (c.container) } }
                @if let Some(e) = &c.error { p.notice.error { code { (e.code) } ": " (e.message) } }
                @if c.lines.is_empty() { p.muted { "No more lines." } }
                @else { pre.logs { @for line in &c.lines { (line) "\n" } } }
            }
        }
        (pager(next))
    }
}

/// A form's error: what went wrong and the field it names.
#[derive(Debug, Default)]
pub struct FormError {
    pub form: String,
    pub field: Option<String>,
    pub message: String,
}

/// What was typed into a catalog form, to show again beside its error.
#[derive(Debug, Default, serde::Deserialize)]
pub struct VersionForm {
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub image: String,
    #[serde(default)]
    pub compose: String,
}

fn field(
    form: &str,
    name: &str,
    label: &str,
    hint: &str,
    value: &str,
    error: Option<&FormError>,
    area: bool,
) -> Markup {
    let id = format!("{form}-{name}");
    let wrong = error.filter(|e| e.form == form && e.field.as_deref() == Some(name));
    let described = format!("{id}-error");
    html! {
        label for=(id) { span.name { (label) } @if !hint.is_empty() { span { (hint) } } }
        @if area {
            textarea #(id) name=(name) aria-invalid=[wrong.map(|_| "true")] aria-describedby=(described) { (value) }
        } @else {
            input #(id) name=(name) value=(value) aria-invalid=[wrong.map(|_| "true")] aria-describedby=(described);
        }
        @if let Some(e) = wrong {
            p.field-error #(described) role="alert" data-field=(name) {
                @if !e.message.starts_with(name) { (name) ": " } (e.message)
            }
        }
    }
}

/// The catalog: each application, its versions, publish and launch; a form to add a version to
/// each, and one to register an application.
pub fn catalog(
    entries: &[CatalogEntry],
    next: Option<String>,
    error: Option<&FormError>,
    typed: &VersionForm,
) -> Markup {
    let general =
        error.filter(|e| !matches!(e.field.as_deref(), Some("version" | "image" | "compose" | "id" | "name")));
    html! {
        h1 { "Catalog" }
        @for entry in entries {
            section.card aria-labelledby={ "app-" (entry.id) } {
                h2 #{ "app-" (entry.id) } { (entry.name) " " span.muted { code { (entry.id) } } }
                @if entry.versions.is_empty() { p.muted { "No version yet." } } @else {
                    table {
                        thead { tr { th scope="col" { "Version" } th scope="col" { "Content" } th scope="col" { "State" } th scope="col" { "Actions" } } }
                        tbody {
                            @for v in &entry.versions {
                                tr data-version=(v.version) {
                                    th scope="row" { (v.version) }
                                    td { @if v.image.is_empty() { "compose: " (v.services.join(", ")) } @else { code { (v.image) } } }
                                    td { @match (&v.published_at, &v.withdrawn_at) {
                                        (_, Some(at)) => { (badge("failed", "withdrawn")) " " (time(at)) }
                                        (Some(at), None) => { (badge("published", "published")) " " (time(at)) }
                                        (None, None) => (badge("draft", "draft")),
                                    } }
                                    td { div.actions.in-table {
                                        @let at = format!("/catalog/{}/versions/{}", entry.id, v.version);
                                        @if v.published_at.is_none() {
                                            form method="post" action={ (at) "/publish" } {
                                                button.secondary type="submit" { "Publish " (v.version) }
                                            }
                                            form method="post" action={ (at) "/delete" } {
                                                button.danger type="submit" { "Delete draft " (v.version) }
                                            }
                                        } @else if v.withdrawn_at.is_none() {
                                            a.button.secondary href={ "/launch?application=" (crate::url_encode(&entry.id)) "&version=" (crate::url_encode(&v.version)) } { "Launch " (v.version) }
                                            form method="post" action={ (at) "/withdraw" } {
                                                button.danger type="submit" { "Withdraw " (v.version) }
                                            }
                                        }
                                    } }
                                }
                            }
                        }
                    }
                }
                details open[error.is_some_and(|e| e.form == entry.id)] {
                    summary { "Add a version to " (entry.name) }
                    @let form_id = entry.id.as_str();
                    @let mine = error.filter(|e| e.form == form_id);
                    @let shown = if mine.is_some() { typed } else { &VersionForm::default() };
                    form.stack method="post" action={ "/catalog/" (entry.id) "/versions" } {
                        @if let Some(e) = general.filter(|e| e.form == form_id) { p.notice.error role="alert" { (e.message) } }
                        (field(form_id, "version", "Version", "Semantic version, 1.2.3.", &shown.version, error, false))
                        (field(form_id, "image", "Image", "One container: repository:tag. Leave empty for compose.", &shown.image, error, false))
                        (field(form_id, "compose", "Compose file", "Several containers: the compose YAML.", &shown.compose, error, true))
                        div { button type="submit" { "Add the version" } }
                    }
                }
            }
        }
        (pager(next))
        section.card aria-labelledby="register" {
            h2 #register { "Register an application" }
            form.stack method="post" action="/catalog" {
                @if let Some(e) = general.filter(|e| e.form == "register") { p.notice.error role="alert" { (e.message) } }
                (field("register", "id", "Id", "Letters, digits, - and _.", "", error, false))
                (field("register", "name", "Name", "", "", error, false))
                div { button type="submit" { "Register" } }
            }
        }
    }
}

/// The launch form of a published version.
pub fn launch(application: &str, version: &str, nodes: &[NodeRecord], key: &str, error: Option<&FormError>) -> Markup {
    html! {
        h1 { "Launch " (application) " " (version) }
        section.card {
            form.stack method="post" action="/launch" {
                @if let Some(e) = error { p.notice.error role="alert" data-field=[e.field.as_deref()] { (e.message) } }
                input type="hidden" name="application" value=(application);
                input type="hidden" name="version" value=(version);
                input type="hidden" name="key" value=(key);
                fieldset {
                    legend { "Nodes" }
                    @if nodes.is_empty() { p.muted { "No node is enrolled; use a selector." } }
                    @for n in nodes {
                        label style="display:flex;gap:6px;align-items:center" {
                            input type="checkbox" name="node" value=(n.id);
                            code { (n.id) } (labels(&n.labels))
                        }
                    }
                }
                label for="selector" { span.name { "Or a selector" } span { "key=value pairs separated by commas: every node with those labels, as nodes come and go." } }
                input #selector name="selector";
                label for="profile" { span.name { "Profile" } span { "A named set of parameter values of the version (optional)." } }
                input #profile name="profile";
                label style="display:flex;gap:6px;align-items:center" {
                    input type="checkbox" name="staged" value="true"; span { "Staged: download first, and wait for an apply" }
                }
                div { button type="submit" { "Launch" } }
            }
        }
    }
}

pub fn updates(items: &[Notification], next: Option<String>) -> Markup {
    html! {
        h1 { "Update notifications" }
        @if items.is_empty() { p.notice { "Every deployment runs the newest published version of its application." } }
        @else {
            table {
                thead { tr {
                    th scope="col" { "Deployment" } th scope="col" { "Application" } th scope="col" { "Runs" }
                    th scope="col" { "Available" } th scope="col" { "Nodes" } th scope="col" { "Update" }
                } }
                tbody {
                    @for n in items {
                        tr {
                            th scope="row" { a href={ "/deployments/" (n.deployment) } { code { (n.deployment) } } }
                            td { (n.application) }
                            td { (n.current_version) }
                            td { (n.available_version) " " span.muted { "published " (time(&n.published_at)) } }
                            td { (n.nodes.join(", ")) }
                            td {
                                form method="post" action={ "/updates/" (n.deployment) } {
                                    input type="hidden" name="version" value=(n.available_version);
                                    button type="submit" { "Update to " (n.available_version) }
                                }
                            }
                        }
                    }
                }
            }
        }
        (pager(next))
    }
}

fn counts_table(caption: &str, first: &str, rows: &std::collections::BTreeMap<String, Counts>) -> Markup {
    html! {
        table {
            caption style="text-align:left;font-weight:600;padding:6px 0" { (caption) }
            thead { tr {
                th scope="col" { (first) } th.num scope="col" { "Running" } th.num scope="col" { "Failed" }
                th.num scope="col" { "Pending" } th.num scope="col" { "Stopped" } th.num scope="col" { "Total" }
            } }
            tbody {
                @for (name, c) in rows {
                    tr { th scope="row" { code { (name) } } td.num { (c.running) } td.num { (c.failed) }
                        td.num { (c.pending) } td.num { (c.stopped) } td.num { (c.total) } }
                }
            }
        }
    }
}

pub fn summaries(summary: &Summary) -> Markup {
    let o = &summary.overall;
    html! {
        h1 { "Summaries" }
        p.card { "Over every deployment of the tenant: " strong { (o.running) } " running, " strong { (o.failed) } " failed, "
            strong { (o.pending) } " pending, " strong { (o.stopped) } " stopped, of " strong { (o.total) } "." }
        section.card { (counts_table("Per application and version", "Application@version", &summary.by_application_version)) }
        section.card { (counts_table("Per node", "Node", &summary.by_node)) }
    }
}

/// The API's reference, rendered from its OpenAPI document: each route, what it takes and
/// what it answers, with the documented examples.
pub fn reference(doc: &serde_json::Value) -> Markup {
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
    let at = |v: &serde_json::Value, pointer: &str| v.pointer(pointer).map(text).unwrap_or_default();
    let schema_name = |v: &serde_json::Value| {
        let reference = v.pointer("/content/application~1json/schema/$ref").and_then(|r| r.as_str());
        reference.and_then(|r| r.rsplit('/').next()).unwrap_or_default().to_owned()
    };
    let example = |name: &str| {
        let found = doc.pointer(&format!("/components/schemas/{name}/example"));
        found.map(|e| serde_json::to_string_pretty(e).unwrap_or_default())
    };
    let paths = doc.get("paths").and_then(|p| p.as_object()).cloned().unwrap_or_default();
    html! {
        h1 { "API reference" }
        p { (at(doc, "/info/description")) " The document itself: " code { "GET /openapi.json" } " on the API (OpenAPI "
            (text(&doc["openapi"])) ")." }
        @for (path, item) in &paths {
            @for (method, op) in item.as_object().into_iter().flatten() {
                section.card data-route={ (method.to_uppercase()) " " (path) } {
                    h2 { code { (method.to_uppercase()) " " (path) } }
                    p { (text(&op["summary"])) " " span.muted { "(" (at(op, "/tags/0")) ")" } }
                    @if let Some(params) = op["parameters"].as_array() {
                        dl.facts { @for p in params { dt { code { (text(&p["name"])) } } dd { (text(&p["in"]))
                            @if p["required"].as_bool() == Some(true) { ", required" } " " (text(&p["description"])) } } }
                    }
                    @let body = schema_name(&op["requestBody"]);
                    @if !body.is_empty() {
                        p { "Body: " code { (body) } }
                        @if let Some(e) = example(&body) { pre.logs { (e) } }
                    }
                    p { "Answers: "
                        @for (status, answer) in op["responses"].as_object().into_iter().flatten() {
                            code { (status) } " " (text(&answer["description"]))
                            @let named = schema_name(answer);
                            @if !named.is_empty() { " (" code { (named) } ")" } "; "
                        }
                    }
                }
            }
        }
    }
}
