//! The catalog: an application, its versions, and their publication.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::aggregate::{event_payload, Aggregate, Ctx};
use crate::compose::{self, ComposeError, Service};
use crate::envelope::DecodeError;
use crate::policy::{Policy, Violation};

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Application {
    pub registered: bool,
    pub name: String,
    /// Keyed by the canonical semver string (without a leading `v`).
    pub versions: BTreeMap<String, Version>,
}

/// A version's parameters (environment variables with their defaults) and named profiles
/// (sets of values for some of them).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Settings {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub parameters: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub profiles: BTreeMap<String, BTreeMap<String, String>>,
    /// Environment variables whose values are secret: each launch gives them as secrets
    /// (sealed, never stored in clear), and no default, profile or override may.
    #[serde(default, skip_serializing_if = "std::collections::BTreeSet::is_empty")]
    pub secrets: std::collections::BTreeSet<String>,
}

impl Settings {
    /// The environment of a launch: the defaults, then the profile's values, then the
    /// overrides. A profile or an override must name what the version declares.
    pub fn resolve(
        &self,
        profile: Option<&str>,
        overrides: &BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, String>, SettingsError> {
        if let Some(name) = overrides.keys().find(|name| self.secrets.contains(*name)) {
            return Err(SettingsError::SecretInOverrides(name.clone()));
        }
        let mut env = self.parameters.clone();
        if let Some(name) = profile {
            let values = self.profiles.get(name).ok_or_else(|| SettingsError::UnknownProfile(name.to_owned()))?;
            env.extend(values.clone());
        }
        for (name, value) in overrides {
            if !self.parameters.contains_key(name) {
                return Err(SettingsError::UnknownParameter(name.clone()));
            }
            env.insert(name.clone(), value.clone());
        }
        Ok(env)
    }

    /// The secrets this version declares that `given` lacks.
    pub fn missing_secret<'a>(&'a self, given: &BTreeMap<String, String>) -> Option<&'a String> {
        self.secrets.iter().find(|name| !given.contains_key(*name))
    }

    fn check(&self) -> Result<(), SettingsError> {
        if let Some(name) = self.parameters.keys().chain(&self.secrets).find(|name| !is_variable_name(name)) {
            return Err(SettingsError::InvalidParameter(name.clone()));
        }
        let valued =
            |name: &String| self.parameters.contains_key(name) || self.profiles.values().any(|p| p.contains_key(name));
        if let Some(name) = self.secrets.iter().find(|name| valued(name)) {
            return Err(SettingsError::SecretWithValue(name.clone()));
        }
        for (profile, values) in &self.profiles {
            if let Some(unknown) = values.keys().find(|k| !self.parameters.contains_key(*k)) {
                return Err(SettingsError::ProfileParameter { profile: profile.clone(), parameter: unknown.clone() });
            }
        }
        Ok(())
    }
}

