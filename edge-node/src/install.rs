//! The edge node installed as a systemd service, upgraded in place, and removed again.
//!
//! `install` places the binary, makes the node's key pair (the seed, mode 0600, never leaves
//! the machine), enrolls its public key with the engine's API (an admin token), and writes the
//! credentials, the CA, a settings file and a unit. Everything is written under a root
//! directory, `/` in production and a scratch directory in tests.
//!
//! The unit runs the node as a user systemd makes for it (`DynamicUser`) in the `docker`
//! group, not as root: its key and credentials reach it through `LoadCredential` (only the
//! service reads them), its data lives in its `StateDirectory`, and the rest of the system is
//! read-only to it. It starts after the network and Docker, and again after a failure.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;

/// The service's name.
pub const SERVICE: &str = "edge-node";

/// Where each installed file goes, under the root.
pub const BINARY: &str = "usr/local/bin/edge-node";
pub const CONFIG_DIR: &str = "etc/edge-node";
pub const DATA_DIR: &str = "var/lib/edge-node";
pub const UNIT: &str = "etc/systemd/system/edge-node.service";

/// What an install needs.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Where the files go: `/`, or a scratch directory.
    pub root: PathBuf,
    /// The engine's API (`https://host:8080`) and an admin token for it.
    pub engine: String,
    pub token: String,
    /// The CA of the engine's API and of the servers (PEM).
    pub ca: PathBuf,
    pub nats: String,
    pub tenant: String,
    pub node: String,
    pub labels: Vec<(String, String)>,
    /// The binary to place: this one.
    pub binary: PathBuf,
}

/// A file `install` wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub path: PathBuf,
    pub mode: u32,
}

fn write(path: &Path, contents: &[u8], mode: u32) -> anyhow::Result<Written> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("making {}", dir.display()))?;
    }
    // Made with its mode, so a secret is never readable by others, not even for a moment.
    let _ = std::fs::remove_file(path);
    let mut file = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(contents).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(Written { path: path.to_owned(), mode })
}

/// The settings file: what `edge-node run` takes when run by hand as root. The unit gives the
/// key, the credentials and the data directory its own way (flags override the file).
pub fn settings(plan: &Plan) -> anyhow::Result<String> {
    let dir = Path::new("/").join(CONFIG_DIR);
    let mut table = toml::Table::new();
    let text = |s: &str| toml::Value::String(s.to_owned());
    table.insert("nats".into(), text(&plan.nats));
    table.insert("tenant".into(), text(&plan.tenant));
    table.insert("node".into(), text(&plan.node));
    table.insert("ca".into(), text(&dir.join("ca.pem").display().to_string()));
    table.insert("creds".into(), text(&dir.join("node.creds").display().to_string()));
    table.insert("key".into(), text(&dir.join("node.nk").display().to_string()));
    table.insert("data-dir".into(), text(&Path::new("/").join(DATA_DIR).display().to_string()));
    let labels: toml::Table = plan.labels.iter().map(|(k, v)| (k.clone(), text(v))).collect();
    table.insert("label".into(), toml::Value::Table(labels));
    Ok(toml::to_string(&table)?)
}

/// The systemd unit.
pub fn unit() -> String {
    format!(
        "[Unit]
Description=edge-node: runs this machine's deployments on Docker and reports to the engine
Documentation=https://127.0.0.1/edge-node
After=network-online.target docker.service
Wants=network-online.target
Requires=docker.service

[Service]
Type=exec
ExecStart=/{BINARY} --config /{CONFIG_DIR}/config.toml run --creds ${{CREDENTIALS_DIRECTORY}}/node.creds --key ${{CREDENTIALS_DIRECTORY}}/node.nk --data-dir ${{STATE_DIRECTORY}}
Restart=on-failure
RestartSec=5
# Not root: a user of its own, in the group that may use the Docker socket.
DynamicUser=yes
SupplementaryGroups=docker
LoadCredential=node.creds:/{CONFIG_DIR}/node.creds
LoadCredential=node.nk:/{CONFIG_DIR}/node.nk
StateDirectory={SERVICE}
StateDirectoryMode=0700
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectControlGroups=yes
RestrictSUIDSGID=yes
LockPersonality=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
CapabilityBoundingSet=
UMask=0077

[Install]
WantedBy=multi-user.target
"
    )
}

