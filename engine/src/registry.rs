//! Tags resolved to digests through a registry's HTTP API (the OCI distribution API): when a
//! version is published, and again when a forced update asks for what the tags name now.
//! Between those, a node pulls and runs each image by its digest, so that the same version is
//! the same bytes on every node, and a rollback finds its images already there.

use std::time::Duration;

use events::application::{is_digest, unpinned};
use events::policy::registry_of;

/// How long a registry has to answer.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Every manifest type a registry may hold for a tag: an index (several platforms) first.
const MANIFESTS: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json";

/// A client of registries: over HTTPS it trusts the public certificate authorities (Mozilla's,
/// built in).
pub fn client() -> anyhow::Result<reqwest::Client> {
    let roots = rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let tls =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
    Ok(reqwest::Client::builder().use_preconfigured_tls(tls).build()?)
}

/// Whether `host` (`name[:port]`) is this machine: a registry there is asked over plain HTTP.
fn is_loopback(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.split(':').next().unwrap_or_default(),
    };
    name == "localhost" || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("image `{image}` is not in its registry (it answered {status})")]
    NotFound { image: String, status: u16 },
    #[error("the registry of image `{image}` asks for credentials, which the engine does not hold")]
    Unauthorized { image: String },
    #[error("the registry of image `{image}` cannot be reached: {reason}")]
    Unreachable { image: String, reason: String },
    #[error("the registry of image `{image}` answered without a digest")]
    NoDigest { image: String },
}

/// The digest `image`'s tag names now (`latest` when it has none); an image already pinned
/// keeps its digest.
pub async fn resolve(http: &reqwest::Client, image: &str) -> Result<String, ResolveError> {
    if let Some((_, digest)) = image.split_once('@') {
        return Ok(digest.to_owned());
    }
    let registry = registry_of(image);
    let name = unpinned(image);
    let path = name.strip_prefix(&format!("{registry}/")).unwrap_or(name);
    let (repository, tag) = events::application::tagged(path);
    let tag = tag.unwrap_or("latest");
    let repository = match (registry, repository.contains('/')) {
        ("docker.io", false) => format!("library/{repository}"),
        _ => repository.to_owned(),
    };
    let host = if registry == "docker.io" { "registry-1.docker.io" } else { registry };
    let scheme = if is_loopback(host) { "http" } else { "https" };
    let url = format!("{scheme}://{host}/v2/{repository}/manifests/{tag}");
    let unreachable = |reason: String| ResolveError::Unreachable { image: image.to_owned(), reason };
    let answer = http
        .head(&url)
        .header(reqwest::header::ACCEPT, MANIFESTS)
        .timeout(TIMEOUT)
        .send()
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let status = answer.status();
    if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
        return Err(ResolveError::Unauthorized { image: image.to_owned() });
    }
    if status.is_client_error() {
        return Err(ResolveError::NotFound { image: image.to_owned(), status: status.as_u16() });
    }
    if !status.is_success() {
        return Err(unreachable(format!("it answered {status}")));
    }
    let digest = answer.headers().get("docker-content-digest").and_then(|v| v.to_str().ok()).map(str::to_owned);
    digest.filter(|d| is_digest(d)).ok_or_else(|| ResolveError::NoDigest { image: image.to_owned() })
}

/// The digest of each of `images` (as written) its tag names now.
pub async fn resolve_all(
    http: &reqwest::Client,
    images: impl IntoIterator<Item = String>,
) -> Result<std::collections::BTreeMap<String, String>, ResolveError> {
    let mut digests = std::collections::BTreeMap::new();
    for image in images {
        let digest = resolve(http, &image).await?;
        digests.insert(image, digest);
    }
    Ok(digests)
}

#[cfg(test)]
mod tests {
    use super::is_loopback;

    #[test]
    fn only_this_machine_is_asked_over_plain_http() {
        for host in ["127.0.0.1:5000", "localhost:5000", "localhost", "[::1]:5000", "127.1.2.3"] {
            assert!(is_loopback(host), "{host}");
        }
        for host in [
            "localhost.example.com:5000",
            "127.0.0.1.example.com",
            "registry.example.com",
            "[::2]:5000",
            "10.0.0.1:5000",
        ] {
            assert!(!is_loopback(host), "{host}");
        }
    }
}