/// Letters, digits and `_`, not starting with a digit.
pub fn is_variable_name(name: &str) -> bool {
    name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    #[error("parameter `{0}` is not an environment variable name (letters, digits, `_`)")]
    InvalidParameter(String),
    #[error("profile `{profile}` sets `{parameter}`, which is not a parameter of the version")]
    ProfileParameter { profile: String, parameter: String },
    #[error("profile `{0}` does not exist")]
    UnknownProfile(String),
    #[error("`{0}` is not a parameter of the version")]
    UnknownParameter(String),
    #[error("secret `{0}` has a value in the version's parameters or profiles, which the log would keep in clear")]
    SecretWithValue(String),
    #[error("`{0}` is a secret of the version: give it with the launch's secrets, not as an override")]
    SecretInOverrides(String),
    #[error("the version needs the secret `{0}`: give it with the launch's secrets")]
    MissingSecret(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Version {
    pub version: String,
    /// The image of a single-container version; empty for a compose version.
    pub image: String,
    /// The services of a compose version; empty for a single image.
    pub services: Vec<Service>,
    pub settings: Settings,
    pub published_at: Option<DateTime<Utc>>,
    /// The digest of each image's tag when it was published.
    pub digests: BTreeMap<String, String>,
    /// When it was withdrawn: no launch or update takes it from then on.
    pub withdrawn_at: Option<DateTime<Utc>>,
}

impl Application {
    /// The version `text` names, written with or without a leading `v`.
    pub fn version(&self, text: &str) -> Option<&Version> {
        let canonical = canonical_version(text).ok()?;
        self.versions.get(&canonical)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum ApplicationCommand {
    Register {
        name: String,
    },
    /// A version of one image; `policy` is the tenant's, which the image must meet.
    AddVersion {
        version: String,
        image: String,
        settings: Settings,
        policy: Policy,
    },
    /// A version made of the services of a compose file, each meeting the tenant's `policy`.
    AddComposeVersion {
        version: String,
        compose: String,
        settings: Settings,
        policy: Policy,
    },
    /// Publishes a version, its images pinned: `digests` has the digest the registry
    /// resolved each image's tag to when it was published (the engine asks it).
    Publish {
        version: String,
        digests: BTreeMap<String, String>,
    },
    /// Deletes a draft version: a published one is withdrawn instead.
    DeleteVersion {
        version: String,
    },
    /// Withdraws (yanks) a published version: no launch or update may take it from then on;
    /// the deployments that run it go on.
    Withdraw {
        version: String,
        reason: String,
    },
    /// Deletes the application; `live` are its deployments not uninstalled, which the engine
    /// looks up: refused while there is one.
    Delete {
        live: Vec<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApplicationEvent {
    Registered {
        name: String,
    },
    /// Version 2 splits version 1's `image` in two: `repository` and `tag`.
    VersionAdded {
        version: String,
        /// The image without its tag (`127.0.0.1:5000/sample/app`); empty for a compose version.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        repository: String,
        /// The image's tag (`1.0.0`); empty when the reference has none, or a digest.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        tag: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        services: Vec<Service>,
        /// The parameters of a compose version include those its interpolations declare.
        #[serde(default, skip_serializing_if = "is_default")]
        settings: Settings,
    },
    VersionDeleted {
        version: String,
    },
    VersionWithdrawn {
        version: String,
        at: DateTime<Utc>,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        reason: String,
    },
    /// The application is gone: its id may be registered again.
    Deleted {
        at: DateTime<Utc>,
    },
    VersionPublished {
        version: String,
        published_at: DateTime<Utc>,
        /// Each image of the version (as written) and the digest its tag had when published:
        /// nodes pull and run it by digest.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        digests: BTreeMap<String, String>,
    },
}

event_payload!(ApplicationEvent, "application", {
    Registered => "registered",
    VersionAdded => "version_added" @ 2,
    VersionPublished => "version_published",
    VersionDeleted => "version_deleted",
    VersionWithdrawn => "version_withdrawn",
    Deleted => "deleted",
}, upcast = upcast);

/// Lifts a stored application event one version: `version_added` 1 had `image` whole.
fn upcast(event_type: &str, from: u16, mut value: serde_json::Value) -> Result<serde_json::Value, DecodeError> {
    match (event_type, from) {
        ("application.version_added", 1) => {
            if let Some(fields) = value.get_mut("version_added").and_then(|v| v.as_object_mut()) {
                let image = fields.remove("image").and_then(|i| i.as_str().map(str::to_owned)).unwrap_or_default();
                let (repository, tag) = split_image(&image);
                fields.insert("repository".into(), repository.into());
                fields.insert("tag".into(), tag.into());
            }
            Ok(value)
        }
        _ => crate::aggregate::no_upcast(event_type, from, value),
    }
}

/// `repository:tag`, split at the tag's colon (a colon before the last `/` is a registry's
/// port); a digest reference, or one without a tag, stays whole with an empty tag.
pub fn split_image(image: &str) -> (String, String) {
    let (path, last) = image.rsplit_once('/').map_or(("", image), |(path, last)| (path, last));
    match last.rsplit_once(':') {
        Some((name, tag)) if !image.contains('@') => {
            let repository = if image.contains('/') { format!("{path}/{name}") } else { name.to_owned() };
            (repository, tag.to_owned())
        }
        _ => (image.to_owned(), String::new()),
    }
}

/// The image `split_image` split.
pub fn join_image(repository: &str, tag: &str) -> String {
    match tag {
        "" => repository.to_owned(),
        tag => format!("{repository}:{tag}"),
    }
}

impl ApplicationEvent {
    /// A version added, with its image split as the event stores it.
    pub fn version_added(version: &str, image: &str, services: Vec<Service>, settings: Settings) -> ApplicationEvent {
        let (repository, tag) = split_image(image);
        ApplicationEvent::VersionAdded { version: version.to_owned(), repository, tag, services, settings }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplicationRejection {
    #[error("the application is already registered")]
    AlreadyRegistered,
    #[error("the application is not registered")]
    NotRegistered,
    #[error("name must not be empty")]
    EmptyName,
    #[error("version `{version}` is not semver: {reason}")]
    InvalidVersion { version: String, reason: String },
    #[error("version {version} already exists")]
    VersionExists { version: String },
    #[error("image `{image}` is not an image reference: {reason}")]
    InvalidImage { image: String, reason: String },
    #[error("version {version} does not exist")]
    UnknownVersion { version: String },
    #[error("version {version} is already published")]
    AlreadyPublished { version: String },
    #[error("{0}")]
    InvalidSettings(SettingsError),
    #[error("{0}")]
    InvalidCompose(ComposeError),
    #[error("{0}")]
    PolicyDenied(Violation),
    #[error("version {version} is published: withdraw it instead, and the deployments that run it go on")]
    PublishedNotDeleted { version: String },
    #[error("version {version} is not published: delete the draft instead")]
    NotPublished { version: String },
    #[error("version {version} is already withdrawn")]
    AlreadyWithdrawn { version: String },
    #[error("the application has live deployments ({}): uninstall them first", .0.join(", "))]
    LiveDeployments(Vec<String>),
}

impl Aggregate for Application {
    const TYPE: &'static str = "application";
    type Command = ApplicationCommand;
    type Event = ApplicationEvent;
    type Rejection = ApplicationRejection;

    fn decide(&self, command: &ApplicationCommand, ctx: &Ctx) -> Result<Vec<ApplicationEvent>, ApplicationRejection> {
        use ApplicationCommand as C;
        use ApplicationRejection as R;
        match command {
            C::Register { .. } if self.registered => Err(R::AlreadyRegistered),
            C::Register { name } if name.trim().is_empty() => Err(R::EmptyName),
            C::Register { name } => Ok(vec![ApplicationEvent::Registered { name: name.trim().to_owned() }]),
            _ if !self.registered => Err(R::NotRegistered),
            C::AddVersion { version, image, settings, policy } => {
                let version = self.new_version(version)?;
                check_image(image)?;
                policy.check_version(image, &[]).map_err(R::PolicyDenied)?;
                settings.check().map_err(ApplicationRejection::InvalidSettings)?;
                Ok(vec![ApplicationEvent::version_added(&version, image, vec![], settings.clone())])
            }
            C::AddComposeVersion { version, compose, settings, policy } => {
                let version = self.new_version(version)?;
                let compose = compose::parse(compose).map_err(R::InvalidCompose)?;
                for service in &compose.services {
                    check_image(&service.image)?;
                }
                policy.check_version("", &compose.services).map_err(R::PolicyDenied)?;
                // What the file's interpolations declare, unless the settings give another default.
                let mut settings = settings.clone();
                for (name, default) in compose.parameters {
                    settings.parameters.entry(name).or_insert(default);
                }
                // What its files under `/run/secrets` hold: secrets each launch gives.
                settings.secrets.extend(compose.secrets.into_values());
                settings.check().map_err(ApplicationRejection::InvalidSettings)?;
                Ok(vec![ApplicationEvent::version_added(&version, "", compose.services, settings)])
            }
            C::Publish { version, digests } => {
                let version = canonical_version(version)?;
                match self.versions.get(&version) {
                    None => Err(R::UnknownVersion { version }),
                    Some(v) if v.published_at.is_some() => Err(R::AlreadyPublished { version }),
                    Some(v) => {
                        if let Some((image, digest)) = digests.iter().find(|(_, d)| !is_digest(d)) {
                            return Err(R::InvalidImage {
                                image: image.clone(),
                                reason: format!("`{digest}` is not a digest"),
                            });
                        }
                        let images = v.images();
                        let digests = digests
                            .iter()
                            .filter(|(i, _)| images.contains(i))
                            .map(|(i, d)| (i.clone(), d.clone()))
                            .collect();
                        Ok(vec![ApplicationEvent::VersionPublished { version, published_at: ctx.now, digests }])
                    }
                }
            }
            C::DeleteVersion { version } => {
                let version = canonical_version(version)?;
                match self.versions.get(&version) {
                    None => Err(R::UnknownVersion { version }),
                    Some(v) if v.published_at.is_some() => Err(R::PublishedNotDeleted { version }),
                    Some(_) => Ok(vec![ApplicationEvent::VersionDeleted { version }]),
                }
            }
            C::Withdraw { version, reason } => {
                let version = canonical_version(version)?;
                match self.versions.get(&version) {
                    None => Err(R::UnknownVersion { version }),
                    Some(v) if v.published_at.is_none() => Err(R::NotPublished { version }),
                    Some(v) if v.withdrawn_at.is_some() => Err(R::AlreadyWithdrawn { version }),
                    Some(_) => {
                        let reason = reason.trim().to_owned();
                        Ok(vec![ApplicationEvent::VersionWithdrawn { version, at: ctx.now, reason }])
                    }
                }
            }
            C::Delete { live } if !live.is_empty() => Err(R::LiveDeployments(live.clone())),
            C::Delete { .. } => Ok(vec![ApplicationEvent::Deleted { at: ctx.now }]),
        }
    }

    fn evolve(mut self, event: &ApplicationEvent) -> Application {
        match event {
            ApplicationEvent::Registered { name } => {
                self.registered = true;
                self.name = name.clone();
            }
            ApplicationEvent::VersionAdded { version, repository, tag, services, settings } => {
                let entry = Version {
                    version: version.clone(),
                    image: join_image(repository, tag),
                    services: services.clone(),
                    settings: settings.clone(),
                    published_at: None,
                    digests: BTreeMap::new(),
                    withdrawn_at: None,
                };
                self.versions.insert(version.clone(), entry);
            }
            ApplicationEvent::VersionDeleted { version } => {
                self.versions.remove(version);
            }
            ApplicationEvent::VersionWithdrawn { version, at, .. } => {
                if let Some(v) = self.versions.get_mut(version) {
                    v.withdrawn_at = Some(*at);
                }
            }
            ApplicationEvent::Deleted { .. } => self = Application::default(),
            ApplicationEvent::VersionPublished { version, published_at, digests } => {
                if let Some(v) = self.versions.get_mut(version) {
                    v.published_at = Some(*published_at);
                    v.digests = digests.clone();
                }
            }
        }
        self
    }
}

impl Application {
    /// A version that may be added: canonical, and new.
    fn new_version(&self, text: &str) -> Result<String, ApplicationRejection> {
        let version = canonical_version(text)?;
        match self.versions.contains_key(&version) {
            true => Err(ApplicationRejection::VersionExists { version }),
            false => Ok(version),
        }
    }
}

impl Version {
    /// The services of a compose version with the launch's values filled in, each image
    /// pinned to its digest.
    pub fn resolve_services(&self, values: &BTreeMap<String, String>) -> Result<Vec<Service>, ComposeError> {
        self.services.iter().map(|s| s.resolve(values).map(|s| Service { image: self.pin(&s.image), ..s })).collect()
    }

    /// The image of a single-image version, pinned to its digest.
    pub fn pinned_image(&self) -> String {
        self.pin(&self.image)
    }

    /// Every image of the version, as written.
    pub fn images(&self) -> Vec<String> {
        let mut images: Vec<String> = self.services.iter().map(|s| s.image.clone()).collect();
        if !self.image.is_empty() {
            images.push(self.image.clone());
        }
        images
    }

    fn pin(&self, image: &str) -> String {
        match self.digests.get(image) {
            Some(digest) => pin(image, digest),
            None => image.to_owned(),
        }
    }
}

/// `image` (`repo:tag`) pinned to `digest`: `repo:tag@sha256:…`, which Docker pulls and runs
/// by the digest alone, the tag kept for people to read.
pub fn pin(image: &str, digest: &str) -> String {
    format!("{}@{digest}", unpinned(image))
}

/// `image` without its digest, if it has one.
pub fn unpinned(image: &str) -> &str {
    image.split_once('@').map_or(image, |(name, _)| name)
}

/// A name (`registry:port/repo:tag`, no digest) split into its repository and its tag, if it
/// has one: a colon after the last slash is a tag; before it, a registry's port.
pub fn tagged(name: &str) -> (&str, Option<&str>) {
    match name.rsplit_once(':') {
        Some((repository, tag)) if !tag.contains('/') => (repository, Some(tag)),
        _ => (name, None),
    }
}

/// `sha256:` and 64 hex digits.
pub fn is_digest(text: &str) -> bool {
    text.strip_prefix("sha256:").is_some_and(|hex| hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn is_default(settings: &Settings) -> bool {
    *settings == Settings::default()
}

/// Semver, with a leading `v` allowed (`v1.2.3-4`); returns the canonical form without it.
pub fn canonical_version(text: &str) -> Result<String, ApplicationRejection> {
    let trimmed = text.strip_prefix('v').unwrap_or(text);
    semver::Version::parse(trimmed)
        .map(|v| v.to_string())
        .map_err(|e| ApplicationRejection::InvalidVersion { version: text.to_owned(), reason: e.to_string() })
}

/// The checks a reference must pass before a node ever sees it; the node's engine has the
/// last word on whether it exists.
fn check_image(image: &str) -> Result<(), ApplicationRejection> {
    let reason = if image.is_empty() {
        Some("it is empty")
    } else if image.len() > 255 {
        Some("it is longer than 255 characters")
    } else if image.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Some("it contains whitespace")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(ApplicationRejection::InvalidImage { image: image.to_owned(), reason: reason.to_owned() }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{given, now};
    use ApplicationCommand as C;
    use ApplicationEvent as E;
    use ApplicationRejection as R;

    fn registered() -> E {
        E::Registered { name: "Sample".into() }
    }
    fn added(v: &str) -> E {
        E::version_added(v, &format!("127.0.0.1:5000/sample/app:{v}"), vec![], Settings::default())
    }

    fn published_event(v: &str) -> E {
        E::VersionPublished { version: v.into(), published_at: now(), digests: Default::default() }
    }

    #[test]
    fn a_draft_is_deleted_and_a_published_version_is_withdrawn_not_deleted() {
        given::<Application>([registered(), added("1.0.0")])
            .when(C::DeleteVersion { version: "v1.0.0".into() })
            .then([E::VersionDeleted { version: "1.0.0".into() }]);
        given::<Application>([registered(), added("1.0.0"), published_event("1.0.0")])
            .when(C::DeleteVersion { version: "1.0.0".into() })
            .then_rejected(R::PublishedNotDeleted { version: "1.0.0".into() });
        given::<Application>([registered(), added("1.0.0"), published_event("1.0.0")])
            .when(C::Withdraw { version: "1.0.0".into(), reason: " broken ".into() })
            .then([E::VersionWithdrawn { version: "1.0.0".into(), at: now(), reason: "broken".into() }]);
        given::<Application>([registered(), added("1.0.0")])
            .when(C::Withdraw { version: "1.0.0".into(), reason: String::new() })
            .then_rejected(R::NotPublished { version: "1.0.0".into() });
        let withdrawn = E::VersionWithdrawn { version: "1.0.0".into(), at: now(), reason: String::new() };
        given::<Application>([registered(), added("1.0.0"), published_event("1.0.0"), withdrawn])
            .when(C::Withdraw { version: "1.0.0".into(), reason: String::new() })
            .then_rejected(R::AlreadyWithdrawn { version: "1.0.0".into() });
        given::<Application>([registered()])
            .when(C::DeleteVersion { version: "9.9.9".into() })
            .then_rejected(R::UnknownVersion { version: "9.9.9".into() });
    }

    #[test]
    fn an_application_with_live_deployments_is_not_deleted_and_one_deleted_may_be_registered_again() {
        given::<Application>([registered(), added("1.0.0")])
            .when(C::Delete { live: vec!["d1".into()] })
            .then_rejected(R::LiveDeployments(vec!["d1".into()]));
        given::<Application>([registered(), added("1.0.0")])
            .when(C::Delete { live: vec![] })
            .then([E::Deleted { at: now() }]);
        given::<Application>([registered(), added("1.0.0"), E::Deleted { at: now() }])
            .when(C::Register { name: "Sample".into() })
            .then([E::Registered { name: "Sample".into() }]);
    }

    #[test]
    fn register() {
        given::<Application>([])
            .when(C::Register { name: " Sample ".into() })
            .then([E::Registered { name: "Sample".into() }]);
    }

    #[test]
    fn register_twice_is_rejected() {
        given::<Application>([registered()])
            .when(C::Register { name: "Sample".into() })
            .then_rejected(R::AlreadyRegistered);
    }

    #[test]
    fn register_without_a_name_is_rejected() {
        given::<Application>([]).when(C::Register { name: "  ".into() }).then_rejected(R::EmptyName);
    }

    #[test]
    fn add_version_accepts_a_leading_v_and_a_prerelease() {
        given::<Application>([registered()])
            .when(C::AddVersion {
                version: "v1.2.3-4".into(),
                image: "127.0.0.1:5000/sample/app:1.2.3-4".into(),
                settings: Default::default(),
                policy: Default::default(),
            })
            .then([E::version_added("1.2.3-4", "127.0.0.1:5000/sample/app:1.2.3-4", vec![], Default::default())]);
    }

    #[test]
    fn add_version_to_an_unknown_application_is_rejected() {
        given::<Application>([])
            .when(C::AddVersion {
                version: "1.0.0".into(),
                image: "127.0.0.1:5000/x:1".into(),
                settings: Default::default(),
                policy: Default::default(),
            })
            .then_rejected(R::NotRegistered);
    }

    #[test]
    fn add_version_that_is_not_semver_is_rejected() {
        given::<Application>([registered()])
            .when(C::AddVersion {
                version: "one".into(),
                image: "127.0.0.1:5000/x:1".into(),
                settings: Default::default(),
                policy: Default::default(),
            })
            .then_rejected(R::InvalidVersion {
                version: "one".into(),
                reason: "unexpected character 'o' while parsing major version number".into(),
            });
    }

    #[test]
    fn add_version_twice_is_rejected() {
        given::<Application>([registered(), added("1.0.0")])
            .when(C::AddVersion {
                version: "v1.0.0".into(),
                image: "127.0.0.1:5000/x:1".into(),
                settings: Default::default(),
                policy: Default::default(),
            })
            .then_rejected(R::VersionExists { version: "1.0.0".into() });
    }

    #[test]
    fn add_version_with_a_bad_image_is_rejected() {
        given::<Application>([registered()])
            .when(C::AddVersion {
                version: "1.0.0".into(),
                image: "a b".into(),
                settings: Default::default(),
                policy: Default::default(),
            })
            .then_rejected(R::InvalidImage { image: "a b".into(), reason: "it contains whitespace".into() });
        given::<Application>([registered()])
            .when(C::AddVersion {
                version: "1.0.0".into(),
                image: "".into(),
                settings: Default::default(),
                policy: Default::default(),
            })
            .then_rejected(R::InvalidImage { image: "".into(), reason: "it is empty".into() });
    }

    fn settings() -> Settings {
        Settings {
            parameters: [("GREETING".into(), "hello".into()), ("MODE".into(), "prod".into())].into(),
            profiles: [("test".into(), [("MODE".into(), "test".into())].into())].into(),
            secrets: Default::default(),
        }
    }

    #[test]
    fn add_version_with_parameters_and_profiles() {
        let add = C::AddVersion {
            version: "1.0.0".into(),
            image: "127.0.0.1:5000/x:1".into(),
            settings: settings(),
            policy: Default::default(),
        };
        given::<Application>([registered()]).when(add).then([E::version_added(
            "1.0.0",
            "127.0.0.1:5000/x:1",
            vec![],
            settings(),
        )]);
    }

    #[test]
    fn add_version_with_a_profile_setting_an_undeclared_parameter_is_rejected() {
        let mut bad = settings();
        bad.profiles.insert("x".into(), [("COLOR".into(), "red".into())].into());
        given::<Application>([registered()])
            .when(C::AddVersion {
                version: "1.0.0".into(),
                image: "127.0.0.1:5000/x:1".into(),
                settings: bad,
                policy: Default::default(),
            })
            .then_rejected(R::InvalidSettings(SettingsError::ProfileParameter {
                profile: "x".into(),
                parameter: "COLOR".into(),
            }));
    }

    #[test]
    fn add_version_with_a_parameter_that_is_no_variable_name_is_rejected() {
        let bad = Settings { parameters: [("1X".into(), "".into())].into(), ..Settings::default() };
        given::<Application>([registered()])
            .when(C::AddVersion {
                version: "1.0.0".into(),
                image: "127.0.0.1:5000/x:1".into(),
                settings: bad,
                policy: Default::default(),
            })
            .then_rejected(R::InvalidSettings(SettingsError::InvalidParameter("1X".into())));
    }

    #[test]
    fn a_launch_environment_is_defaults_then_profile_then_overrides() {
        let s = settings();
        let overrides = [("GREETING".to_owned(), "hi".to_owned())].into();
        let env = s.resolve(Some("test"), &overrides).unwrap();
        assert_eq!(env, [("GREETING".to_owned(), "hi".to_owned()), ("MODE".to_owned(), "test".to_owned())].into());
        assert_eq!(s.resolve(Some("nope"), &Default::default()), Err(SettingsError::UnknownProfile("nope".into())));
        let unknown = [("COLOR".to_owned(), "red".to_owned())].into();
        assert_eq!(s.resolve(None, &unknown), Err(SettingsError::UnknownParameter("COLOR".into())));
    }

    #[test]
    fn publish() {
        given::<Application>([registered(), added("1.0.0")])
            .when(C::Publish { version: "v1.0.0".into(), digests: Default::default() })
            .then([E::VersionPublished { version: "1.0.0".into(), published_at: now(), digests: Default::default() }]);
    }

    #[test]
    fn publish_twice_is_rejected() {
        given::<Application>([
            registered(),
            added("1.0.0"),
            E::VersionPublished { version: "1.0.0".into(), published_at: now(), digests: Default::default() },
        ])
        .when(C::Publish { version: "1.0.0".into(), digests: Default::default() })
        .then_rejected(R::AlreadyPublished { version: "1.0.0".into() });
    }

    #[test]
    fn publish_an_unknown_version_is_rejected() {
        given::<Application>([registered(), added("1.0.0")])
            .when(C::Publish { version: "2.0.0".into(), digests: Default::default() })
            .then_rejected(R::UnknownVersion { version: "2.0.0".into() });
    }

    #[test]
    fn publish_a_version_that_is_not_semver_is_rejected() {
        given::<Application>([registered(), added("1.0.0")])
            .when(C::Publish { version: "1.0".into(), digests: Default::default() })
            .then_rejected(R::InvalidVersion {
                version: "1.0".into(),
                reason: "unexpected end of input while parsing minor version number".into(),
            });
    }

    #[test]
    fn add_version_with_an_overlong_image_is_rejected() {
        let image = format!("127.0.0.1:5000/{}", "a".repeat(250));
        given::<Application>([registered()])
            .when(C::AddVersion {
                version: "1.0.0".into(),
                image: image.clone(),
                settings: Default::default(),
                policy: Default::default(),
            })
            .then_rejected(R::InvalidImage { image, reason: "it is longer than 255 characters".into() });
    }

    #[test]
    fn publish_on_an_unknown_application_is_rejected() {
        given::<Application>([])
            .when(C::Publish { version: "1.0.0".into(), digests: Default::default() })
            .then_rejected(R::NotRegistered);
    }

    #[test]
    fn add_compose_version_keeps_its_services_and_declares_its_parameters() {
        let compose =
            "services:\n  web:\n    image: 127.0.0.1:5000/web:1\n    environment:\n      LEVEL: ${LEVEL:-info}\n";
        let settings = Settings { parameters: [("LEVEL".into(), "debug".into())].into(), ..Default::default() };
        let add = C::AddComposeVersion {
            version: "1.0.0".into(),
            compose: compose.into(),
            settings: settings.clone(),
            policy: Default::default(),
        };
        let web = Service {
            name: "web".into(),
            image: "127.0.0.1:5000/web:1".into(),
            environment: [("LEVEL".into(), "${LEVEL:-info}".into())].into(),
            ..Service::default()
        };
        // The settings' default wins over the file's.
        given::<Application>([registered()]).when(add).then([E::version_added("1.0.0", "", vec![web], settings)]);
    }

    #[test]
    fn add_compose_version_the_node_cannot_honour_is_rejected_naming_the_key() {
        let compose = "services:\n  web:\n    build: .\n";
        let add = C::AddComposeVersion {
            version: "1.0.0".into(),
            compose: compose.into(),
            settings: Default::default(),
            policy: Default::default(),
        };
        let message = "the edge node pulls images, it does not build them; give `image`".into();
        let error = ComposeError { path: "services.web.build".into(), message };
        given::<Application>([registered()]).when(add).then_rejected(R::InvalidCompose(error));
    }

    #[test]
    fn add_version_with_a_secret_that_has_a_value_is_rejected() {
        for settings in [
            Settings {
                parameters: [("TOKEN".into(), "abc".into())].into(),
                secrets: ["TOKEN".into()].into(),
                ..Settings::default()
            },
            Settings {
                parameters: [("MODE".into(), "".into())].into(),
                profiles: [("p".into(), [("TOKEN".into(), "abc".into())].into())].into(),
                secrets: ["TOKEN".into()].into(),
            },
        ] {
            let add = C::AddVersion {
                version: "1.0.0".into(),
                image: "127.0.0.1:5000/x:1".into(),
                settings,
                policy: Default::default(),
            };
            let refused = given::<Application>([registered()]).when(add).rejection();
            assert!(
                matches!(&refused, R::InvalidSettings(SettingsError::SecretWithValue(n)) if n == "TOKEN"),
                "{refused:?}"
            );
        }
    }

    #[test]
    fn add_version_outside_the_tenants_policy_is_rejected_naming_the_key_and_the_rule() {
        let compose = "services:\n  web:\n    image: 127.0.0.1:5000/a:1\n    volumes: [\"/srv/app/data:/data\"]\n";
        let add = |policy: Policy| C::AddComposeVersion {
            version: "1.0.0".into(),
            compose: compose.into(),
            settings: Default::default(),
            policy,
        };
        let refused = given::<Application>([registered()]).when(add(Policy::default())).rejection();
        let R::PolicyDenied(violation) = refused else { panic!("{refused:?}") };
        assert_eq!(violation.key, "services.web.volumes[0]");
        assert!(violation.message.contains("no host path is allowed"), "{violation}");
        let allowing = Policy { binds: vec!["/srv/app".into()], ..Policy::default() };
        assert_eq!(given::<Application>([registered()]).when(add(allowing)).events().len(), 1);

        let elsewhere = C::AddVersion {
            version: "1.0.0".into(),
            image: "127.0.0.1:5001/x:1".into(),
            settings: Default::default(),
            policy: Default::default(),
        };
        let refused = given::<Application>([registered()]).when(elsewhere).rejection();
        assert!(matches!(&refused, R::PolicyDenied(v) if v.key == "image"), "{refused:?}");
    }

    #[test]
    fn an_image_splits_into_repository_and_tag_and_joins_back() {
        for (image, repository, tag) in [
            ("127.0.0.1:5000/sample/app:1.0.0", "127.0.0.1:5000/sample/app", "1.0.0"),
            ("127.0.0.1:5000/sample/app", "127.0.0.1:5000/sample/app", ""),
            ("app:v2", "app", "v2"),
            ("127.0.0.1:5000/app@sha256:abc", "127.0.0.1:5000/app@sha256:abc", ""),
            ("", "", ""),
        ] {
            assert_eq!(split_image(image), (repository.to_owned(), tag.to_owned()), "{image}");
            assert_eq!(join_image(repository, tag), image);
        }
    }
}
