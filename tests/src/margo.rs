//! A reference Margo device, written from Margo's Workload Management API 1.0.0 and not from
//! the engine's code: it makes its own key and X.509 certificate, onboards, reports its
//! capabilities, polls its desired state manifest with ETags, fetches each deployment by digest
//! and checks every digest, applies compose components to a Docker engine and reports each
//! status change.
//!
//! Each call but the root CA's download carries `X-Payload-Signature: <public key>;<signature>`
//! (base64 both): the SubjectPublicKeyInfo of its certificate, and an ECDSA P-256 / SHA-256
//! signature of `<METHOD> <path>\n<body>`.

use std::collections::BTreeMap;

use anyhow::{bail, ensure, Context};
use base64::Engine as _;
use futures::StreamExt;
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
use serde_json::{json, Value};
use sha2::Digest as _;

pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.margo.manifest.v1+json";

/// The label the device's containers carry: the device's name.
pub const DEVICE_LABEL: &str = "margo-device";
/// The label naming the deployment a container is of.
pub const DEPLOYMENT_LABEL: &str = "margo-deployment";

/// A deployment the device holds: its document and each component's compose file.
#[derive(Debug, Clone)]
pub struct Held {
    pub digest: String,
    pub document: serde_yaml::Value,
    /// Each component, by name, with its compose file.
    pub components: Vec<(String, serde_yaml::Value)>,
}

/// What a poll found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Polled {
    NotModified,
    Changed {
        version: u64,
        /// Deployments new or changed, by deploymentId.
        changed: Vec<String>,
        removed: Vec<String>,
    },
}

pub struct MargoDevice {
    pub name: String,
    base: String,
    http: reqwest::Client,
    key: EcdsaKeyPair,
    public_key: Vec<u8>,
    pub certificate: Vec<u8>,
    pub client_id: Option<String>,
    pub etag: Option<String>,
    pub manifest_version: u64,
    pub held: BTreeMap<String, Held>,
}

/// `sha256:<hex>` of `bytes`: the digest a Margo reference names.
pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

impl MargoDevice {
    /// A device named `name` that trusts the CA in `ca` (PEM file) and speaks to the Workload
    /// Fleet Manager at `base` (`https://host:port`).
    pub fn new(name: &str, base: &str, ca: &std::path::Path) -> MargoDevice {
        MargoDevice::with_client(name, base, engine::api_client(Some(ca)).expect("an HTTPS client"))
    }

