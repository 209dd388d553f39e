//! A Margo application description (`margo.yaml`) taken as a compose version: its `compose`
//! deployment profile's components, each with the compose file of its package, merged into one
//! compose file; its parameters, where they target a compose component (`ENV.<variable>`),
//! the version's parameters (by variable, with their default values) and each targeted
//! service's environment; its required resources (`cpu.cores`, `memory`) each service's limits
//! where the compose file sets none. What cannot be honoured is refused naming the attribute.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_yaml::{Mapping, Value};

/// What a description gives: a version's number, compose file and parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescribedVersion {
    pub version: String,
    pub compose: String,
    pub parameters: BTreeMap<String, String>,
}

/// Why a description cannot be taken: the attribute, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct DescriptionRejection {
    pub field: String,
    pub message: String,
}

fn refuse(field: impl Into<String>, message: impl Into<String>) -> DescriptionRejection {
    DescriptionRejection { field: field.into(), message: message.into() }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Description {
    #[allow(dead_code)]
    api_version: String,
    kind: String,
    metadata: Metadata,
    deployment_profiles: Vec<Profile>,
    #[serde(default)]
    parameters: BTreeMap<String, Parameter>,
}

#[derive(Deserialize)]
struct Metadata {
    id: String,
    version: Value,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Profile {
    #[serde(rename = "type")]
    kind: String,
    components: Vec<Component>,
    #[serde(default)]
    required_resources: Option<Resources>,
}

#[derive(Deserialize)]
struct Component {
    name: String,
}

#[derive(Deserialize)]
struct Resources {
    #[serde(default)]
    cpu: Option<Cpu>,
    #[serde(default)]
    memory: Option<String>,
}

#[derive(Deserialize)]
struct Cpu {
    cores: f64,
}

#[derive(Deserialize)]
struct Parameter {
    #[serde(default)]
    value: Option<Value>,
    targets: Vec<Target>,
}

#[derive(Deserialize)]
struct Target {
    pointer: String,
    components: Vec<String>,
}

/// Reads `description` (YAML text) for application `application`, with the compose file of
/// each compose component's package in `packages`, by component name.
pub fn read(
    application: &str,
    description: &str,
    packages: &BTreeMap<String, String>,
) -> Result<DescribedVersion, DescriptionRejection> {
    let description: Description =
        serde_yaml::from_str(description).map_err(|e| refuse("description", e.to_string()))?;
    if description.kind != "ApplicationDescription" {
        return Err(refuse("kind", format!("`{}` is not `ApplicationDescription`", description.kind)));
    }
    if description.metadata.id != application {
        let message = format!("`{}` is not the application `{application}`", description.metadata.id);
        return Err(refuse("metadata.id", message));
    }
    let version = match &description.metadata.version {
        Value::String(text) => text.clone(),
        Value::Number(number) => number.to_string(),
        _ => return Err(refuse("metadata.version", "give the version as text")),
    };
    for (i, profile) in description.deployment_profiles.iter().enumerate() {
        if !["compose", "helm.v3"].contains(&profile.kind.as_str()) {
            let message = format!("`{}` is neither `compose` nor `helm.v3`", profile.kind);
            return Err(refuse(format!("deploymentProfiles[{i}].type"), message));
        }
    }
    let Some(profile) = description.deployment_profiles.iter().find(|p| p.kind == "compose") else {
        let message = "no `compose` profile: this engine runs compose, not Helm";
        return Err(refuse("deploymentProfiles", message));
    };
    let known: Vec<&str> =
        description.deployment_profiles.iter().flat_map(|p| p.components.iter().map(|c| c.name.as_str())).collect();
    let composed: Vec<&str> = profile.components.iter().map(|c| c.name.as_str()).collect();

    // Each compose component's environment, by the parameters that target it.
    let mut parameters = BTreeMap::new();
    let mut environment: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (name, parameter) in &description.parameters {
        let field = format!("parameters.{name}.targets");
        for target in &parameter.targets {
            if let Some(unknown) = target.components.iter().find(|c| !known.contains(&c.as_str())) {
                return Err(refuse(field, format!("component `{unknown}` is in no deployment profile")));
            }
            let ours: Vec<&str> =
                target.components.iter().map(String::as_str).filter(|c| composed.contains(c)).collect();
            if ours.is_empty() {
                continue;
            }
            let variable = target.pointer.strip_prefix("ENV.").unwrap_or("");
            if !is_variable(variable) {
                let message = format!("`{}`: a compose target's pointer is `ENV.<variable>`", target.pointer);
                return Err(refuse(field, message));
            }
            parameters.insert(variable.to_owned(), parameter.value.as_ref().map(text_of).unwrap_or_default());
            for component in ours {
                environment.entry(component).or_default().push(variable.to_owned());
            }
        }
    }

    let mut services = Mapping::new();
    let mut volumes = Mapping::new();
    for component in &profile.components {
        let field = format!("packages.{}", component.name);
        let Some(text) = packages.get(&component.name) else {
            return Err(refuse(field, format!("the compose file of component `{}` is missing", component.name)));
        };
        let file: Mapping = serde_yaml::from_str(text).map_err(|e| refuse(field.clone(), e.to_string()))?;
        let Some(Value::Mapping(theirs)) = file.get("services") else {
            return Err(refuse(field, "a compose file with `services`"));
        };
        for (service, spec) in theirs {
            let Value::Mapping(mut spec) = spec.clone() else {
                return Err(refuse(field, format!("service {service:?} is not a mapping")));
            };
            for variable in environment.get(component.name.as_str()).into_iter().flatten() {
                add_variable(&mut spec, variable).map_err(|message| refuse(field.clone(), message))?;
            }
            if let Some(resources) = &profile.required_resources {
                limit(&mut spec, resources)
                    .map_err(|message| refuse("deploymentProfiles.requiredResources", message))?;
            }
            if services.insert(service.clone(), Value::Mapping(spec)).is_some() {
                return Err(refuse(field, format!("service {service:?} is in another component too")));
            }
        }
        if let Some(Value::Mapping(theirs)) = file.get("volumes") {
            volumes.extend(theirs.clone());
        }
    }
    let mut compose = Mapping::new();
    compose.insert("services".into(), Value::Mapping(services));
    if !volumes.is_empty() {
        compose.insert("volumes".into(), Value::Mapping(volumes));
    }
    let compose = serde_yaml::to_string(&compose).map_err(|e| refuse("packages", e.to_string()))?;
    Ok(DescribedVersion { version, compose, parameters })
}

fn is_variable(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn text_of(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Null => String::new(),
        other => serde_yaml::to_string(other).unwrap_or_default().trim_end().to_owned(),
    }
}

/// Sets `variable` in a service's environment to the parameter of that name, unless the
/// compose file sets it already.
fn add_variable(spec: &mut Mapping, variable: &str) -> Result<(), String> {
    let reference = format!("${{{variable}}}");
    match spec.get_mut("environment") {
        None => {
            let mut environment = Mapping::new();
            environment.insert(variable.into(), reference.into());
            spec.insert("environment".into(), Value::Mapping(environment));
        }
        Some(Value::Mapping(environment)) => {
            if !environment.contains_key(variable) {
                environment.insert(variable.into(), reference.into());
            }
        }
        Some(Value::Sequence(environment)) => {
            let set = environment
                .iter()
                .any(|e| e.as_str().is_some_and(|e| e.split_once('=').map_or(e, |(name, _)| name) == variable));
            if !set {
                environment.push(format!("{variable}={reference}").into());
            }
        }
        Some(_) => return Err("`environment` is neither a mapping nor a list".to_owned()),
    }
    Ok(())
}

/// Gives a service the required resources as limits, where it sets none.
fn limit(spec: &mut Mapping, resources: &Resources) -> Result<(), String> {
    let limited = spec.contains_key("deploy");
    if let Some(cpu) = &resources.cpu {
        if !(cpu.cores.is_finite() && cpu.cores > 0.0) {
            return Err(format!("cpu.cores: {} is not a number of cores", cpu.cores));
        }
        if !limited && !spec.contains_key("cpus") {
            spec.insert("cpus".into(), cpu.cores.to_string().into());
        }
    }
    if let Some(memory) = &resources.memory {
        let size = [("Ki", "k"), ("Mi", "m"), ("Gi", "g")]
            .iter()
            .find_map(|(unit, ours)| {
                memory
                    .strip_suffix(unit)
                    .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                    .map(|n| format!("{n}{ours}"))
            })
            .ok_or_else(|| format!("memory: `{memory}` is not a number and Ki, Mi or Gi"))?;
        if !limited && !spec.contains_key("mem_limit") {
            spec.insert("mem_limit".into(), size.into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DESCRIPTION: &str = r#"
apiVersion: margo.org/v1-alpha1
kind: ApplicationDescription
metadata:
  id: digitron
  name: Digitron orchestrator
  version: 1.2.1
  catalog:
    organization:
      - name: Northstar
deploymentProfiles:
  - type: helm.v3
    id: digitron-helm
    components:
      - name: digitron-chart
        properties:
          repository: oci://127.0.0.1:5000/charts/digitron
          revision: 1.0.9
  - type: compose
    id: digitron-compose
    components:
      - name: digitron-docker
        properties:
          packageLocation: https://127.0.0.1/digitron.tar.gz
    requiredResources:
      cpu:
        cores: 0.5
      memory: 256Mi
parameters:
  pollFrequency:
    value: 30
    targets:
      - pointer: settings.pollFrequency
        components: ["digitron-chart"]
      - pointer: ENV.POLL_FREQUENCY
        components: ["digitron-docker"]
  siteId:
    targets:
      - pointer: ENV.SITE_ID
        components: ["digitron-docker"]
"#;

    const COMPOSE: &str =
        "services:\n  web:\n    image: 127.0.0.1:5000/sample/app:1.0.0\n    environment:\n      MODE: fast\n";

    fn packages() -> BTreeMap<String, String> {
        [("digitron-docker".to_owned(), COMPOSE.to_owned())].into()
    }

    #[test]
    fn a_compose_profile_becomes_a_compose_version_with_its_parameters_and_limits() {
        let version = read("digitron", DESCRIPTION, &packages()).unwrap();
        assert_eq!(version.version, "1.2.1");
        let expected = [("POLL_FREQUENCY".to_owned(), "30".to_owned()), ("SITE_ID".to_owned(), String::new())];
        assert_eq!(version.parameters, expected.into());
        let compose = crate::compose::parse(&version.compose).expect("our compose parser takes it");
        let web = &compose.services[0];
        assert_eq!(web.environment.get("POLL_FREQUENCY").map(String::as_str), Some("${POLL_FREQUENCY}"));
        assert_eq!(web.environment.get("MODE").map(String::as_str), Some("fast"));
        assert_eq!(web.limits.memory, Some(256 * 1024 * 1024));
        assert_eq!(web.limits.nano_cpus, Some(500_000_000));
    }

    #[test]
    fn what_cannot_be_honoured_is_refused_naming_the_attribute() {
        let helm_only = DESCRIPTION.replace("type: compose", "type: helm.v3");
        let unknown_target =
            DESCRIPTION.replace("components: [\"digitron-docker\"]\n  siteId", "components: [\"nowhere\"]\n  siteId");
        let not_env = DESCRIPTION.replace("ENV.SITE_ID", "site.id");
        let other_kind = DESCRIPTION.replace("kind: ApplicationDescription", "kind: Application");
        let odd_type = DESCRIPTION.replace("type: helm.v3", "type: kustomize");
        let cases = [
            (helm_only.as_str(), packages(), "deploymentProfiles"),
            (unknown_target.as_str(), packages(), "parameters.pollFrequency.targets"),
            (not_env.as_str(), packages(), "parameters.siteId.targets"),
            (other_kind.as_str(), packages(), "kind"),
            (odd_type.as_str(), packages(), "deploymentProfiles[0].type"),
            (DESCRIPTION, BTreeMap::new(), "packages.digitron-docker"),
            ("{", packages(), "description"),
        ];
        for (description, packages, field) in cases {
            let refused = read("digitron", description, &packages).unwrap_err();
            assert_eq!(refused.field, field, "{refused}");
        }
        assert_eq!(read("other", DESCRIPTION, &packages()).unwrap_err().field, "metadata.id");
    }

    proptest::proptest! {
        /// What a vendor sends may be anything: it is read or refused, never a panic.
        #[test]
        fn any_description_or_package_is_read_or_refused(
            at in 0..DESCRIPTION.len(),
            cut in 0..40usize,
            insert in ".{0,12}",
            package in ".{0,120}",
        ) {
            let mut description = DESCRIPTION.to_owned();
            let at = (0..=at).rev().find(|i| description.is_char_boundary(*i)).unwrap_or(0);
            let end = (at..=at.saturating_add(cut).min(description.len())).rev().find(|i| description.is_char_boundary(*i)).unwrap_or(at);
            description.replace_range(at..end, &insert);
            let packages = [("digitron-docker".to_owned(), package)].into();
            let _ = read("digitron", &description, &packages);
        }
    }
}
