//! The engine as a Margo Workload Fleet Manager: the device-facing API of Margo's Workload
//! Management API 1.0.0, on a listener of its own, over TLS.
//!
//! A Margo device runs no edge node. An admin admits it as a node by the fingerprint of its
//! X.509 certificate (`POST /v1/nodes/{id}/margo`); the device then onboards with that
//! certificate and is given a client id, reports its capabilities (which become the node's
//! labels), polls its desired state manifest, fetches each `ApplicationDeployment` by digest and
//! reports each deployment's status, which becomes the (deployment, node) pair's report like a
//! native node's. Its desired state is a read model (`events::projection::margo`) folded from
//! the work the router addresses to it; each poll counts as a heartbeat, which it publishes on
//! the device's telemetry subject for `liveness`.
//!
//! # Signatures
//!
//! Every call but the root CA's download is signed with the key of the device's certificate:
//! `X-Payload-Signature: <public key>;<signature>`, both base64, the public key the
//! certificate's SubjectPublicKeyInfo (DER) and the signature over [`signed_bytes`]: the method,
//! the path and query and the body, so a signature made for one route or body serves no other.
//! ECDSA (P-256, P-384) with SHA-256/384, Ed25519 and RSA keys are taken. Onboarding is
//! verified against the certificate it presents; every later call against the one onboarded.
//!
//! A header missing or not of that form is a 400, a signature that does not verify a 401, an
//! unknown or unregistered client (or a certificate no admin admitted) a 403, a body that is not
//! the document the route takes a 400, and one whose content does not fit a 422.
//!
//! # Beyond the specification
//!
//! Each compose component's `packageLocation` is `/api/v1/clients/{clientId}/packages/{digest}`
//! on this listener: the compose file of its services, content-addressed like the deployments.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::Engine as _;
use serde::Deserialize;

use events::margo::{DeploymentStatus, Rendered, StateManifest, BUNDLE_MEDIA_TYPE, MANIFEST_MEDIA_TYPE};
use events::node::{Labels, Node, NodeCommand, NodeRejection};
use events::projection::margo::{client_key, fingerprint_key, key, Device, DeviceRef};

use crate::command::{CommandError, CommandHandler, CommandMeta};

/// The header a device signs its calls with.
pub const SIGNATURE_HEADER: &str = "x-payload-signature";

/// How long onboarding and unregistering wait for the read models to hold them.
const FOLDED: Duration = Duration::from_secs(10);

/// The largest body a device may send.
const BODY_LIMIT: usize = 256 * 1024;

/// The signature algorithms a device's key may use.
static ALGORITHMS: &[&dyn rustls::pki_types::SignatureVerificationAlgorithm] = &[
    webpki::ring::ECDSA_P256_SHA256,
    webpki::ring::ECDSA_P384_SHA384,
    webpki::ring::ECDSA_P256_SHA384,
    webpki::ring::ECDSA_P384_SHA256,
    webpki::ring::ED25519,
    webpki::ring::RSA_PKCS1_2048_8192_SHA256,
    webpki::ring::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
];

/// What a device signs: `<METHOD> <path and query>\n` and the body's bytes.
pub fn signed_bytes(method: &str, path_and_query: &str, body: &[u8]) -> Vec<u8> {
    let mut signed = format!("{method} {path_and_query}\n").into_bytes();
    signed.extend_from_slice(body);
    signed
}

/// The Workload Fleet Manager: what its handlers share.
#[derive(Clone)]
pub struct Wfm {
    inner: Arc<Inner>,
}

struct Inner {
    commands: CommandHandler,
    models: sled::Tree,
    /// The root CA a device trusts this listener by (PEM).
    ca: String,
    /// How often a device is expected to poll: the interval of the heartbeats its polls are.
    poll_interval: Duration,
    /// The manifest last served to each client, with what it references.
    served: Mutex<HashMap<String, Arc<Served>>>,
    /// Each client's budget of calls that append to the log (capabilities, status, unregister):
    /// no device can grow the log as fast as it can send.
    writes: governor::DefaultKeyedRateLimiter<String>,
}

