//! What a workload may use of an edge host: which host paths it may bind-mount and which
//! registries its images may come from.
//!
//! A tenant has one [`Policy`] (`tenant.policy_set`; by default no bind at all and the local
//! registry alone), checked when a version is added. Each edge node has its own, given when it
//! starts, and checks every container against it before pulling or creating: the node does not
//! take the engine's word for what its host allows. Under either, the paths of
//! [`crate::compose::FORBIDDEN_BINDS`] are never mounted.

use serde::{Deserialize, Serialize};

use crate::compose::{bind_policy, normalize_path, Mount, Service};

/// The registry images come from unless a policy names others.
pub const LOCAL_REGISTRY: &str = "127.0.0.1:5000";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Policy {
    /// Host directories a bind mount may come from (the directory itself, or below it).
    #[serde(default)]
    pub binds: Vec<String>,
    /// Registries images may come from, as `host[:port]` (`docker.io` for Docker Hub).
    #[serde(default = "local_registry")]
    pub registries: Vec<String>,
}

fn local_registry() -> Vec<String> {
    vec![LOCAL_REGISTRY.to_owned()]
}

impl Default for Policy {
    fn default() -> Policy {
        Policy { binds: Vec::new(), registries: local_registry() }
    }
}

/// A refusal under a policy: the key at fault and the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct Violation {
    pub key: String,
    pub message: String,
}

impl Policy {
    /// Refuses a policy that could not be checked against, or that would let everything in.
    pub fn validate(&self) -> Result<(), Violation> {
        for (i, bind) in self.binds.iter().enumerate() {
            let violation = |message: String| Violation { key: format!("binds[{i}]"), message };
            if !bind.starts_with('/') {
                return Err(violation(format!("`{bind}` is not an absolute path")));
            }
            bind_policy(bind).map_err(violation)?;
        }
        for (i, registry) in self.registries.iter().enumerate() {
            let valid = !registry.is_empty()
                && registry.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
            if !valid {
                let message = format!("`{registry}` is not a registry host (`host` or `host:port`)");
                return Err(Violation { key: format!("registries[{i}]"), message });
            }
        }
        Ok(())
    }

    /// Whether host path `source` may be bind-mounted: never one of the forbidden paths, and
    /// only under one of [`Policy::binds`].
    pub fn check_bind(&self, source: &str) -> Result<(), String> {
        bind_policy(source)?;
        let path = normalize_path(source)?;
        let allowed = self.binds.iter().filter_map(|b| normalize_path(b).ok()).any(|allowed| {
            path == allowed || path.strip_prefix(allowed.as_str()).is_some_and(|rest| rest.starts_with('/'))
        });
        if allowed {
            return Ok(());
        }
        Err(match self.binds.as_slice() {
            [] => format!("host path `{source}` may not be mounted: no host path is allowed here"),
            binds => format!("host path `{source}` may not be mounted: it is not under {}", binds.join(", ")),
        })
    }

    /// Whether `image` comes from one of [`Policy::registries`].
    pub fn check_image(&self, image: &str) -> Result<(), String> {
        let registry = registry_of(image);
        if self.registries.iter().any(|r| r.eq_ignore_ascii_case(registry)) {
            return Ok(());
        }
        Err(format!("image `{image}` comes from `{registry}`, which is not one of {}", self.registries.join(", ")))
    }

    /// A version's image (`image`, for a version of one) or services, checked whole.
    pub fn check_version(&self, image: &str, services: &[Service]) -> Result<(), Violation> {
        if !image.is_empty() {
            self.check_image(image).map_err(|message| Violation { key: "image".to_owned(), message })?;
        }
        for service in services {
            let at =
                |key: &str, message: String| Violation { key: format!("services.{}.{key}", service.name), message };
            self.check_image(&service.image).map_err(|m| at("image", m))?;
            for (i, volume) in service.volumes.iter().enumerate() {
                if let Ok(Mount::Bind { source, .. }) = crate::compose::parse_volume(volume) {
                    self.check_bind(&source).map_err(|m| at(&format!("volumes[{i}]"), m))?;
                }
            }
        }
        Ok(())
    }
}