    /// A device as [`MargoDevice::new`] makes it, speaking through `http` (which trusts the CA):
    /// a fleet of them may share one client.
    pub fn with_client(name: &str, base: &str, http: reqwest::Client) -> MargoDevice {
        let key_pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("a key is made");
        let mut params = rcgen::CertificateParams::new(vec![format!("{name}.devices.example")]).expect("params");
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        let certificate = params.self_signed(&key_pair).expect("the certificate is made").der().to_vec();
        let key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_ASN1_SIGNING,
            &key_pair.serialize_der(),
            &ring::rand::SystemRandom::new(),
        )
        .expect("the key reads");
        MargoDevice {
            name: name.to_owned(),
            base: base.to_owned(),
            http,
            key,
            public_key: key_pair.public_key_der(),
            certificate,
            client_id: None,
            etag: None,
            manifest_version: 0,
            held: BTreeMap::new(),
        }
    }

    /// The fingerprint an operator admits the device by.
    pub fn fingerprint(&self) -> String {
        digest(&self.certificate)
    }

    fn client(&self) -> &str {
        self.client_id.as_deref().expect("the device onboarded")
    }

    /// `X-Payload-Signature` for a call.
    pub fn signature(&self, method: &str, path: &str, body: &[u8]) -> String {
        let mut signed = format!("{method} {path}\n").into_bytes();
        signed.extend_from_slice(body);
        let signature = self.key.sign(&ring::rand::SystemRandom::new(), &signed).expect("signing");
        let b64 = base64::engine::general_purpose::STANDARD;
        format!("{};{}", b64.encode(&self.public_key), b64.encode(signature.as_ref()))
    }

    /// A signed call, with `headers` besides.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> reqwest::Response {
        let body = body.map(|b| serde_json::to_vec(b).expect("JSON")).unwrap_or_default();
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .header("X-Payload-Signature", self.signature(method.as_str(), path, &body));
        if !body.is_empty() {
            request = request.header("content-type", "application/json").body(body);
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.send().await.expect("the Workload Fleet Manager answers")
    }

    /// The root CA the Workload Fleet Manager gives (PEM).
    pub async fn root_ca(&self) -> String {
        let response = self.http.get(format!("{}/api/v1/onboarding/certificate", self.base)).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        let pem = base64::engine::general_purpose::STANDARD.decode(body["certificate"].as_str().unwrap()).unwrap();
        String::from_utf8(pem).unwrap()
    }

    /// Onboards with the device's certificate: the status, and the client id once given.
    pub async fn onboard(&mut self) -> u16 {
        let pem = format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            base64::engine::general_purpose::STANDARD.encode(&self.certificate)
        );
        let request = json!({
            "apiVersion": "margo.org/v1-alpha1",
            "kind": "OnboardingRequest",
            "certificate": base64::engine::general_purpose::STANDARD.encode(pem),
        });
        let response = self.call(reqwest::Method::POST, "/api/v1/onboarding", Some(&request), &[]).await;
        let status = response.status().as_u16();
        if status == 201 {
            let body: Value = response.json().await.unwrap();
            self.client_id = Some(body["clientId"].as_str().expect("a clientId").to_owned());
        }
        status
    }

    /// Reports its capabilities: `arch`, and the peripherals it has.
    pub async fn report_capabilities(&self, arch: &str, peripherals: &[&str]) -> u16 {
        let capabilities = json!({
            "apiVersion": "margo.org/v1-alpha1",
            "kind": "DeviceCapabilitiesManifest",
            "properties": {
                "id": self.name,
                "vendor": "Reference",
                "modelNumber": "R-1",
                "serialNumber": format!("SN-{}", self.name),
                "roles": ["Standalone Device"],
                "resources": {
                    "cpu": {"cores": 2, "architectures": [arch]},
                    "memory": "2048Mi",
                    "storage": "16Gi",
                    "peripherals": peripherals.iter().map(|p| json!({"type": p})).collect::<Vec<_>>(),
                    "interfaces": [{"type": "ethernet"}],
                },
            },
        });
        let path = format!("/api/v1/clients/{}/capabilities/{}", self.client(), self.name);
        self.call(reqwest::Method::POST, &path, Some(&capabilities), &[]).await.status().as_u16()
    }

    pub async fn unregister(&self) -> u16 {
        let path = format!("/api/v1/clients/{}/capabilities/{}", self.client(), self.name);
        self.call(reqwest::Method::DELETE, &path, None, &[]).await.status().as_u16()
    }

    /// The manifest's path.
    pub fn manifest_path(&self) -> String {
        format!("/api/v1/clients/{}/deployments", self.client())
    }

    /// Polls the desired state with the last ETag; fetches what changed, checking each digest
    /// and that `manifestVersion` never goes down.
    pub async fn poll(&mut self) -> anyhow::Result<Polled> {
        let etag = self.etag.clone();
        let mut headers = vec![("Accept", MANIFEST_MEDIA_TYPE)];
        if let Some(etag) = &etag {
            headers.push(("If-None-Match", etag.as_str()));
        }
        let response = self.call(reqwest::Method::GET, &self.manifest_path(), None, &headers).await;
        match response.status().as_u16() {
            304 => return Ok(Polled::NotModified),
            200 => {}
            status => bail!("the manifest answered {status}: {}", response.text().await.unwrap_or_default()),
        }
        let content_type = response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
        ensure!(content_type == MANIFEST_MEDIA_TYPE, "the manifest came as {content_type}");
        let new_etag = response.headers().get("etag").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let bytes = response.bytes().await?;
        ensure!(
            new_etag.as_deref() == Some(format!("\"{}\"", digest(&bytes)).as_str()),
            "the ETag is the manifest's digest"
        );
        let manifest: Value = serde_json::from_slice(&bytes)?;
        let version = manifest["manifestVersion"].as_u64().context("manifestVersion")?;
        ensure!(version >= 1, "manifestVersion starts at 1");
        ensure!(
            version >= self.manifest_version,
            "manifestVersion went down: {} after {}",
            version,
            self.manifest_version
        );
        let deployments = manifest["deployments"].as_array().context("deployments")?.clone();
        let bundle = &manifest["bundle"];
        if deployments.is_empty() {
            ensure!(bundle.is_null(), "the bundle is null without deployments: {bundle}");
        } else {
            ensure!(bundle["mediaType"] == "application/vnd.margo.bundle.v1+tar+gzip", "the bundle's media type");
            let url = bundle["url"].as_str().context("bundle.url")?;
            let expected = bundle["digest"].as_str().context("bundle.digest")?;
            let archive = self.fetch(url, expected).await?;
            ensure!(bundle_names(&archive)?.len() == deployments.len(), "the bundle holds one YAML per deployment");
        }
        let mut changed = Vec::new();
        let mut listed = Vec::new();
        for reference in &deployments {
            let id = reference["deploymentId"].as_str().context("deploymentId")?.to_owned();
            let expected = reference["digest"].as_str().context("digest")?.to_owned();
            listed.push(id.clone());
            if self.held.get(&id).is_some_and(|held| held.digest == expected) {
                continue;
            }
            let url = reference["url"].as_str().context("url")?;
            let yaml = self.fetch(url, &expected).await?;
            let document: serde_yaml::Value = serde_yaml::from_slice(&yaml)?;
            ensure!(document["kind"] == "ApplicationDeployment", "an ApplicationDeployment");
            ensure!(
                document["metadata"]["annotations"]["id"].as_str() == Some(id.as_str()),
                "its id is the reference's"
            );
            let profile = &document["spec"]["deploymentProfile"];
            ensure!(profile["type"] == "compose", "a compose profile");
            let mut components = Vec::new();
            for component in profile["components"].as_sequence().context("components")? {
                let name = component["name"].as_str().context("component name")?.to_owned();
                let location = component["properties"]["packageLocation"].as_str().context("packageLocation")?;
                let expected = location.rsplit('/').next().unwrap_or_default().to_owned();
                let compose = serde_yaml::from_slice(&self.fetch(location, &expected).await?)?;
                components.push((name, compose));
            }
            self.held.insert(id.clone(), Held { digest: expected, document, components });
            changed.push(id);
        }
        let removed: Vec<String> = self.held.keys().filter(|id| !listed.contains(id)).cloned().collect();
        self.manifest_version = version;
        self.etag = new_etag;
        Ok(Polled::Changed { version, changed, removed })
    }

    /// GETs `url` and checks its bytes have `expected` as digest.
    pub async fn fetch(&self, url: &str, expected: &str) -> anyhow::Result<Vec<u8>> {
        let response = self.call(reqwest::Method::GET, url, None, &[]).await;
        ensure!(response.status() == 200, "{url} answered {}", response.status());
        let bytes = response.bytes().await?.to_vec();
        ensure!(digest(&bytes) == expected, "{url}: the digest is {}, not {expected}", digest(&bytes));
        Ok(bytes)
    }

    /// Reports `state` for deployment `id`, every component in it; `failed` with an error.
    pub async fn report(&self, id: &str, state: &str, error: Option<(&str, &str)>) -> u16 {
        let components: Vec<String> = match self.held.get(id) {
            Some(held) => held.components.iter().map(|(name, _)| name.clone()).collect(),
            None => vec![],
        };
        let error = error.map(|(code, message)| (code, components.first().cloned().unwrap_or_default(), message));
        let error_of = |component: &str| match &error {
            Some((code, source, message)) if source == component => {
                json!({"code": code, "source": source, "message": message})
            }
            _ => Value::Null,
        };
        let mut report = json!({
            "apiVersion": "margo.org/v1-alpha1",
            "kind": "DeploymentStatusManifest",
            "deploymentId": id,
            "deviceId": self.name,
            "status": {"state": state},
            "components": components.iter().map(|c| {
                let mut status = json!({"name": c, "state": state});
                if !error_of(c).is_null() {
                    status["error"] = error_of(c);
                }
                status
            }).collect::<Vec<_>>(),
        });
        if let Some((code, source, message)) = &error {
            report["status"]["error"] = json!({"code": code, "source": source, "message": message});
        }
        self.post_status(id, &report).await
    }

    /// Posts `report` as deployment `id`'s status.
    pub async fn post_status(&self, id: &str, report: &Value) -> u16 {
        let path = format!("/api/v1/clients/{}/deployments/{id}/status", self.client());
        self.call(reqwest::Method::POST, &path, Some(report), &[]).await.status().as_u16()
    }

    /// Takes what a poll found to `docker`: each changed deployment's compose services run
    /// (the old ones removed), each removed one's removed, every step reported.
    pub async fn apply(&mut self, docker: &bollard::Docker, polled: &Polled) -> anyhow::Result<()> {
        let Polled::Changed { changed, removed, .. } = polled else { return Ok(()) };
        for id in removed {
            self.report(id, "removing", None).await;
            crate::remove_containers(docker, DEPLOYMENT_LABEL, id).await?;
            self.report(id, "removed", None).await;
            self.held.remove(id);
        }
        for id in changed {
            self.report(id, "installing", None).await;
            crate::remove_containers(docker, DEPLOYMENT_LABEL, id).await?;
            match self.run(docker, id).await {
                Ok(()) => self.report(id, "installed", None).await,
                Err(e) => self.report(id, "failed", Some(("RUN", &format!("{e:#}")))).await,
            };
        }
        Ok(())
    }

    async fn run(&self, docker: &bollard::Docker, id: &str) -> anyhow::Result<()> {
        let held = self.held.get(id).context("held")?;
        for (component, compose) in &held.components {
            let services = compose["services"].as_mapping().context("services")?;
            for (service, spec) in services {
                let service = service.as_str().context("a service name")?;
                let image = spec["image"].as_str().context("image")?;
                // By digest as it is, or by tag.
                let (from, tag) = match image.contains('@') {
                    true => (image, None),
                    false => image
                        .rsplit_once(':')
                        .map(|(from, tag)| (from, Some(tag.to_owned())))
                        .context("a tagged image")?,
                };
                let options = bollard::query_parameters::CreateImageOptions {
                    from_image: Some(from.to_owned()),
                    tag,
                    ..Default::default()
                };
                let mut pull = docker.create_image(Some(options), None, None);
                while let Some(step) = pull.next().await {
                    step.with_context(|| format!("pulling {image}"))?;
                }
                let env: Vec<String> = spec["environment"]
                    .as_mapping()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| format!("{}={}", k.as_str().unwrap_or(""), v.as_str().unwrap_or("")))
                            .collect()
                    })
                    .unwrap_or_default();
                let labels =
                    [(DEVICE_LABEL.to_owned(), self.name.clone()), (DEPLOYMENT_LABEL.to_owned(), id.to_owned())];
                let body = bollard::models::ContainerCreateBody {
                    image: Some(image.to_owned()),
                    env: Some(env),
                    labels: Some(labels.into_iter().collect()),
                    ..Default::default()
                };
                let name = format!("margo-{}-{component}-{service}-{}", self.name, &id[..8]);
                let options =
                    bollard::query_parameters::CreateContainerOptions { name: Some(name), ..Default::default() };
                let created = docker.create_container(Some(options), body).await?;
                docker.start_container(&created.id, None).await?;
            }
        }
        Ok(())
    }
}

/// The names in a bundle (a gzip-compressed tar).
pub fn bundle_names(archive: &[u8]) -> anyhow::Result<Vec<String>> {
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(archive));
    let mut names = Vec::new();
    for entry in tar.entries()? {
        names.push(entry?.path()?.to_string_lossy().into_owned());
    }
    Ok(names)
}