/// A device's calls that append to the log: this many a second, in bursts of [`WRITE_BURST`].
const WRITES_PER_SECOND: u32 = 20;
const WRITE_BURST: u32 = 100;

impl std::fmt::Debug for Wfm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wfm").field("poll_interval", &self.inner.poll_interval).finish()
    }
}

/// A device's desired state as served at one manifest version.
struct Served {
    version: u64,
    manifest: Vec<u8>,
    etag: String,
    /// Each listed deployment: this engine's id, its version, and what the device fetches of it.
    deployments: Vec<Listed>,
    /// The bundle's digest and bytes; none without deployments.
    bundle: Option<(String, Vec<u8>)>,
}

/// A deployment as a manifest lists it.
struct Listed {
    deployment: String,
    version: String,
    rendered: Rendered,
}

/// A refusal, answered as `{"error": ...}`.
#[derive(Debug)]
pub struct WfmError {
    status: StatusCode,
    error: String,
}

impl WfmError {
    fn new(status: StatusCode, error: impl std::fmt::Display) -> WfmError {
        WfmError { status, error: error.to_string() }
    }
}

impl IntoResponse for WfmError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(serde_json::json!({ "error": self.error }))).into_response()
    }
}

impl From<anyhow::Error> for WfmError {
    fn from(e: anyhow::Error) -> WfmError {
        tracing::error!(error = format!("{e:#}"), "margo: internal failure");
        WfmError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal failure")
    }
}

impl From<sled::Error> for WfmError {
    fn from(e: sled::Error) -> WfmError {
        anyhow::Error::from(e).into()
    }
}

impl Wfm {
    pub fn new(commands: CommandHandler, models: sled::Tree, ca: String, poll_interval: Duration) -> Wfm {
        let quota = governor::Quota::per_second(
            std::num::NonZeroU32::new(WRITES_PER_SECOND).unwrap_or(std::num::NonZeroU32::MIN),
        )
        .allow_burst(std::num::NonZeroU32::new(WRITE_BURST).unwrap_or(std::num::NonZeroU32::MIN));
        let writes = governor::DefaultKeyedRateLimiter::keyed(quota);
        let inner = Inner { commands, models, ca, poll_interval, served: Mutex::default(), writes };
        Wfm { inner: Arc::new(inner) }
    }

    fn model<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>, WfmError> {
        match self.inner.models.get(key)? {
            Some(bytes) => Ok(Some(serde_json::from_slice(&bytes).map_err(anyhow::Error::from)?)),
            None => Ok(None),
        }
    }

    /// The device `client` names, once the call is shown to be signed by its certificate.
    fn authenticate(&self, client: &str, call: &Call) -> Result<Device, WfmError> {
        // A call that is not signed at all says nothing of which clients exist.
        call.signature()?;
        let refused = || {
            self.lock().remove(client);
            WfmError::new(StatusCode::FORBIDDEN, format!("client `{client}` is not known or was unregistered"))
        };
        let here: DeviceRef = self.model(&client_key(client))?.ok_or_else(refused)?;
        let device: Device = self.model(&key(&here.tenant, &here.node))?.ok_or_else(refused)?;
        if device.unregistered || device.client_id.as_deref() != Some(client) {
            return Err(refused());
        }
        let certificate = device.certificate.as_deref().ok_or_else(refused)?;
        let der = base64::engine::general_purpose::STANDARD.decode(certificate).map_err(anyhow::Error::from)?;
        call.verify(&der)?;
        self.heard(&device);
        Ok(device)
    }