/// Installs the node as `plan` says; the files written, in order.
pub async fn install(plan: &Plan) -> anyhow::Result<Vec<Written>> {
    let root = &plan.root;
    let config = root.join(CONFIG_DIR);
    if config.join("config.toml").exists() {
        anyhow::bail!("an edge node is installed under {} already: uninstall it first", root.display());
    }
    let mut written = Vec::new();

    let binary = std::fs::read(&plan.binary).with_context(|| format!("reading {}", plan.binary.display()))?;
    written.push(write(&root.join(BINARY), &binary, 0o755)?);
    let ca = std::fs::read(&plan.ca).with_context(|| format!("reading the CA {}", plan.ca.display()))?;
    written.push(write(&config.join("ca.pem"), &ca, 0o644)?);

    // The key is made here and only its public half leaves; both files are written once the
    // engine has enrolled it, so a refused enrollment leaves no key without credentials.
    let key = nkeys::KeyPair::new_user();
    let seed = key.seed().map_err(|e| anyhow::anyhow!("a new key has no seed: {e}"))?;
    let creds = enroll(plan, &key.public_key()).await?;
    written.push(write(&config.join("node.nk"), format!("{seed}\n").as_bytes(), 0o600)?);
    written.push(write(&config.join("node.creds"), creds.as_bytes(), 0o600)?);

    written.push(write(&config.join("config.toml"), settings(plan)?.as_bytes(), 0o644)?);
    written.push(write(&root.join(UNIT), unit().as_bytes(), 0o644)?);
    let data = root.join(DATA_DIR);
    std::fs::create_dir_all(&data).with_context(|| format!("making {}", data.display()))?;
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700))?;
    Ok(written)
}

/// Enrolls `public_key` as the plan's node: the credentials the engine answers.
async fn enroll(plan: &Plan, public_key: &str) -> anyhow::Result<String> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(&plan.ca)
        .with_context(|| format!("reading the CA {}", plan.ca.display()))?
    {
        roots.add(cert.with_context(|| format!("reading {}", plan.ca.display()))?)?;
    }
    let tls =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
    let labels: serde_json::Map<String, serde_json::Value> =
        plan.labels.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect();
    let url = format!("{}/v1/nodes/{}/enroll", plan.engine.trim_end_matches('/'), plan.node);
    let request = serde_json::json!({ "public_key": public_key, "labels": labels });
    let (status, body) = tokio::time::timeout(ENROLL_TIMEOUT, post(&url, tls, plan, &request))
        .await
        .map_err(|_| anyhow::anyhow!("asking {url}: no answer in {} s", ENROLL_TIMEOUT.as_secs()))?
        .with_context(|| format!("asking {url}"))?;
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    if !status.is_success() {
        anyhow::bail!(
            "the engine refused the enrollment ({status}): {}",
            body.get("error").and_then(|e| e.as_str()).unwrap_or("no reason given")
        );
    }
    body.get("creds").and_then(|c| c.as_str()).map(str::to_owned).context("the engine's answer has no credentials")
}

