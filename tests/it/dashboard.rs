//! The web dashboard in a real browser (headless Chromium through its WebDriver), against a
//! real engine and a real edge node on Docker. Each page's screenshot is saved under
//! `target/dashboard/`.

use std::path::PathBuf;
use std::time::Duration;

use fantoccini::Locator;
use serde_json::json;
use tests::browser::Browser;
use tests::NatsServer;

use crate::harness::{TestEngine, TestNode, TIMEOUT};

const LOGGER: &str = "127.0.0.1:5000/sample/logger:1.0.0";
/// How long a page may take to show what it shows at once.
const PAGE: Duration = Duration::from_secs(20);

fn screenshots() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("..").join("dashboard")
}

async fn dashboard_engine(nats: &NatsServer) -> TestEngine {
    TestEngine::start_with(&nats.url(), nats.trust(), 1, |config| {
        config.dashboard = Some("127.0.0.1:0".parse().unwrap());
    })
    .await
}

fn base(engine: &TestEngine) -> String {
    format!("https://{}", engine.engine.dashboard_addr.expect("the dashboard listens"))
}

async fn path_of(browser: &Browser) -> String {
    browser.client.current_url().await.unwrap().path().to_owned()
}

/// Every control of the page has a label a screen reader says, and every image a text.
async fn assert_labelled(browser: &Browser, page: &str) {
    let unlabelled = "return [...document.querySelectorAll('input:not([type=hidden]), select, textarea')]\
        .filter(e => e.labels.length === 0 && !e.getAttribute('aria-label'))\
        .map(e => e.outerHTML)";
    let found = browser.client.execute(unlabelled, vec![]).await.unwrap();
    assert_eq!(found, json!([]), "controls without a label on {page}");
}