    /// Takes one write from `client`'s budget, or answers 429.
    fn write_budget(&self, client: &str) -> Result<(), WfmError> {
        match self.inner.writes.check_key(&client.to_owned()) {
            Ok(()) => Ok(()),
            Err(_) => Err(WfmError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!("over {WRITES_PER_SECOND} reports a second: send fewer"),
            )),
        }
    }

    /// Publishes a heartbeat for `device`: its poll is all the engine hears of it.
    fn heard(&self, device: &Device) {
        let heartbeat = events::telemetry::Heartbeat {
            tenant: device.tenant.clone(),
            node: device.node.clone(),
            at: chrono::Utc::now(),
            interval_ms: u64::try_from(self.inner.poll_interval.as_millis()).unwrap_or(u64::MAX),
            containers: vec![],
            pulls: vec![],
        };
        let client = self.inner.commands.store().client().clone();
        let subject = events::telemetry::subject(&device.tenant, &device.node);
        tokio::spawn(async move {
            let payload = serde_json::to_vec(&heartbeat).unwrap_or_default();
            if let Err(e) = client.publish(subject, payload.into()).await {
                tracing::warn!(error = %e, "margo: publishing a device's heartbeat");
            }
        });
    }

    /// What `device` is served at its manifest version: made once per version.
    fn served(&self, device: &Device) -> Result<Arc<Served>, WfmError> {
        let client = device.client_id.clone().unwrap_or_default();
        if let Some(served) = self.lock().get(&client).filter(|s| s.version == device.manifest_version) {
            return Ok(served.clone());
        }
        let deployments: Vec<Listed> = device
            .listed()
            .map(|(id, assigned)| Listed {
                deployment: id.clone(),
                version: assigned.version.clone(),
                rendered: events::margo::render(&client, &device.tenant, &device.node, id, assigned),
            })
            .collect();
        let bundle = match deployments.is_empty() {
            true => None,
            false => {
                let bundle = bundle(&deployments).map_err(anyhow::Error::from)?;
                Some((events::margo::digest(&bundle), bundle))
            }
        };
        let version = std::num::NonZeroU64::new(device.manifest_version).unwrap_or(std::num::NonZeroU64::MIN);
        let listed: Vec<(String, Vec<u8>)> =
            deployments.iter().map(|l| (l.rendered.id.clone(), l.rendered.yaml.clone())).collect();
        let sized = bundle.as_ref().map(|(digest, bytes)| (digest.clone(), u64::try_from(bytes.len()).unwrap_or(0)));
        let (manifest, etag) = StateManifest::of(&client, version, &listed, sized).served();
        let served = Arc::new(Served { version: device.manifest_version, manifest, etag, deployments, bundle });
        self.lock().insert(client, served.clone());
        Ok(served)
    }

    /// Waits for the read models to hold what `committed` appended, so the next call sees it.
    async fn folded(&self, committed: &crate::command::Committed) -> Result<(), WfmError> {
        let Some(last) = committed.events.last() else { return Ok(()) };
        let folded =
            crate::projector::wait_for(&self.inner.models, last.sequence, FOLDED).await.map_err(anyhow::Error::from)?;
        match folded {
            true => Ok(()),
            false => Err(WfmError::new(StatusCode::SERVICE_UNAVAILABLE, "recorded, but not served yet: try again")),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Served>>> {
        self.inner.served.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The bundle: a gzip-compressed tar of every deployment's YAML, `<deploymentId>.yaml`, made
/// the same way each time (no times, no owners), so its digest holds.
fn bundle(deployments: &[Listed]) -> std::io::Result<Vec<u8>> {
    let gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(gzip);
    tar.mode(tar::HeaderMode::Deterministic);
    for Listed { rendered, .. } in deployments {
        let mut header = tar::Header::new_ustar();
        header.set_size(u64::try_from(rendered.yaml.len()).unwrap_or(0));
        header.set_mode(0o644);
        header.set_mtime(0);
        tar.append_data(&mut header, format!("{}.yaml", rendered.id), rendered.yaml.as_slice())?;
    }
    tar.into_inner()?.finish()
}

/// A device's call as it arrived: what its signature covers.
struct Call {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
}

impl Call {
    /// Checks the call's signature against the certificate `der`.
    fn verify(&self, der: &[u8]) -> Result<(), WfmError> {
        let (key, signature) = self.signature()?;
        let unverified =
            |why: &str| WfmError::new(StatusCode::UNAUTHORIZED, format!("signature verification failed: {why}"));
        let der = rustls::pki_types::CertificateDer::from(der);
        let cert = webpki::EndEntityCert::try_from(&der).map_err(|_| unverified("the certificate does not parse"))?;
        if cert.subject_public_key_info().as_ref() != key.as_slice() {
            return Err(unverified("the public key is not the certificate's"));
        }
        let path = self.uri.path_and_query().map_or_else(|| self.uri.path(), |p| p.as_str());
        let signed = signed_bytes(self.method.as_str(), path, &self.body);
        match ALGORITHMS.iter().any(|algorithm| cert.verify_signature(*algorithm, &signed, &signature).is_ok()) {
            true => Ok(()),
            false => Err(unverified("sign the method, the path and the body with the certificate's key")),
        }
    }

    /// The public key and the signature the call carries, or a 400 saying what is amiss.
    fn signature(&self) -> Result<(Vec<u8>, Vec<u8>), WfmError> {
        let bad = |what: &str| WfmError::new(StatusCode::BAD_REQUEST, format!("X-Payload-Signature: {what}"));
        let value = self
            .headers
            .get(SIGNATURE_HEADER)
            .ok_or_else(|| bad("missing: sign each call with the device's certificate key"))?;
        let value = value.to_str().map_err(|_| bad("not text"))?;
        let (key, signature) =
            value.split_once(';').ok_or_else(|| bad("give `public_key;digital_signature`, both base64"))?;
        let b64 = base64::engine::general_purpose::STANDARD;
        let key = b64.decode(key.trim()).map_err(|_| bad("the public key is not base64"))?;
        let signature = b64.decode(signature.trim()).map_err(|_| bad("the signature is not base64"))?;
        Ok((key, signature))
    }
}

impl<S: Send + Sync> axum::extract::FromRequest<S> for Call {
    type Rejection = WfmError;

    async fn from_request(request: axum::extract::Request, _: &S) -> Result<Call, WfmError> {
        let (parts, body) = request.into_parts();
        let body = axum::body::to_bytes(body, BODY_LIMIT).await.map_err(|_| {
            WfmError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("the body is over {BODY_LIMIT} bytes"))
        })?;
        Ok(Call { method: parts.method, uri: parts.uri, headers: parts.headers, body })
    }
}

/// A JSON body read as `T`, or a 400 naming where it breaks.
fn document<T: serde::de::DeserializeOwned>(body: &[u8], what: &str) -> Result<T, WfmError> {
    let mut reader = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut reader)
        .map_err(|e| WfmError::new(StatusCode::BAD_REQUEST, format!("not a {what}: {}: {}", e.path(), e.inner())))
}

/// The Workload Fleet Manager's routes.
pub fn router(wfm: Wfm) -> Router {
    Router::new()
        .route("/api/v1/onboarding/certificate", get(root_ca))
        .route("/api/v1/onboarding", post(onboard))
        .route(
            "/api/v1/clients/{client}/capabilities/{device}",
            post(capabilities).put(capabilities).delete(unregister),
        )
        .route("/api/v1/clients/{client}/deployments", get(manifest))
        .route("/api/v1/clients/{client}/deployments/{deployment}/status", post(status))
        .route("/api/v1/clients/{client}/deployments/{deployment}/{digest}", get(deployment))
        .route("/api/v1/clients/{client}/bundles/{digest}", get(bundle_of))
        .route("/api/v1/clients/{client}/packages/{digest}", get(package))
        .layer(tower_http::catch_panic::CatchPanicLayer::new())
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            crate::api::REQUEST_TIMEOUT,
        ))
        .with_state(wfm)
}

