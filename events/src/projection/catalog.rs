//! The catalog: each application of a tenant, its name and its versions (draft or published),
//! for listings a page at a time. What a version holds in full is the application's own fold.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::application::ApplicationEvent;
use crate::envelope::Envelope;
use crate::projection::{Fact, ModelError, Store};

/// The prefixes of its keys that hold a tenant's: a tenant's deletion clears them.
pub const TENANT_PREFIXES: &[&str] = &["c/"];

/// The key of an application's entry.
pub fn key(tenant: &str, application: &str) -> String {
    format!("c/{tenant}/{application}")
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CatalogEntry {
    pub id: String,
    pub name: String,
    /// Each version, in the order added.
    pub versions: Vec<CatalogVersion>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CatalogVersion {
    pub version: String,
    /// The image of a single-container version; empty for a compose version.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub image: String,
    /// The services of a compose version; none for a single container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published_at: Option<DateTime<Utc>>,
    /// When it was withdrawn: no launch or update takes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub withdrawn_at: Option<DateTime<Utc>>,
}

/// Folds an application's event into its entry.
pub fn fold(store: &mut impl Store, envelope: &Envelope, fact: &Fact) -> Result<(), ModelError> {
    let Fact::Application(event) = fact else { return Ok(()) };
    let key = key(&envelope.tenant, &envelope.aggregate_id);
    if let ApplicationEvent::Deleted { .. } = event {
        store.remove(&key);
        return Ok(());
    }
    let entry = store.get::<CatalogEntry>(&key)?;
    if let Some(entry) = apply(entry, &envelope.aggregate_id, event) {
        store.put(key, entry);
    }
    Ok(())
}

fn apply(entry: Option<CatalogEntry>, id: &str, event: &ApplicationEvent) -> Option<CatalogEntry> {
    match (entry, event) {
        (None, ApplicationEvent::Registered { name }) => {
            Some(CatalogEntry { id: id.to_owned(), name: name.clone(), versions: Vec::new() })
        }
        (Some(mut entry), ApplicationEvent::VersionAdded { version, repository, tag, services, .. }) => {
            let image = match (repository.is_empty(), tag.is_empty()) {
                (true, _) => String::new(),
                (false, true) => repository.clone(),
                (false, false) => format!("{repository}:{tag}"),
            };
            let services = services.iter().map(|s| s.name.clone()).collect();
            let version = version.clone();
            entry.versions.push(CatalogVersion { version, image, services, published_at: None, withdrawn_at: None });
            Some(entry)
        }
        (Some(mut entry), ApplicationEvent::VersionDeleted { version }) => {
            entry.versions.retain(|v| &v.version != version);
            Some(entry)
        }
        (Some(mut entry), ApplicationEvent::VersionWithdrawn { version, at, .. }) => {
            let found = entry.versions.iter_mut().find(|v| &v.version == version)?;
            found.withdrawn_at = Some(*at);
            Some(entry)
        }
        (Some(mut entry), ApplicationEvent::VersionPublished { version, published_at, .. }) => {
            let found = entry.versions.iter_mut().find(|v| &v.version == version)?;
            found.published_at = Some(*published_at);
            Some(entry)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::now;

    #[test]
    fn an_entry_lists_its_versions_as_added_and_marks_the_published() {
        let added = |version: &str| ApplicationEvent::VersionAdded {
            version: version.into(),
            repository: "127.0.0.1:5000/sample/app".into(),
            tag: version.into(),
            services: Vec::new(),
            settings: Default::default(),
        };
        let events = [
            ApplicationEvent::Registered { name: "Sample".into() },
            added("1.0.0"),
            added("1.1.0"),
            ApplicationEvent::VersionPublished {
                version: "1.0.0".into(),
                published_at: now(),
                digests: Default::default(),
            },
        ];
        let entry = events.iter().fold(None, |entry, event| apply(entry.clone(), "sample", event).or(entry));
        let entry = entry.unwrap();
        assert_eq!(entry.name, "Sample");
        let versions: Vec<_> = entry.versions.iter().map(|v| (v.version.as_str(), v.published_at.is_some())).collect();
        assert_eq!(versions, [("1.0.0", true), ("1.1.0", false)]);
        assert_eq!(entry.versions[0].image, "127.0.0.1:5000/sample/app:1.0.0");
    }

    #[test]
    fn a_version_of_an_application_never_registered_is_not_kept() {
        let added = ApplicationEvent::VersionAdded {
            version: "1.0.0".into(),
            repository: String::new(),
            tag: String::new(),
            services: Vec::new(),
            settings: Default::default(),
        };
        assert_eq!(apply(None, "ghost", &added), None);
    }
}