/// The registry an image reference names, as Docker reads it: the part before the first `/`
/// when it looks like a host (it has a `.` or a `:`, or is `localhost`), else Docker Hub.
pub fn registry_of(image: &str) -> &str {
    match image.split_once('/') {
        Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => first,
        _ => "docker.io",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(binds: &[&str], registries: &[&str]) -> Policy {
        Policy {
            binds: binds.iter().map(|b| b.to_string()).collect(),
            registries: registries.iter().map(|r| r.to_string()).collect(),
        }
    }

    #[test]
    fn the_default_allows_the_local_registry_and_no_bind() {
        let default = Policy::default();
        assert_eq!(default.check_image("127.0.0.1:5000/sample/app:1.0.0"), Ok(()));
        // Another registry, even on this machine, is not allowed until a policy names it.
        assert!(default.check_image("127.0.0.1:5001/x/y:1").unwrap_err().contains("comes from `127.0.0.1:5001`"));
        assert!(default.check_image("localhost:5000/x/y:1").is_err());
        assert!(default.check_bind("/srv/data").unwrap_err().contains("no host path is allowed"));
    }

    #[test]
    fn a_bind_must_be_under_an_allowed_path_and_never_a_forbidden_one() {
        let p = policy(&["/srv/apps", "/data/"], &[]);
        for ok in ["/srv/apps", "/srv/apps/x", "/data", "/data/a/b", "/srv/apps/./x"] {
            assert_eq!(p.check_bind(ok), Ok(()), "{ok}");
        }
        for refused in ["/srv/appsx", "/srv", "/srv/apps/../etc", "/opt", "/var/run/docker.sock"] {
            assert!(p.check_bind(refused).is_err(), "{refused}");
        }
        // Allowing a forbidden path allows nothing of it.
        let unwise = policy(&["/var/run"], &[]);
        assert!(unwise.check_bind("/var/run/docker.sock").unwrap_err().contains("never mounted"));
    }

    #[test]
    fn registries_are_read_as_docker_reads_them() {
        assert_eq!(registry_of("busybox"), "docker.io");
        assert_eq!(registry_of("library/busybox:1"), "docker.io");
        assert_eq!(registry_of("localhost/x"), "localhost");
        assert_eq!(registry_of("127.0.0.1:5000/a/b@sha256:00"), "127.0.0.1:5000");
        assert_eq!(registry_of("registry.example.com/a"), "registry.example.com");
    }

    #[test]
    fn a_policy_that_lets_everything_in_or_cannot_be_read_is_refused() {
        assert_eq!(policy(&["/"], &[]).validate().unwrap_err().key, "binds[0]");
        assert_eq!(policy(&["/etc/app"], &[]).validate().unwrap_err().key, "binds[0]");
        assert_eq!(policy(&["srv"], &[]).validate().unwrap_err().key, "binds[0]");
        assert_eq!(policy(&[], &["a b"]).validate().unwrap_err().key, "registries[0]");
        assert_eq!(policy(&["/srv"], &["127.0.0.1:5000", "docker.io"]).validate(), Ok(()));
    }

    #[test]
    fn a_version_is_refused_naming_the_key() {
        let service = Service {
            name: "web".into(),
            image: "127.0.0.1:5000/a:1".into(),
            volumes: vec!["/opt/x:/x".into()],
            ..Default::default()
        };
        let refused = Policy::default().check_version("", &[service]).unwrap_err();
        assert_eq!(refused.key, "services.web.volumes[0]");
        let refused = Policy::default().check_version("127.0.0.1:5001/x:1", &[]).unwrap_err();
        assert_eq!(refused.key, "image");
    }
}