async fn root_ca(State(wfm): State<Wfm>) -> Response {
    let certificate = base64::engine::general_purpose::STANDARD.encode(&wfm.inner.ca);
    axum::Json(serde_json::json!({ "certificate": certificate })).into_response()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct OnboardingRequest {
    #[allow(dead_code)]
    api_version: String,
    kind: OnboardingKind,
    /// The client certificate, base64: of its PEM text or of its DER bytes.
    certificate: String,
}

#[derive(Deserialize)]
enum OnboardingKind {
    OnboardingRequest,
}

/// The DER bytes of a certificate given base64, of PEM text or of DER.
fn certificate_der(given: &str) -> Result<Vec<u8>, WfmError> {
    use rustls::pki_types::pem::PemObject;
    let invalid = |why: &str| WfmError::new(StatusCode::BAD_REQUEST, format!("Invalid certificate: {why}"));
    let bytes = base64::engine::general_purpose::STANDARD.decode(given.trim()).map_err(|_| invalid("not base64"))?;
    let der = match bytes.starts_with(b"-----BEGIN") {
        true => rustls::pki_types::CertificateDer::from_pem_slice(&bytes)
            .map_err(|_| invalid("no PEM certificate in it"))?
            .to_vec(),
        false => bytes,
    };
    let parsed = rustls::pki_types::CertificateDer::from(der.as_slice());
    webpki::EndEntityCert::try_from(&parsed).map_err(|e| invalid(&format!("{e:?}")))?;
    Ok(der)
}

async fn onboard(State(wfm): State<Wfm>, call: Call) -> Result<Response, WfmError> {
    let request: OnboardingRequest = document(&call.body, "OnboardingRequest")?;
    let OnboardingKind::OnboardingRequest = request.kind;
    let der = certificate_der(&request.certificate)?;
    call.verify(&der)?;
    let fingerprint = events::margo::digest(&der);
    let rejected =
        || WfmError::new(StatusCode::FORBIDDEN, "Client rejected: no device was admitted with this certificate");
    let here: DeviceRef = wfm.model(&fingerprint_key(&fingerprint))?.ok_or_else(rejected)?;
    let certificate = base64::engine::general_purpose::STANDARD.encode(&der);
    // A client id no one can guess; the same one when the same certificate onboards again.
    let node: Node = wfm.inner.commands.state(&here.tenant, &here.node).await.map_err(anyhow::Error::from)?;
    let client = node
        .margo
        .filter(|m| m.certificate.as_ref() == Some(&certificate))
        .and_then(|m| m.client_id)
        .unwrap_or_else(|| uuid::Builder::from_random_bytes(rand::random()).into_uuid().to_string());
    let meta = CommandMeta::new(&here.tenant, &format!("margo:{}", here.node));
    let command = NodeCommand::OnboardMargo { fingerprint, certificate, client_id: client.clone() };
    let committed = match wfm.inner.commands.execute::<Node>(&here.node, &command, &meta).await {
        Ok(committed) => committed,
        Err(CommandError::Rejected(
            NodeRejection::NotAdmitted(_) | NodeRejection::Revoked | NodeRejection::NativeNode,
        )) => return Err(rejected()),
        Err(e) => return Err(anyhow::Error::from(e).into()),
    };
    wfm.folded(&committed).await?;
    tracing::info!(tenant = here.tenant, node = here.node, client, "margo: a device onboarded");
    if let Some(device) = wfm.model::<Device>(&key(&here.tenant, &here.node))? {
        wfm.heard(&device);
    }
    Ok((StatusCode::CREATED, axum::Json(serde_json::json!({ "clientId": client }))).into_response())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CapabilitiesManifest {
    #[allow(dead_code)]
    api_version: String,
    kind: CapabilitiesKind,
    properties: Properties,
}

#[derive(Deserialize)]
enum CapabilitiesKind {
    DeviceCapabilitiesManifest,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Properties {
    id: String,
    vendor: String,
    model_number: String,
    serial_number: String,
    roles: Vec<String>,
    resources: Resources,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Resources {
    #[serde(default)]
    cpu: Option<Cpu>,
    #[serde(default)]
    memory: Option<String>,
    #[serde(default)]
    storage: Option<String>,
    #[serde(default)]
    peripherals: Vec<Typed>,
    #[serde(default)]
    interfaces: Vec<Typed>,
}

#[derive(Deserialize)]
struct Cpu {
    cores: f64,
    #[serde(default)]
    architectures: Vec<String>,
}

#[derive(Deserialize)]
struct Typed {
    #[serde(rename = "type")]
    kind: String,
}

const ROLES: [&str; 4] = ["Standalone Cluster", "Standalone Device", "Cluster Leader", "Gateway"];
const ARCHITECTURES: [&str; 6] = ["amd64", "x86_64", "arm64", "arm", "riscv64", "other"];
const PERIPHERALS: [&str; 6] = ["gpu", "display", "camera", "microphone", "speaker", "other"];
const INTERFACES: [&str; 8] = ["ethernet", "wifi", "cellular", "bluetooth", "usb", "canbus", "rs232", "other"];

/// The node labels a device's capabilities give (written in EVENTS.md), or a 422 naming the
/// attribute that does not fit.
fn labels_of(properties: &Properties, device: &str) -> Result<Labels, WfmError> {
    let invalid = |field: &str, why: String| {
        WfmError::new(StatusCode::UNPROCESSABLE_ENTITY, format!("properties.{field}: {why}"))
    };
    if properties.id != device {
        return Err(invalid("id", format!("`{}` is not the device of the route, `{device}`", properties.id)));
    }
    let mut labels = Labels::new();
    labels.insert("margo".into(), "true".into());
    labels.insert("device-id".into(), properties.id.clone());
    labels.insert("vendor".into(), properties.vendor.clone());
    labels.insert("model".into(), properties.model_number.clone());
    labels.insert("serial".into(), properties.serial_number.clone());
    for role in &properties.roles {
        if !ROLES.contains(&role.as_str()) {
            return Err(invalid("roles", format!("`{role}` is not one of {ROLES:?}")));
        }
    }
    if let Some(role) = properties.roles.first() {
        labels.insert("role".into(), role.to_lowercase().replace(' ', "-"));
    }
    let resources = &properties.resources;
    if let Some(cpu) = &resources.cpu {
        if !(cpu.cores.is_finite() && cpu.cores > 0.0) {
            return Err(invalid("resources.cpu.cores", format!("{} is not a number of cores", cpu.cores)));
        }
        labels.insert("cpu-cores".into(), cpu.cores.to_string());
        for (i, arch) in cpu.architectures.iter().enumerate() {
            if !ARCHITECTURES.contains(&arch.as_str()) {
                return Err(invalid(
                    "resources.cpu.architectures",
                    format!("`{arch}` is not one of {ARCHITECTURES:?}"),
                ));
            }
            if i == 0 {
                labels.insert("arch".into(), arch.clone());
            }
            labels.insert(format!("arch-{arch}"), "true".into());
        }
    }
    for (field, size, units) in [
        ("memory", &resources.memory, &["Ki", "Mi", "Gi"][..]),
        ("storage", &resources.storage, &["Ki", "Mi", "Gi", "Ti", "Pi", "Ei"][..]),
    ] {
        if let Some(size) = size {
            let fits = units.iter().any(|unit| {
                size.strip_suffix(unit).is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            });
            if !fits {
                return Err(invalid(
                    &format!("resources.{field}"),
                    format!("`{size}` is not a number and one of {units:?}"),
                ));
            }
            labels.insert(field.into(), size.clone());
        }
    }
    for (field, typed, allowed) in [
        ("peripheral", &resources.peripherals, &PERIPHERALS[..]),
        ("interface", &resources.interfaces, &INTERFACES[..]),
    ] {
        for (i, Typed { kind }) in typed.iter().enumerate() {
            if !allowed.contains(&kind.as_str()) {
                return Err(invalid(&format!("resources.{field}s"), format!("`{kind}` is not one of {allowed:?}")));
            }
            if i == 0 {
                labels.insert(field.into(), kind.clone());
            }
            labels.insert(format!("{field}-{kind}"), "true".into());
        }
    }
    if let Some((key, value)) = labels.iter().find(|(_, v)| v.len() > LABEL_LENGTH || v.chars().any(char::is_control)) {
        return Err(invalid(key, format!("`{value}` is over {LABEL_LENGTH} characters or holds control characters")));
    }
    Ok(labels)
}

/// The longest label value a capability may give.
const LABEL_LENGTH: usize = 128;

async fn capabilities(
    State(wfm): State<Wfm>,
    Path((client, device_id)): Path<(String, String)>,
    call: Call,
) -> Result<Response, WfmError> {
    let device = wfm.authenticate(&client, &call)?;
    wfm.write_budget(&client)?;
    let manifest: CapabilitiesManifest = document(&call.body, "DeviceCapabilitiesManifest")?;
    let CapabilitiesKind::DeviceCapabilitiesManifest = manifest.kind;
    let labels = labels_of(&manifest.properties, &device_id)?;
    let meta = CommandMeta::new(&device.tenant, &format!("margo:{}", device.node));
    match wfm.inner.commands.execute::<Node>(&device.node, &NodeCommand::Register { labels }, &meta).await {
        Ok(_) => Ok(StatusCode::CREATED.into_response()),
        Err(CommandError::Rejected(NodeRejection::Revoked)) => {
            Err(WfmError::new(StatusCode::FORBIDDEN, "the device was unregistered"))
        }
        Err(CommandError::Rejected(rejection)) => Err(WfmError::new(StatusCode::UNPROCESSABLE_ENTITY, rejection)),
        Err(e) => Err(anyhow::Error::from(e).into()),
    }
}

async fn unregister(
    State(wfm): State<Wfm>,
    Path((client, device_id)): Path<(String, String)>,
    call: Call,
) -> Result<Response, WfmError> {
    let device = wfm.authenticate(&client, &call)?;
    wfm.write_budget(&client)?;
    let node: Node = wfm.inner.commands.state(&device.tenant, &device.node).await.map_err(anyhow::Error::from)?;
    let known = node.labels.get("device-id").map_or(device.node.as_str(), String::as_str);
    if known != device_id {
        return Err(WfmError::new(StatusCode::NOT_FOUND, format!("device `{device_id}` is not this client's")));
    }
    let meta = CommandMeta::new(&device.tenant, &format!("margo:{}", device.node));
    let committed =
        wfm.inner.commands.execute::<Node>(&device.node, &NodeCommand::UnregisterMargo, &meta).await.map_err(|e| {
            match e {
                CommandError::Rejected(NodeRejection::Revoked) => {
                    WfmError::new(StatusCode::FORBIDDEN, "the device was unregistered")
                }
                e => anyhow::Error::from(e).into(),
            }
        })?;
    // Refused from the next call on.
    wfm.folded(&committed).await?;
    tracing::info!(tenant = device.tenant, node = device.node, "margo: a device unregistered");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Whether `accept` takes the manifest's media type (or says nothing).
fn accepts_manifest(headers: &HeaderMap) -> bool {
    let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else { return true };
    accept.split(',').any(|range| {
        let range = range.split(';').next().unwrap_or("").trim();
        [MANIFEST_MEDIA_TYPE, "application/*", "*/*"].contains(&range)
    })
}

/// Whether the call's `If-None-Match` names `etag`.
fn not_modified(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|given| given.split(',').any(|tag| tag.trim() == etag || tag.trim() == "*"))
}

fn etag_header(etag: &str) -> HeaderValue {
    HeaderValue::from_str(etag).unwrap_or_else(|_| HeaderValue::from_static("\"\""))
}

const IMMUTABLE: &str = "public, max-age=31536000, immutable";

async fn manifest(State(wfm): State<Wfm>, Path(client): Path<String>, call: Call) -> Result<Response, WfmError> {
    let device = wfm.authenticate(&client, &call)?;
    if !accepts_manifest(&call.headers) {
        return Err(WfmError::new(
            StatusCode::NOT_ACCEPTABLE,
            format!("the manifest is served as {MANIFEST_MEDIA_TYPE}"),
        ));
    }
    let served = wfm.served(&device)?;
    let etag = etag_header(&served.etag);
    if not_modified(&call.headers, &served.etag) {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response());
    }
    let content_type = HeaderValue::from_static(MANIFEST_MEDIA_TYPE);
    Ok(([(header::CONTENT_TYPE, content_type), (header::ETAG, etag)], served.manifest.clone()).into_response())
}

/// Content-addressed bytes: 404 unless `digest` is theirs.
fn addressed(
    headers: &HeaderMap,
    digest: &str,
    found: Option<Vec<u8>>,
    media: &'static str,
) -> Result<Response, WfmError> {
    let Some(bytes) = found else {
        return Err(WfmError::new(StatusCode::NOT_FOUND, format!("nothing of this client has the digest `{digest}`")));
    };
    let etag = etag_header(&format!("\"{digest}\""));
    if not_modified(headers, &format!("\"{digest}\"")) {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response());
    }
    let headers = [
        (header::CONTENT_TYPE, HeaderValue::from_static(media)),
        (header::ETAG, etag),
        (header::CACHE_CONTROL, HeaderValue::from_static(IMMUTABLE)),
    ];
    Ok((headers, bytes).into_response())
}

/// A content-addressed fetch of a device: what `pick` finds, among what it is served, with
/// `digest`.
fn fetch(
    wfm: &Wfm,
    client: &str,
    call: &Call,
    digest: &str,
    media: &'static str,
    pick: impl FnOnce(&Served) -> Option<Vec<u8>>,
) -> Result<Response, WfmError> {
    let device = wfm.authenticate(client, call)?;
    let served = wfm.served(&device)?;
    addressed(&call.headers, digest, pick(&served), media)
}

async fn deployment(
    State(wfm): State<Wfm>,
    Path((client, deployment, digest)): Path<(String, String, String)>,
    call: Call,
) -> Result<Response, WfmError> {
    let yaml = |served: &Served| {
        let mut rendered = served.deployments.iter().map(|l| &l.rendered);
        rendered.find(|r| r.id == deployment && events::margo::digest(&r.yaml) == digest).map(|r| r.yaml.clone())
    };
    fetch(&wfm, &client, &call, &digest, "application/yaml", yaml)
}

async fn package(
    State(wfm): State<Wfm>,
    Path((client, digest)): Path<(String, String)>,
    call: Call,
) -> Result<Response, WfmError> {
    let package = |served: &Served| {
        let mut rendered = served.deployments.iter().map(|l| &l.rendered);
        rendered.find(|r| events::margo::digest(&r.package) == digest).map(|r| r.package.clone())
    };
    fetch(&wfm, &client, &call, &digest, "application/yaml", package)
}

async fn bundle_of(
    State(wfm): State<Wfm>,
    Path((client, digest)): Path<(String, String)>,
    call: Call,
) -> Result<Response, WfmError> {
    let bundle = |served: &Served| served.bundle.as_ref().filter(|(d, _)| *d == digest).map(|(_, bytes)| bytes.clone());
    fetch(&wfm, &client, &call, &digest, BUNDLE_MEDIA_TYPE, bundle)
}

async fn status(
    State(wfm): State<Wfm>,
    Path((client, deployment)): Path<(String, String)>,
    call: Call,
) -> Result<Response, WfmError> {
    let device = wfm.authenticate(&client, &call)?;
    wfm.write_budget(&client)?;
    let report: DeploymentStatus = document(&call.body, "DeploymentStatusManifest")?;
    let found =
        device.deployments.iter().find(|(id, _)| events::margo::deployment_id(&device.tenant, id) == deployment);
    let Some((ours, assigned)) = found else {
        return Err(WfmError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("deploymentId: `{deployment}` was never this device's"),
        ));
    };
    let components = [events::margo::margo_name(&assigned.application)];
    let reported = report
        .check(&deployment, &components)
        .map_err(|e| WfmError::new(StatusCode::UNPROCESSABLE_ENTITY, format!("{}: {e}", e.field())))?;
    let mut containers: events::Containers = reported
        .components
        .iter()
        .map(|(name, status, error)| {
            (name.clone(), events::status::ContainerStatus { status: *status, error: error.clone() })
        })
        .collect();
    // Margo's precedence and this model's may weigh two states apart: the overall state stands.
    if containers.values().any(|c| c.status.severity() > reported.status.severity()) {
        containers.clear();
    }
    let meta = CommandMeta::new(&device.tenant, &format!("margo:{}", device.node));
    // The version of the manifest it was last served: what it speaks of, not what was asked
    // since (after a restart of the engine, what is asked now).
    let served = wfm
        .lock()
        .get(&client)
        .and_then(|s| s.deployments.iter().find(|l| l.deployment == *ours).map(|l| l.version.clone()));
    let report = crate::worker::StateReport {
        version: served.unwrap_or_else(|| assigned.version.clone()),
        status: reported.status,
        error: reported.error,
        containers,
        reported_at: chrono::Utc::now(),
        order: None,
    };
    if let Some(rejection) = crate::worker::report_state(&wfm.inner.commands, &meta, ours, &device.node, report).await?
    {
        return Err(WfmError::new(StatusCode::UNPROCESSABLE_ENTITY, rejection));
    }
    Ok(StatusCode::OK.into_response())
}