async fn load_id(browser: &Browser) -> String {
    browser.client.execute("return window.__loadId", vec![]).await.unwrap().as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_signs_in_launches_watches_it_run_live_reads_its_logs_and_stops_it() {
    let nats = NatsServer::start().await;
    let engine = dashboard_engine(&nats).await;
    let node = TestNode::start(&nats, &engine).await;
    engine.publish_sample(LOGGER).await;
    let base = base(&engine);
    let shots = screenshots();
    let browser = Browser::start().await;
    let b = &browser.client;

    // Signed out, every page leads to the sign-in; a wrong token is refused beside the field.
    b.goto(&format!("{base}/fleet")).await.unwrap();
    assert_eq!(path_of(&browser).await, "/signin");
    browser.screenshot(&shots, "signin").await;
    b.find(Locator::Id("token")).await.unwrap().send_keys("nobody.wrong-secret").await.unwrap();
    b.find(Locator::Css("form button[type=submit]")).await.unwrap().click().await.unwrap();
    let refused = browser.wait_for("#token-error", PAGE).await.text().await.unwrap();
    assert!(refused.contains("unknown, wrong or revoked"), "{refused}");

    // Signed in from the keyboard alone: the token typed, then Enter.
    let token = browser.wait_for("#token", PAGE).await;
    token.send_keys(&format!("{}\u{E007}", tests::ADMIN_TOKEN)).await.unwrap();
    browser.wait_for("nav a[aria-current=page][href='/deployments']", PAGE).await;
    assert_labelled(&browser, "deployments").await;

    // The fleet: the node, online, with its labels.
    tests::eventually("the node to show online", TIMEOUT, || async {
        b.goto(&format!("{base}/fleet")).await.unwrap();
        let online = format!("tr[data-node='{}'] .badge.online", node.name);
        b.find(Locator::Css(&online)).await.ok()
    })
    .await;
    let row = b.find(Locator::Css(&format!("tr[data-node='{}']", node.name))).await.unwrap().text().await.unwrap();
    assert!(row.contains("site=lab"), "{row}");
    browser.screenshot(&shots, "fleet").await;

    // The catalog: a version the engine refuses shows the refusal beside the field it names.
    b.goto(&format!("{base}/catalog")).await.unwrap();
    browser.wait_for("section[aria-labelledby=app-sample]", PAGE).await;
    browser.screenshot(&shots, "catalog").await;
    assert_labelled(&browser, "catalog").await;
    b.find(Locator::Css("section[aria-labelledby=app-sample] details summary")).await.unwrap().click().await.unwrap();
    b.find(Locator::Id("sample-version")).await.unwrap().send_keys("2.0.0").await.unwrap();
    b.find(Locator::Id("sample-image")).await.unwrap().send_keys("Not An Image!").await.unwrap();
    let add = "section[aria-labelledby=app-sample] form[action='/catalog/sample/versions'] button[type=submit]";
    b.find(Locator::Css(add)).await.unwrap().click().await.unwrap();
    let error = browser.wait_for(".field-error[data-field=image]", PAGE).await.text().await.unwrap();
    assert!(error.starts_with("image"), "the refusal names the key: {error}");
    let typed = b.find(Locator::Id("sample-image")).await.unwrap();
    assert_eq!(typed.attr("aria-invalid").await.unwrap().as_deref(), Some("true"));
    assert_eq!(typed.prop("value").await.unwrap().as_deref(), Some("Not An Image!"), "what was typed stays");
    browser.screenshot(&shots, "catalog-refused").await;

    // Fixed, the draft is added; then deleted.
    typed.clear().await.unwrap();
    typed.send_keys(LOGGER).await.unwrap();
    b.find(Locator::Css(add)).await.unwrap().click().await.unwrap();
    browser.wait_for("tr[data-version='2.0.0'] .badge.draft", PAGE).await;
    browser.wait_for("form[action='/catalog/sample/versions/2.0.0/delete'] button", PAGE).await.click().await.unwrap();
    browser.wait_for("tr[data-version='1.0.0']", PAGE).await;
    assert!(b.find(Locator::Css("tr[data-version='2.0.0']")).await.is_err(), "the draft is gone");
    let (_, app) = engine.get("/v1/applications/sample").await;
    assert_eq!(app["versions"].as_array().unwrap().len(), 1, "{app}");

    // Launch 1.0.0 onto the node from the catalog.
    browser.wait_for("tr[data-version='1.0.0'] a.button", PAGE).await.click().await.unwrap();
    browser.wait_for(&format!("input[name=node][value='{}']", node.name), PAGE).await.click().await.unwrap();
    browser.screenshot(&shots, "launch").await;
    assert_labelled(&browser, "launch").await;
    b.find(Locator::Css("form[action='/launch'] button[type=submit]")).await.unwrap().click().await.unwrap();

    // Its page follows it to running with no reload.
    browser.wait_for("body[data-sse=open]", PAGE).await;
    let deployment = path_of(&browser).await;
    let id = deployment.strip_prefix("/deployments/").expect("the deployment's page").to_owned();
    let loaded = load_id(&browser).await;
    let running = format!("#live tr.node[data-node='{}'][data-status=running]", node.name);
    browser.wait_for(&running, TIMEOUT).await;
    browser.wait_for("#live tr.container[data-status=running]", PAGE).await;
    // The history follows too: the node's steps, as the log records them.
    browser.wait_for("#timeline [data-status=running]", PAGE).await;
    assert_eq!(load_id(&browser).await, loaded, "the status came without a reload");
    let (_, view) = engine.get(&format!("/v1/deployments/{id}")).await;
    assert_eq!(view["status"], "running", "the API agrees: {view}");
    browser.wait_for("ol.timeline li", PAGE).await;
    browser.screenshot(&shots, "deployment-running").await;

    // Its logs: 200 lines and a next page.
    browser.wait_for(&format!("#live tr.node[data-node='{}'] a", node.name), PAGE).await.click().await.unwrap();
    tests::eventually("the logger's lines", TIMEOUT, || async {
        let text = browser.wait_for("main#main", PAGE).await.text().await.ok()?;
        if text.contains("line 200") {
            return Some(());
        }
        b.refresh().await.ok()?;
        None
    })
    .await;
    let lines = browser.wait_for("pre.logs", PAGE).await.text().await.unwrap();
    assert_eq!(lines.lines().count(), 200, "a page of 200 lines");
    assert!(lines.starts_with("line 1\n"), "from the first line");
    browser.wait_for("a[rel=next]", PAGE).await;
    browser.screenshot(&shots, "logs").await;

    // Stop it, confirmed first; the page follows it to stopped.
    b.goto(&format!("{base}{deployment}")).await.unwrap();
    browser.wait_for("a[href$='/confirm/stop']", PAGE).await.click().await.unwrap();
    browser.wait_for("form[action$='/stop'] button[type=submit]", PAGE).await;
    assert_eq!(
        engine.get(&format!("/v1/deployments/{id}")).await.1["desired"],
        "running",
        "nothing before the confirmation"
    );
    browser.screenshot(&shots, "confirm-stop").await;
    browser.wait_for("form[action$='/stop'] button[type=submit]", PAGE).await.click().await.unwrap();
    browser.wait_for("body[data-sse=open]", PAGE).await;
    let loaded = load_id(&browser).await;
    browser.wait_for(&format!("#live tr.node[data-node='{}'][data-status=stopped]", node.name), TIMEOUT).await;
    assert_eq!(load_id(&browser).await, loaded, "the status came without a reload");
    browser.screenshot(&shots, "deployment-stopped").await;

    // A newer version shows as an update notification, updated in one click.
    let (status, body) =
        engine.post("/v1/applications/sample/versions", json!({"version": "1.1.0", "image": LOGGER})).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = engine.post("/v1/applications/sample/versions/1.1.0/publish", json!({})).await;
    assert_eq!(status, 200, "{body}");
    let one_click = format!("form[action='/updates/{id}'] button");
    tests::eventually("the update notification", TIMEOUT, || async {
        b.goto(&format!("{base}/updates")).await.ok()?;
        b.find(Locator::Css(&one_click)).await.ok()
    })
    .await;
    browser.screenshot(&shots, "updates").await;
    b.find(Locator::Css(&one_click)).await.unwrap().click().await.unwrap();
    browser.wait_for("#live", PAGE).await;
    engine.wait_deployment(&id, "the update to 1.1.0", |v| v["version"] == "1.1.0").await;

    b.goto(&format!("{base}/summaries")).await.unwrap();
    let summary = browser.wait_for("main#main", PAGE).await.text().await.unwrap();
    assert!(summary.contains(&node.name) && summary.contains("sample@1.1.0"), "{summary}");
    browser.screenshot(&shots, "summaries").await;

    // The API's reference, rendered from its OpenAPI document, with the launch's example.
    b.goto(&format!("{base}/reference")).await.unwrap();
    let launch = browser.wait_for("section[data-route='POST /v1/deployments']", PAGE).await.text().await.unwrap();
    assert!(launch.contains("LaunchRequest") && launch.contains("\"selector\""), "{launch}");
    browser.screenshot(&shots, "reference").await;

    // A token of every tenant switches tenants: another tenant has no node.
    b.find(Locator::Css("header input[name=tenant]")).await.unwrap().clear().await.unwrap();
    b.find(Locator::Css("header input[name=tenant]")).await.unwrap().send_keys("other").await.unwrap();
    b.find(Locator::Css("form[action='/tenant'] button")).await.unwrap().click().await.unwrap();
    browser.wait_for("nav a[aria-current=page][href='/fleet']", PAGE).await;
    tests::eventually("the page of the other tenant", TIMEOUT, || async {
        (browser.wait_for("#tenant", PAGE).await.text().await.ok()? == "other").then_some(())
    })
    .await;
    let fleet = browser.wait_for("main#main", PAGE).await.text().await.unwrap();
    assert!(fleet.contains("No node is enrolled"), "{fleet}");
    browser.screenshot(&shots, "fleet-other-tenant").await;

    b.find(Locator::Css("form[action='/signout'] button")).await.unwrap().click().await.unwrap();
    browser.wait_for("#token", PAGE).await;
    // Signed out, the pages are closed: a page asked for is the sign-in page (asked again
    // while the browser may still be taking the sign-out's answer in).
    tests::eventually("a page asked for after signing out to be the sign-in page", TIMEOUT, || async {
        b.goto(&format!("{base}/deployments")).await.ok()?;
        (path_of(&browser).await == "/signin").then_some(())
    })
    .await;
}

#[tokio::test]
async fn the_dashboard_lets_in_no_one_without_a_token_and_takes_no_form_from_another_site() {
    let nats = NatsServer::start().await;
    let engine = dashboard_engine(&nats).await;
    let base = base(&engine);
    let http = engine::api_client_builder(Some(&engine.trust().ca()))
        .unwrap()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();

    // No cookie: the sign-in page, even with the API's bearer token (a page never takes one).
    let bearer = format!("Bearer {}", tests::ADMIN_TOKEN);
    let answer = http.get(format!("{base}/fleet")).header("authorization", &bearer).send().await.unwrap();
    assert_eq!(answer.status().as_u16(), 303);
    assert_eq!(answer.headers()["location"], "/signin");

    // Signing in sets a cookie scripts cannot read and other sites never send.
    let form = [("token", tests::ADMIN_TOKEN)];
    // A sign-in from another site, or from nowhere a browser names, is refused.
    for (name, value) in [("origin", "https://elsewhere.example"), ("x-nothing", "")] {
        let forged = http.post(format!("{base}/signin")).header(name, value).form(&form).send().await.unwrap();
        assert_eq!(forged.status().as_u16(), 403, "{name}");
    }
    let answer = http.post(format!("{base}/signin")).header("origin", &base).form(&form).send().await.unwrap();
    assert_eq!(answer.status().as_u16(), 303);
    let cookie = answer.headers()["set-cookie"].to_str().unwrap().to_owned();
    for attribute in ["HttpOnly", "SameSite=Strict", "Secure"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    let session = cookie.split(';').next().unwrap().to_owned();
    let answer = http.get(format!("{base}/fleet")).header("cookie", &session).send().await.unwrap();
    assert_eq!(answer.status().as_u16(), 200);
    let policy = answer.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(policy.contains("default-src 'self'") && policy.contains("frame-ancestors 'none'"), "{policy}");

    // A form posted from another origin is refused, cookie or not.
    let answer = http
        .post(format!("{base}/catalog"))
        .header("cookie", &session)
        .header("origin", "https://elsewhere.example")
        .form(&[("id", "web"), ("name", "From another site")])
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 403);
    assert_eq!(engine.get("/v1/applications/web").await.0, 404, "nothing registered");

    // A revoked token's session ends at its next page.
    let (status, made) =
        engine.post("/v1/tokens", json!({"subject": "viewer", "tenant": "default", "roles": ["auditor"]})).await;
    assert_eq!(status, 201, "{made}");
    let viewer = format!("session={}", made["token"].as_str().unwrap());
    assert_eq!(
        http.get(format!("{base}/fleet")).header("cookie", &viewer).send().await.unwrap().status().as_u16(),
        200
    );
    // An auditor may read, not launch.
    let answer = http
        .get(format!("{base}/launch?application=sample&version=1.0.0"))
        .header("cookie", &viewer)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 403);
    let (status, _) = engine.post(&format!("/v1/tokens/{}/revoke", made["id"].as_str().unwrap()), json!({})).await;
    assert_eq!(status, 200);
    let answer = http.get(format!("{base}/fleet")).header("cookie", &viewer).send().await.unwrap();
    assert_eq!(answer.status().as_u16(), 401);
    assert!(answer.text().await.unwrap().contains("no longer works"));
}