/// How long the enrollment may take, from the connection to the answer.
const ENROLL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Posts `body` as JSON to `url` (https only: the token goes over TLS alone, to the CA's own
/// certificate) with the plan's token and tenant: the answer's status and body.
async fn post(
    url: &str,
    tls: rustls::ClientConfig,
    plan: &Plan,
    body: &serde_json::Value,
) -> anyhow::Result<(hyper::StatusCode, bytes::Bytes)> {
    use http_body_util::BodyExt;
    use hyper::header;
    let uri: hyper::Uri = url.parse().with_context(|| format!("{url} is not a URL"))?;
    if uri.scheme_str() != Some("https") {
        anyhow::bail!("{url}: the engine is asked over https only");
    }
    let authority = uri.authority().context("the URL names no host")?.clone();
    let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_owned();
    let tcp = tokio::net::TcpStream::connect((host.as_str(), authority.port_u16().unwrap_or(443))).await?;
    let name = rustls::pki_types::ServerName::try_from(host)?;
    let stream = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls)).connect(name, tcp).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    let connection = tokio::spawn(connection);
    let request = hyper::Request::post(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header(header::HOST, authority.as_str())
        .header(header::AUTHORIZATION, format!("Bearer {}", plan.token))
        .header("x-tenant", &plan.tenant)
        .header(header::CONTENT_TYPE, "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(serde_json::to_vec(body)?)))?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    connection.abort();
    Ok((status, body))
}

/// Places `binary` as the node installed under `root`, whole (written beside the old one, then
/// moved over it): the service finds one or the other, and its settings, key and data stay.
/// Refused unless a node is installed there and `binary` is an edge node that runs here.
pub fn upgrade(root: &Path, binary: &Path) -> anyhow::Result<(Written, String)> {
    if !root.join(CONFIG_DIR).join("config.toml").exists() {
        anyhow::bail!("no edge node is installed under {}: install it first", root.display());
    }
    let output = std::process::Command::new(binary)
        .arg("--version")
        .output()
        .with_context(|| format!("running {} --version", binary.display()))?;
    let version = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    if !output.status.success() || !version.starts_with("edge-node ") {
        anyhow::bail!("{} is not an edge node that runs here (it says `{version}`)", binary.display());
    }
    let bytes = std::fs::read(binary).with_context(|| format!("reading {}", binary.display()))?;
    let target = root.join(BINARY);
    let aside = target.with_extension("new");
    write(&aside, &bytes, 0o755)?;
    std::fs::rename(&aside, &target).with_context(|| format!("moving the new binary to {}", target.display()))?;
    Ok((Written { path: target, mode: 0o755 }, version))
}

/// Restarts the service on this machine if systemd runs it: whether it did.
pub fn restart_service() -> anyhow::Result<bool> {
    if !Path::new("/run/systemd/system").exists() {
        return Ok(false);
    }
    let status =
        std::process::Command::new("systemctl").args(["try-restart", SERVICE]).status().context("running systemctl")?;
    anyhow::ensure!(status.success(), "systemctl try-restart {SERVICE}: {status}");
    Ok(true)
}

/// The files `install` writes in the settings directory.
const CONFIG_FILES: [&str; 4] = ["ca.pem", "node.nk", "node.creds", "config.toml"];

/// Stops and disables the service on this machine, if systemd runs it.
pub fn stop_service() -> anyhow::Result<()> {
    if !Path::new("/run/systemd/system").exists() {
        return Ok(());
    }
    let status = std::process::Command::new("systemctl")
        .args(["disable", "--now", SERVICE])
        .status()
        .context("running systemctl")?;
    if !status.success() {
        tracing::warn!(%status, "systemctl disable --now {SERVICE}");
    }
    Ok(())
}

/// Removes what `install` placed under `root` (other files in its settings directory stay);
/// the node's data (and so its workloads' state) too with `purge`. The paths removed.
pub fn uninstall(root: &Path, purge: bool) -> anyhow::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    let config = root.join(CONFIG_DIR);
    let files = [root.join(UNIT), root.join(BINARY)].into_iter().chain(CONFIG_FILES.iter().map(|f| config.join(f)));
    for file in files {
        if file.exists() {
            std::fs::remove_file(&file).with_context(|| format!("removing {}", file.display()))?;
            removed.push(file);
        }
    }
    // Gone once empty.
    if std::fs::remove_dir(&config).is_ok() {
        removed.push(config);
    }
    if purge {
        // A DynamicUser's state lives under /var/lib/private, the data directory a link to it.
        for data in [root.join(DATA_DIR), root.join("var/lib/private").join(SERVICE)] {
            match std::fs::symlink_metadata(&data) {
                Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(&data),
                Ok(_) => std::fs::remove_file(&data),
                Err(_) => continue,
            }
            .with_context(|| format!("removing {}", data.display()))?;
            removed.push(data);
        }
    }
    if root == Path::new("/") && Path::new("/run/systemd/system").exists() {
        let _ = std::process::Command::new("systemctl").arg("daemon-reload").status();
    }
    Ok(removed)
}
