//! The engine as a Margo Workload Fleet Manager, driven by the reference device
//! (`tests::margo`): onboarding, capabilities as labels, the desired state by ETag and digest,
//! status reports, and the refusals the specification names.

use std::time::Duration;

use serde_json::{json, Value};
use tests::margo::{MargoDevice, Polled};
use tests::{docker, eventually, NatsServer};

use crate::harness::{TestEngine, TestNode, IMAGE_1_0_0, IMAGE_1_1_0, TIMEOUT};

/// An engine serving Margo devices, which poll every second.
async fn engine(nats: &NatsServer) -> TestEngine {
    TestEngine::start_with(&nats.url(), nats.trust(), 1, |config| {
        config.margo = Some("127.0.0.1:0".parse().unwrap());
        config.margo_poll_interval = Duration::from_secs(1);
        config.dashboard = Some("127.0.0.1:0".parse().unwrap());
    })
    .await
}

fn base(engine: &TestEngine) -> String {
    format!("https://{}", engine.engine.margo_addr.expect("the Margo API listens"))
}

/// A device admitted as node `name` and onboarded, its capabilities reported.
async fn onboarded(engine: &TestEngine, name: &str) -> MargoDevice {
    let mut device = MargoDevice::new(name, &base(engine), &engine.trust().ca());
    let (status, body) =
        engine.post(&format!("/v1/nodes/{name}/margo"), json!({"fingerprint": device.fingerprint()})).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(device.onboard().await, 201);
    assert_eq!(device.report_capabilities("arm64", &["gpu", "camera"]).await, 201);
    device
}

/// Polls until the manifest changes; applies it to `docker` when given, else reports each
/// change installed (or removed) as a device would.
async fn next_change(device: &mut MargoDevice, docker: Option<&bollard::Docker>) -> Polled {
    let polled = changed(device).await;
    match docker {
        Some(docker) => device.apply(docker, &polled).await.expect("the device applies it"),
        None => {
            let Polled::Changed { changed, removed, .. } = &polled else { unreachable!() };
            for id in changed {
                assert_eq!(device.report(id, "installed", None).await, 200);
            }
            for id in removed {
                assert_eq!(device.report(id, "removed", None).await, 200);
                device.held.remove(id);
            }
        }
    }
    polled
}

/// Polls until the manifest changes what the device holds, as a device does (a first poll
/// may find a manifest that changes nothing yet).
async fn changed(device: &mut MargoDevice) -> Polled {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        match device.poll().await.expect("the manifest is sound") {
            Polled::Changed { changed, removed, .. } if changed.is_empty() && removed.is_empty() => {}
            Polled::NotModified => {}
            changed => return changed,
        }
        assert!(tokio::time::Instant::now() < deadline, "the manifest did not change in {TIMEOUT:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn launch_on(engine: &TestEngine, nodes: &[&str]) -> String {
    let (status, body) =
        engine.post("/v1/deployments", json!({"application": "sample", "version": "1.0.0", "nodes": nodes})).await;
    assert_eq!(status, 201, "{body}");
    body["id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_onboards_with_its_certificate_and_its_capabilities_become_labels_a_selector_finds() {
    let nats = NatsServer::start().await;
    let engine = engine(&nats).await;
    let device = onboarded(&engine, "margo-1").await;
    assert_eq!(
        device.root_ca().await,
        std::fs::read_to_string(engine.trust().ca()).unwrap(),
        "the root CA is the one the listener's certificate chains to"
    );

    let node = eventually("the device's labels", TIMEOUT, || async {
        let (_, node) = engine.get("/v1/nodes/margo-1").await;
        (node["labels"]["arch"] == "arm64").then_some(node)
    })
    .await;
    assert_eq!(node["state"], "online", "{node}");
    assert_eq!(node["margo"], device.fingerprint(), "{node}");
    assert_eq!(node["labels"]["peripheral"], "gpu", "{node}");
    assert_eq!(node["labels"]["peripheral-camera"], "true", "{node}");
    assert_eq!(node["labels"]["margo"], "true", "{node}");

    // `launch --selector` finds it by a capability.
    engine.publish_sample(IMAGE_1_0_0).await;
    let body = json!({"application": "sample", "version": "1.0.0", "selector": {"peripheral-gpu": "true"}});
    let (status, body) = engine.post("/v1/deployments", body).await;
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_str().unwrap().to_owned();
    engine.wait_deployment(&id, "the device to be a target", |v| v["nodes"].get("margo-1").is_some()).await;

    // The admission and the onboarding are events, with the certificate's fingerprint.
    let subject = events::subject::aggregate("default", "node", "margo-1");
    let loaded = engine.engine.commands.store().load(&subject).await.unwrap();
    let kinds: Vec<(String, Value)> = loaded
        .events
        .iter()
        .map(|e| {
            (
                e.envelope.event_type.clone(),
                serde_json::to_value(e.envelope.event::<events::node::NodeEvent>().unwrap()).unwrap(),
            )
        })
        .collect();
    let onboarded = kinds.iter().find(|(kind, _)| kind == "node.margo_onboarded").expect("an onboarding event");
    assert_eq!(onboarded.1["margo_onboarded"]["fingerprint"], device.fingerprint(), "{kinds:?}");
    assert!(kinds.iter().any(|(kind, _)| kind == "node.margo_admitted"), "{kinds:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_specifications_refusals_unknown_certificate_bad_signature_malformed_body_and_unregistered_client() {
    let nats = NatsServer::start().await;
    let engine = engine(&nats).await;

    // A certificate no admin admitted.
    let mut stranger = MargoDevice::new("stranger", &base(&engine), &engine.trust().ca());
    assert_eq!(stranger.onboard().await, 403);

    let device = onboarded(&engine, "margo-1").await;
    let path = device.manifest_path();

    // Its certificate is its own: admitted as another node, it is refused.
    let again = json!({"fingerprint": device.fingerprint()});
    let (status, body) = engine.post("/v1/nodes/margo-2/margo", again).await;
    assert_eq!((status, body["field"].as_str()), (409, Some("fingerprint")), "{body}");
    let http = engine::api_client(Some(&engine.trust().ca())).unwrap();
    let url = format!("{}{path}", base(&engine));

    // No signature: 400. Signed by another key, or over another route: 401.
    assert_eq!(http.get(&url).send().await.unwrap().status(), 400);
    let forged = stranger.signature("GET", &path, b"");
    assert_eq!(http.get(&url).header("X-Payload-Signature", forged).send().await.unwrap().status(), 401);
    let (public, _) =
        device.signature("GET", &path, b"").split_once(';').map(|(k, s)| (k.to_owned(), s.to_owned())).unwrap();
    let (_, other_route) = device
        .signature("GET", "/api/v1/onboarding", b"")
        .split_once(';')
        .map(|(k, s)| (k.to_owned(), s.to_owned()))
        .unwrap();
    let replayed = format!("{public};{other_route}");
    assert_eq!(http.get(&url).header("X-Payload-Signature", replayed).send().await.unwrap().status(), 401);

    // A body that is not the document: 400; one that does not fit: 422.
    let capabilities = format!("/api/v1/clients/{}/capabilities/margo-1", device.client_id.as_deref().unwrap());
    let response = device.call(reqwest::Method::PUT, &capabilities, Some(&json!({"kind": "Nonsense"})), &[]).await;
    assert_eq!(response.status(), 400);
    let wrong_arch = json!({
        "apiVersion": "margo.org/v1-alpha1", "kind": "DeviceCapabilitiesManifest",
        "properties": {"id": "margo-1", "vendor": "v", "modelNumber": "m", "serialNumber": "s",
            "roles": ["Standalone Device"], "resources": {"cpu": {"cores": 1, "architectures": ["sparc"]}}},
    });
    let response = device.call(reqwest::Method::PUT, &capabilities, Some(&wrong_arch), &[]).await;
    assert_eq!(response.status(), 422);
    let said: Value = response.json().await.unwrap();
    assert!(said["error"].as_str().unwrap().contains("properties.resources.cpu.architectures"), "{said}");

    // 406 for a format the server does not make.
    let response = device.call(reqwest::Method::GET, &path, None, &[("Accept", "application/xml")]).await;
    assert_eq!(response.status(), 406);

    // Unregistered: 403 from then on, and the node is revoked.
    assert_eq!(device.unregister().await, 204);
    assert_eq!(device.call(reqwest::Method::GET, &path, None, &[]).await.status(), 403);
    eventually("the node to be revoked", TIMEOUT, || async {
        (engine.node_state("margo-1").await.as_deref() == Some("revoked")).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_launch_onto_a_margo_device_and_a_native_node_runs_on_both_and_each_change_reaches_the_device() {
    let nats = NatsServer::start().await;
    let engine = engine(&nats).await;
    let docker = docker().await;
    let native = TestNode::start(&nats, &engine).await;
    let mut device = onboarded(&engine, "margo-run").await;
    tests::remove_containers(&docker, tests::margo::DEVICE_LABEL, "margo-run").await.unwrap();
    engine.publish_sample(IMAGE_1_0_0).await;
    let version = json!({"version": "1.1.0", "image": IMAGE_1_1_0});
    assert_eq!(engine.post("/v1/applications/sample/versions", version).await.0, 201);
    assert_eq!(engine.post("/v1/applications/sample/versions/1.1.0/publish", json!({})).await.0, 200);

    assert_eq!(device.poll().await.unwrap(), Polled::Changed { version: 1, changed: vec![], removed: vec![] });
    assert_eq!(device.poll().await.unwrap(), Polled::NotModified, "304 when nothing changed");

    let id = launch_on(&engine, &[&native.name, "margo-run"]).await;
    let Polled::Changed { changed, .. } = next_change(&mut device, Some(&docker)).await else { unreachable!() };
    let margo_id = changed[0].clone();
    let view = engine
        .wait_deployment(&id, "both nodes to run", |v| {
            v["nodes"][&native.name]["status"] == "running" && v["nodes"]["margo-run"]["status"] == "running"
        })
        .await;
    assert_eq!(view["status"], "running", "{view}");
    let running = tests::containers(&docker, tests::margo::DEPLOYMENT_LABEL, &margo_id).await.unwrap();
    assert_eq!(running.len(), 1, "the device runs the compose service: {running:?}");

    // A wrong digest is a 404.
    let held = device.held[&margo_id].clone();
    let client = device.client_id.clone().unwrap();
    let wrong = format!("/api/v1/clients/{client}/deployments/{margo_id}/sha256:{}", "0".repeat(64));
    assert_eq!(device.call(reqwest::Method::GET, &wrong, None, &[]).await.status(), 404);
    assert!(held.document["spec"]["deploymentProfile"]["components"][0]["properties"]["packageLocation"].is_string());

    // An update: the next poll sees the new version.
    let (status, body) = engine.post(&format!("/v1/deployments/{id}/update"), json!({"version": "1.1.0"})).await;
    assert_eq!(status, 202, "{body}");
    let Polled::Changed { changed, .. } = next_change(&mut device, Some(&docker)).await else { unreachable!() };
    assert_eq!(changed, std::slice::from_ref(&margo_id));
    let revision =
        &device.held[&margo_id].document["spec"]["deploymentProfile"]["components"][0]["properties"]["revision"];
    assert_eq!(revision, "1.1.0");
    engine
        .wait_deployment(&id, "the update to run", |v| {
            v["nodes"]["margo-run"]["status"] == "running" && v["version"] == "1.1.0"
        })
        .await;

    // A stop takes it off the device (Margo has no stopped state), a start puts it back.
    assert_eq!(engine.post(&format!("/v1/deployments/{id}/stop"), json!({})).await.0, 202);
    let Polled::Changed { removed, .. } = next_change(&mut device, Some(&docker)).await else { unreachable!() };
    assert_eq!(removed, std::slice::from_ref(&margo_id));
    assert!(tests::containers(&docker, tests::margo::DEPLOYMENT_LABEL, &margo_id).await.unwrap().is_empty());
    assert_eq!(engine.post(&format!("/v1/deployments/{id}/start"), json!({})).await.0, 202);
    let Polled::Changed { changed, .. } = next_change(&mut device, Some(&docker)).await else { unreachable!() };
    assert_eq!(changed, std::slice::from_ref(&margo_id));

    // An uninstall: gone from the manifest, the bundle null again.
    assert_eq!(engine.delete(&format!("/v1/deployments/{id}")).await.0, 202);
    let Polled::Changed { removed, .. } = next_change(&mut device, Some(&docker)).await else { unreachable!() };
    assert_eq!(removed, std::slice::from_ref(&margo_id));
    engine
        .wait_deployment(&id, "the device to report its removal", |v| v["nodes"]["margo-run"]["status"] == "removed")
        .await;
    assert!(tests::containers(&docker, tests::margo::DEPLOYMENT_LABEL, &margo_id).await.unwrap().is_empty());
    native.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_component_reaches_the_view_with_its_margo_error_and_each_status_field_is_checked() {
    let nats = NatsServer::start().await;
    let engine = engine(&nats).await;
    let mut device = onboarded(&engine, "margo-f").await;
    engine.publish_sample(IMAGE_1_0_0).await;
    let id = launch_on(&engine, &["margo-f"]).await;
    let Polled::Changed { changed: polled, .. } = changed(&mut device).await else { unreachable!() };
    let margo_id = polled[0].clone();
    let component = device.held[&margo_id].components[0].0.clone();

    let valid = |state: &str| {
        json!({
            "apiVersion": "margo.org/v1-alpha1", "kind": "DeploymentStatusManifest",
            "deploymentId": margo_id, "deviceId": "margo-f",
            "status": {"state": state}, "components": [{"name": component, "state": state}],
        })
    };
    // Field by field, as the specification has them.
    let mut cases: Vec<(Value, u16)> = Vec::new();
    let mut other_deployment = valid("installing");
    other_deployment["deploymentId"] = json!("8b0f8e4c-0000-4000-8000-000000000000");
    cases.push((other_deployment, 422));
    let mut unknown_component = valid("installing");
    unknown_component["components"][0]["name"] = json!("not-a-component");
    cases.push((unknown_component, 422));
    let mut not_most_severe = valid("installed");
    not_most_severe["components"][0]["state"] = json!("installing");
    cases.push((not_most_severe, 422));
    cases.push((valid("failed"), 422));
    let mut no_kind = valid("installing");
    no_kind.as_object_mut().unwrap().remove("kind");
    cases.push((no_kind, 400));
    let mut unknown_state = valid("installing");
    unknown_state["status"]["state"] = json!("exploded");
    cases.push((unknown_state, 400));
    let mut unknown_field = valid("installing");
    unknown_field["extra"] = json!(1);
    cases.push((unknown_field, 400));
    for (report, expected) in cases {
        assert_eq!(device.post_status(&margo_id, &report).await, expected, "{report}");
    }

    assert_eq!(device.report(&margo_id, "failed", Some(("E42", "the volume is full"))).await, 200);
    let view =
        engine.wait_deployment(&id, "the failure to show", |v| v["nodes"]["margo-f"]["status"] == "failed").await;
    let error = &view["nodes"]["margo-f"]["error"];
    assert_eq!(error["code"], format!("margo:{component}:E42"), "{view}");
    assert_eq!(error["message"], "the volume is full", "{view}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_manifest_version_never_goes_down_across_a_restart_and_a_rebuild_from_the_log() {
    let nats = NatsServer::start().await;
    let engine = engine(&nats).await;
    let mut device = onboarded(&engine, "margo-v").await;
    engine.publish_sample(IMAGE_1_0_0).await;
    let first = launch_on(&engine, &["margo-v"]).await;
    next_change(&mut device, None).await;
    assert_eq!(engine.post(&format!("/v1/deployments/{first}/stop"), json!({})).await.0, 202);
    next_change(&mut device, None).await;
    let before = device.manifest_version;
    assert!(before >= 3, "a launch and a stop each raised it: {before}");

    // Another engine on the same log, its read models folded afresh from it: the device polls
    // it with the same client id and key.
    let rebuilt = self::engine(&nats).await;
    let served = eventually("the rebuilt engine to serve the device", TIMEOUT, || async {
        let response = device_via(&device, &rebuilt).await;
        (response.0 == 200).then_some(response.1)
    })
    .await;
    assert_eq!(served["manifestVersion"].as_u64(), Some(before), "the same version from the same log");

    // And after a restart of the first engine, a change raises it further.
    let engine = engine.restart().await;
    assert_eq!(engine.post(&format!("/v1/deployments/{first}/start"), json!({})).await.0, 202);
    let after = eventually("the restarted engine to serve a higher version", TIMEOUT, || async {
        let (status, manifest) = device_via(&device, &engine).await;
        let version = manifest["manifestVersion"].as_u64().unwrap_or(0);
        (status == 200 && version > before).then_some(version)
    })
    .await;
    assert!(after > before);
}

/// The manifest `device` gets from `engine`'s Margo API, signed with its key.
async fn device_via(device: &MargoDevice, engine: &TestEngine) -> (u16, Value) {
    let path = device.manifest_path();
    let http = engine::api_client(Some(&engine.trust().ca())).unwrap();
    let response = http
        .get(format!("{}{path}", base(engine)))
        .header("X-Payload-Signature", device.signature("GET", &path, b""))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// A description of `sample` with one compose component and one parameter, its profile `kind`.
fn description(kind: &str) -> String {
    format!(
        "apiVersion: margo.org/v1-alpha1
kind: ApplicationDescription
metadata:
  id: sample
  name: Sample
  version: 2.0.0
  catalog:
    organization:
      - name: Samples
deploymentProfiles:
  - type: {kind}
    id: sample-compose
    components:
      - name: sample-docker
        properties:
          packageLocation: https://127.0.0.1/sample.tar.gz
    requiredResources:
      cpu:
        cores: 1
      memory: 128Mi
parameters:
  greeting:
    value: hello
    targets:
      - pointer: ENV.GREETING
        components: [\"sample-docker\"]
"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vendor_adds_a_version_from_a_margo_description_and_a_device_is_served_it() {
    let nats = NatsServer::start().await;
    let engine = engine(&nats).await;
    let mut device = onboarded(&engine, "margo-d").await;
    engine.publish_sample(IMAGE_1_0_0).await;
    let packages = json!({"sample-docker": format!("services:\n  web:\n    image: {IMAGE_1_0_0}\n")});

    // One it cannot honour is refused, naming the attribute.
    let helm_only = json!({"description": description("helm.v3"), "packages": packages});
    let (status, body) = engine.post("/v1/applications/sample/versions/margo", helm_only).await;
    assert_eq!((status, body["field"].as_str()), (422, Some("deploymentProfiles")), "{body}");

    let body = json!({"description": description("compose"), "packages": packages});
    let (status, body) = engine.post("/v1/applications/sample/versions/margo", body).await;
    assert_eq!(status, 201, "{body}");
    let version = body["versions"].as_array().unwrap().iter().find(|v| v["version"] == "2.0.0").unwrap().clone();
    assert_eq!(version["parameters"]["GREETING"], "hello", "{version}");
    assert_eq!(version["services"][0]["limits"]["memory"], 128 * 1024 * 1024, "{version}");
    assert_eq!(engine.post("/v1/applications/sample/versions/2.0.0/publish", json!({})).await.0, 200);

    let launch =
        json!({"application": "sample", "version": "2.0.0", "nodes": ["margo-d"], "overrides": {"GREETING": "hi"}});
    let (status, body) = engine.post("/v1/deployments", launch).await;
    assert_eq!(status, 201, "{body}");
    let Polled::Changed { changed, .. } = next_change(&mut device, None).await else { unreachable!() };
    let held = &device.held[&changed[0]];
    let compose = &held.components[0].1;
    assert_eq!(compose["services"]["web"]["environment"]["GREETING"], "hi");
    assert_eq!(held.document["spec"]["parameters"]["GREETING"]["targets"][0]["pointer"], "ENV.GREETING");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_stops_polling_turns_unreachable_and_its_next_poll_brings_it_back() {
    let nats = NatsServer::start().await;
    let engine = engine(&nats).await;
    let mut device = onboarded(&engine, "margo-l").await;
    device.poll().await.unwrap();
    // It polls every second (the engine's expectation): three missed, it is unreachable.
    eventually("the silent device to be unreachable", TIMEOUT, || async {
        (engine.node_state("margo-l").await.as_deref() == Some("unreachable")).then_some(())
    })
    .await;
    let (_, node) = engine.get("/v1/nodes/margo-l").await;
    assert!(node["last_heartbeat"].is_string(), "its last poll is when it was last heard: {node}");
    device.poll().await.unwrap();
    eventually("the device to be online again", TIMEOUT, || async {
        (engine.node_state("margo-l").await.as_deref() == Some("online")).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_summaries_and_the_dashboards_fleet_count_a_margo_device_as_a_node() {
    let nats = NatsServer::start().await;
    let engine = engine(&nats).await;
    let mut device = onboarded(&engine, "margo-s").await;
    engine.publish_sample(IMAGE_1_0_0).await;
    let id = launch_on(&engine, &["margo-s"]).await;
    next_change(&mut device, None).await;
    engine.wait_deployment(&id, "the device to run it", |v| v["nodes"]["margo-s"]["status"] == "running").await;

    let (status, summary) = engine.get("/v1/summary").await;
    assert_eq!(status, 200);
    assert!(summary.to_string().contains("margo-s"), "the summary counts it per node: {summary}");

    let base = format!("https://{}", engine.engine.dashboard_addr.expect("the dashboard listens"));
    let http = engine::api_client_builder(Some(&engine.trust().ca()))
        .unwrap()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let form = [("token", tests::ADMIN_TOKEN)];
    let signed_in = http.post(format!("{base}/signin")).header("origin", &base).form(&form).send().await.unwrap();
    let cookie = signed_in.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned();
    let page = http.get(format!("{base}/fleet")).header("cookie", &cookie).send().await.unwrap().text().await.unwrap();
    assert!(page.contains("margo-s") && page.contains("Margo device"), "{page}");
}
