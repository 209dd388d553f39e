//! Margo's Workload Management API 1.0.0, the parts that are data: a device's deployment status
//! (`DeploymentStatusManifest`) read and checked, its states mapped onto this project's status
//! model both ways; and the desired state manifest a device polls (`UnsignedAppStateManifest`),
//! each `ApplicationDeployment` referenced by the digest of its exact bytes.
//!
//! The overall state MUST be the most severe of the components' states. The specification
//! writes the precedence `failed > removing > installing > pending > removing > installed`,
//! naming `removing` twice and `removed` not at all; it is read here as
//! `failed > removing > installing > pending > removed > installed`.

use serde::{Deserialize, Serialize};

use crate::status::{Failure, Status};

pub mod description;

/// A Margo deployment state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MargoState {
    Pending,
    Installing,
    Installed,
    Removing,
    Removed,
    Failed,
}

impl MargoState {
    pub const ALL: [MargoState; 6] = [
        MargoState::Pending,
        MargoState::Installing,
        MargoState::Installed,
        MargoState::Removing,
        MargoState::Removed,
        MargoState::Failed,
    ];

    /// How severe the state is: the overall state is the component state with the highest.
    pub fn severity(self) -> u8 {
        match self {
            MargoState::Installed => 0,
            MargoState::Removed => 1,
            MargoState::Pending => 2,
            MargoState::Installing => 3,
            MargoState::Removing => 4,
            MargoState::Failed => 5,
        }
    }

    /// The status it is in this project's model.
    pub fn status(self) -> Status {
        match self {
            MargoState::Pending => Status::Received,
            MargoState::Installing => Status::Deploying,
            MargoState::Installed => Status::Running,
            MargoState::Removing => Status::Removing,
            MargoState::Removed => Status::Removed,
            MargoState::Failed => Status::Failed,
        }
    }

    /// The Margo state a status of this project's model is, for a Margo device's view.
    pub fn of(status: Status) -> MargoState {
        use Status as S;
        match status {
            S::PendingDeploy | S::PendingStart | S::PendingStop | S::PendingApply | S::Received | S::Processing => {
                MargoState::Pending
            }
            S::PendingRemove | S::Removing => MargoState::Removing,
            S::Downloading | S::Ready | S::Staged | S::Deploying | S::Starting => MargoState::Installing,
            // Margo has no stopped state: what is stopped is installed.
            S::Running | S::Stopping | S::Stopped => MargoState::Installed,
            S::Removed => MargoState::Removed,
            S::Failed => MargoState::Failed,
        }
    }
}

/// An error as Margo reports it: a code, where it came from (the device, the deployment or a
/// component), and a message.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MargoError {
    pub code: String,
    pub source: String,
    pub message: String,
}

impl MargoError {
    /// None for the empty error a device may send beside a state that is not failed.
    fn given(error: Option<&MargoError>) -> Option<&MargoError> {
        error.filter(|e| !(e.code.is_empty() && e.source.is_empty() && e.message.is_empty()))
    }

    /// The failure it is in this project's model: the code keeps where it came from.
    pub fn failure(&self) -> Failure {
        let code = match self.source.is_empty() {
            true => format!("margo:{}", self.code),
            false => format!("margo:{}:{}", self.source, self.code),
        };
        Failure { code, message: self.message.clone() }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverallStatus {
    pub state: MargoState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<MargoError>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentStatus {
    pub name: String,
    pub state: MargoState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<MargoError>,
}

/// The kind a status report declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StatusKind {
    DeploymentStatusManifest,
}

/// `POST /api/v1/clients/{clientId}/deployments/{deploymentId}/status`: a device's report of
/// one deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeploymentStatus {
    pub api_version: String,
    pub kind: StatusKind,
    pub deployment_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    pub status: OverallStatus,
    pub components: Vec<ComponentStatus>,
}

/// Why a report that is well-formed JSON cannot be taken: Margo's 422.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatusRejection {
    #[error("deploymentId `{body}` is not the deployment of the route, `{route}`")]
    OtherDeployment { route: String, body: String },
    #[error("component `{0}` is not a component of the deployment")]
    UnknownComponent(String),
    #[error("component `{0}` is reported more than once")]
    DuplicateComponent(String),
    #[error("component `{0}` of the deployment is missing: each has one entry")]
    MissingComponent(String),
    #[error("the overall state is {reported:?}, but the most severe of the components' is {expected:?}")]
    OverallNotMostSevere { reported: MargoState, expected: MargoState },
    #[error("{at} is failed without an error")]
    FailedWithoutError { at: String },
}

impl StatusRejection {
    /// The attribute of the report it is about.
    pub fn field(&self) -> &'static str {
        match self {
            StatusRejection::OtherDeployment { .. } => "deploymentId",
            StatusRejection::OverallNotMostSevere { .. } => "status.state",
            StatusRejection::FailedWithoutError { at } if at == "status" => "status.error",
            _ => "components",
        }
    }
}

/// What a checked report says, in this project's model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reported {
    pub status: Status,
    pub error: Option<Failure>,
    /// Each component's status and error, by name.
    pub components: Vec<(String, Status, Option<Failure>)>,
}

/// The most severe of `states`; `installed` for none.
pub fn most_severe(states: impl IntoIterator<Item = MargoState>) -> MargoState {
    states.into_iter().max_by_key(|s| s.severity()).unwrap_or(MargoState::Installed)
}

impl DeploymentStatus {
    /// Checks the report against the route's deployment and the components its manifest
    /// names, and says it in this project's model.
    pub fn check(&self, deployment: &str, components: &[String]) -> Result<Reported, StatusRejection> {
        if self.deployment_id != deployment {
            return Err(StatusRejection::OtherDeployment {
                route: deployment.to_owned(),
                body: self.deployment_id.clone(),
            });
        }
        let mut seen = std::collections::BTreeSet::new();
        for c in &self.components {
            if !components.contains(&c.name) {
                return Err(StatusRejection::UnknownComponent(c.name.clone()));
            }
            if !seen.insert(c.name.as_str()) {
                return Err(StatusRejection::DuplicateComponent(c.name.clone()));
            }
            if c.state == MargoState::Failed && MargoError::given(c.error.as_ref()).is_none() {
                return Err(StatusRejection::FailedWithoutError { at: format!("component `{}`", c.name) });
            }
        }
        if let Some(missing) = components.iter().find(|name| !seen.contains(name.as_str())) {
            return Err(StatusRejection::MissingComponent(missing.clone()));
        }
        let expected = most_severe(self.components.iter().map(|c| c.state));
        if self.status.state != expected {
            return Err(StatusRejection::OverallNotMostSevere { reported: self.status.state, expected });
        }
        let overall_error = MargoError::given(self.status.error.as_ref());
        // A failed deployment names why: its own error, else its first failed component's.
        let first_failed = self.components.iter().find_map(|c| MargoError::given(c.error.as_ref()));
        let error = match self.status.state {
            MargoState::Failed => overall_error.or(first_failed).map(MargoError::failure),
            _ => None,
        };
        if self.status.state == MargoState::Failed && error.is_none() {
            return Err(StatusRejection::FailedWithoutError { at: "status".to_owned() });
        }
        let components = self
            .components
            .iter()
            .map(|c| {
                let error = MargoError::given(c.error.as_ref()).filter(|_| c.state == MargoState::Failed);
                (c.name.clone(), c.state.status(), error.map(MargoError::failure))
            })
            .collect();
        Ok(Reported { status: self.status.state.status(), error, components })
    }
}

/// The media type of the state manifest.
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.margo.manifest.v1+json";
/// The media type of the bundle of every `ApplicationDeployment` of a device.
pub const BUNDLE_MEDIA_TYPE: &str = "application/vnd.margo.bundle.v1+tar+gzip";

/// The digest of `bytes` as Margo writes one: `sha256:` and the hex of the hash.
pub fn digest(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// `GET /api/v1/clients/{clientId}/deployments`: everything a device should run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StateManifest {
    /// Rises with every change, never back: a device refuses an older one.
    pub manifest_version: std::num::NonZeroU64,
    /// Every deployment in one archive; `null` (never absent, never empty) with none.
    pub bundle: Option<BundleRef>,
    pub deployments: Vec<DeploymentRef>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BundleRef {
    pub media_type: String,
    pub digest: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    pub url: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentRef {
    pub deployment_id: String,
    pub digest: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    pub url: String,
}

impl StateManifest {
    /// The manifest of `client` at `version`: each deployment's `ApplicationDeployment` YAML
    /// (its exact bytes) referenced by its digest where the device fetches it, and the bundle
    /// (its digest and size) when there is a deployment.
    pub fn of(
        client: &str,
        version: std::num::NonZeroU64,
        deployments: &[(String, Vec<u8>)],
        bundle: Option<(String, u64)>,
    ) -> StateManifest {
        let deployments: Vec<DeploymentRef> = deployments
            .iter()
            .map(|(id, yaml)| {
                let digest = digest(yaml);
                DeploymentRef {
                    url: format!("/api/v1/clients/{client}/deployments/{id}/{digest}"),
                    deployment_id: id.clone(),
                    size_bytes: u64::try_from(yaml.len()).ok(),
                    digest,
                }
            })
            .collect();
        let bundle = bundle.filter(|_| !deployments.is_empty()).map(|(digest, size)| BundleRef {
            media_type: BUNDLE_MEDIA_TYPE.to_owned(),
            url: format!("/api/v1/clients/{client}/bundles/{digest}"),
            digest,
            size_bytes: Some(size),
        });
        StateManifest { manifest_version: version, bundle, deployments }
    }

    /// The exact bytes served, and the ETag they have: their digest, quoted.
    pub fn served(&self) -> (Vec<u8>, String) {
        let bytes = serde_json::to_vec(self).unwrap_or_default();
        let etag = format!("\"{}\"", digest(&bytes));
        (bytes, etag)
    }
}

/// The `apiVersion` of the documents this engine writes.
pub const API_VERSION: &str = "margo.org/v1-alpha1";

/// The namespace of the UUIDs Margo knows deployments by.
const DEPLOYMENT_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x6d61_7267_6f2d_6465_706c_6f79_6d65_6e74);

/// Margo's id of a deployment (`metadata.annotations.id`, a UUID): the same for the same tenant
/// and deployment, on every device.
pub fn deployment_id(tenant: &str, deployment: &str) -> String {
    uuid::Uuid::new_v5(&DEPLOYMENT_NAMESPACE, format!("{tenant}/{deployment}").as_bytes()).to_string()
}

/// A name as Margo allows it for an application id or a component: lowercase letters, digits
/// and dashes.
pub fn margo_name(name: &str) -> String {
    let name: String = name
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '-') => c,
            _ => '-',
        })
        .take(200)
        .collect();
    if name.is_empty() {
        "app".to_owned()
    } else {
        name
    }
}

/// One deployment as a device fetches it: the `ApplicationDeployment` YAML and the compose
/// package its one component points at, each by the digest of its exact bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// Margo's id of the deployment.
    pub id: String,
    pub yaml: Vec<u8>,
    pub package: Vec<u8>,
}

/// Renders `assigned`, deployment `deployment` of `tenant` on device `node` (client `client`):
/// one `compose` component, named after the application, whose package is a compose file of
/// its services served at `/api/v1/clients/{client}/packages/{digest}`. Its environment is
/// given as the deployment's parameters too, each targeting that component.
pub fn render(
    client: &str,
    tenant: &str,
    node: &str,
    deployment: &str,
    assigned: &crate::projection::margo::Assigned,
) -> Rendered {
    let component = margo_name(&assigned.application);
    let package = compose_package(&component, assigned);
    let id = deployment_id(tenant, deployment);
    let parameters = assigned
        .env
        .iter()
        .map(|(name, value)| {
            let target = Target { pointer: format!("ENV.{name}"), components: vec![component.clone()] };
            (name.clone(), Parameter { value: value.clone(), targets: vec![target] })
        })
        .collect();
    let document = AppDeployment {
        api_version: API_VERSION,
        kind: "ApplicationDeployment",
        metadata: AppMetadata {
            annotations: Annotations { application_id: margo_name(&assigned.application), id: id.clone() },
            name: deployment.to_owned(),
            namespace: tenant.to_owned(),
            device_id: node.to_owned(),
        },
        spec: AppSpec {
            deployment_profile: Profile {
                kind: "compose",
                components: vec![Component {
                    name: component,
                    properties: ComponentProperties {
                        package_location: format!("/api/v1/clients/{client}/packages/{}", digest(&package)),
                        revision: assigned.version.clone(),
                    },
                }],
            },
            parameters,
        },
    };
    let yaml = serde_yaml::to_string(&document).unwrap_or_default().into_bytes();
    Rendered { id, yaml, package }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AppDeployment {
    api_version: &'static str,
    kind: &'static str,
    metadata: AppMetadata,
    spec: AppSpec,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AppMetadata {
    annotations: Annotations,
    name: String,
    namespace: String,
    device_id: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Annotations {
    application_id: String,
    id: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AppSpec {
    deployment_profile: Profile,
    parameters: std::collections::BTreeMap<String, Parameter>,
}

#[derive(Serialize)]
struct Profile {
    #[serde(rename = "type")]
    kind: &'static str,
    components: Vec<Component>,
}

#[derive(Serialize)]
struct Component {
    name: String,
    properties: ComponentProperties,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ComponentProperties {
    package_location: String,
    revision: String,
}

#[derive(Serialize)]
struct Parameter {
    value: String,
    targets: Vec<Target>,
}

#[derive(Serialize)]
struct Target {
    pointer: String,
    components: Vec<String>,
}

/// The compose file of a deployment's services (a single image is one service, named after
/// the component). Secrets are not in it: they are sealed for native nodes alone.
fn compose_package(component: &str, assigned: &crate::projection::margo::Assigned) -> Vec<u8> {
    use std::collections::BTreeMap;
    let services = crate::work::containers(&assigned.image, &assigned.env, &assigned.services);
    let mut volumes = BTreeMap::new();
    let services: BTreeMap<String, ComposeService> = services
        .into_iter()
        .map(|service| {
            for volume in &service.volumes {
                if let Some((source, _)) = volume.split_once(':').filter(|(s, _)| !s.starts_with(['/', '.', '~'])) {
                    volumes.insert(source.to_owned(), BTreeMap::<String, String>::new());
                }
            }
            let name = if service.name.is_empty() { component.to_owned() } else { service.name.clone() };
            let cpus = service.limits.nano_cpus.map(|nano| format!("{:.3}", nano as f64 / 1e9));
            let service = ComposeService {
                image: service.image,
                command: service.command,
                environment: service.environment,
                ports: service.ports,
                volumes: service.volumes,
                restart: service.restart,
                depends_on: service.depends_on,
                mem_limit: service.limits.memory,
                cpus,
                pids_limit: service.limits.pids,
            };
            (name, service)
        })
        .collect();
    let file = ComposeFile { services, volumes };
    serde_yaml::to_string(&file).unwrap_or_default().into_bytes()
}

#[derive(Serialize)]
struct ComposeFile {
    services: std::collections::BTreeMap<String, ComposeService>,
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    volumes: std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>>,
}

#[derive(Serialize)]
struct ComposeService {
    image: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    command: Vec<String>,
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    environment: std::collections::BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    ports: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    volumes: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    restart: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    depends_on: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mem_limit: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cpus: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pids_limit: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example request of the specification's `deployment-status` page, with the
    /// `apiVersion` and `kind` the 1.0.0 OpenAPI document requires.
    const EXAMPLE: &str = r#"{
        "apiVersion": "margo.org/v1-alpha1",
        "kind": "DeploymentStatusManifest",
        "deploymentId": "a3e2f5dc-912e-494f-8395-52cf3769bc06",
        "deviceId": "plant-alfa-zone1-edge01",
        "status": {"state": "pending", "error": {"code": "", "source": "", "message": ""}},
        "components": [
            {"name": "digitron-orchestrator", "state": "pending", "error": {"code": "", "source": "", "message": ""}},
            {"name": "database-services", "state": "pending", "error": {"code": "", "source": "", "message": ""}}
        ]
    }"#;

    const DEPLOYMENT: &str = "a3e2f5dc-912e-494f-8395-52cf3769bc06";

    fn components() -> Vec<String> {
        vec!["digitron-orchestrator".into(), "database-services".into()]
    }

    fn example() -> DeploymentStatus {
        serde_json::from_str(EXAMPLE).unwrap()
    }

    #[test]
    fn a_deployment_renders_as_an_application_deployment_whose_package_is_addressed_by_its_digest() {
        let assigned = crate::projection::margo::Assigned {
            application: "Sample_App".into(),
            version: "1.1.0".into(),
            image: "127.0.0.1:5000/sample/app:1.1.0".into(),
            env: [("GREETING".to_owned(), "hi".to_owned())].into(),
            services: vec![],
            staged: false,
            stopped: false,
            removed: false,
            next: None,
        };
        let rendered = render("c1", "acme", "dev-1", "d1", &assigned);
        assert_eq!(rendered.id, deployment_id("acme", "d1"));
        assert_eq!(render("c1", "acme", "dev-1", "d1", &assigned), rendered, "the same bytes each time");
        let document: serde_yaml::Value = serde_yaml::from_slice(&rendered.yaml).unwrap();
        assert_eq!(document["kind"], "ApplicationDeployment");
        assert_eq!(document["metadata"]["annotations"]["id"].as_str(), Some(rendered.id.as_str()));
        assert_eq!(document["metadata"]["annotations"]["applicationId"], "sample-app");
        assert_eq!(document["metadata"]["deviceId"], "dev-1");
        let profile = &document["spec"]["deploymentProfile"];
        assert_eq!(profile["type"], "compose");
        let component = &profile["components"][0];
        let location = format!("/api/v1/clients/c1/packages/{}", digest(&rendered.package));
        assert_eq!(component["properties"]["packageLocation"].as_str(), Some(location.as_str()));
        let target = &document["spec"]["parameters"]["GREETING"]["targets"][0];
        assert_eq!(target["pointer"], "ENV.GREETING");
        assert_eq!(target["components"][0], component["name"]);
        let compose = crate::compose::parse(std::str::from_utf8(&rendered.package).unwrap()).unwrap();
        assert_eq!(compose.services[0].image, assigned.image);
        assert_eq!(compose.services[0].environment["GREETING"], "hi");
    }

    #[test]
    fn the_specifications_example_reads_and_is_pending_with_no_error() {
        let reported = example().check(DEPLOYMENT, &components()).unwrap();
        assert_eq!((reported.status, reported.error), (Status::Received, None));
        assert_eq!(reported.components.len(), 2);
    }

    #[test]
    fn the_overall_state_is_the_most_severe_by_the_specifications_precedence() {
        use MargoState as M;
        let order = [M::Failed, M::Removing, M::Installing, M::Pending, M::Removed, M::Installed];
        for (i, more) in order.iter().enumerate() {
            for less in order.iter().skip(i) {
                assert_eq!(most_severe([*less, *more]), *more, "{more:?} over {less:?}");
            }
        }
        let mut report = example();
        report.components[0].state = M::Installed;
        report.components[1].state = M::Installing;
        report.status.state = M::Installed;
        let refused = report.check(DEPLOYMENT, &components()).unwrap_err();
        assert_eq!(refused, StatusRejection::OverallNotMostSevere { reported: M::Installed, expected: M::Installing });
        assert_eq!(refused.field(), "status.state");
        report.status.state = M::Installing;
        assert_eq!(report.check(DEPLOYMENT, &components()).unwrap().status, Status::Deploying);
    }

    #[test]
    fn a_failed_component_reaches_the_model_with_its_code_source_and_message() {
        let mut report = example();
        report.components[1].state = MargoState::Failed;
        report.components[1].error = Some(MargoError {
            code: "E42".into(),
            source: "database-services".into(),
            message: "the volume is full".into(),
        });
        report.status.state = MargoState::Failed;
        let reported = report.check(DEPLOYMENT, &components()).unwrap();
        let failure = Failure { code: "margo:database-services:E42".into(), message: "the volume is full".into() };
        assert_eq!((reported.status, reported.error.clone()), (Status::Failed, Some(failure.clone())));
        assert_eq!(reported.components[1], ("database-services".into(), Status::Failed, Some(failure)));
        assert_eq!(reported.components[0].2, None, "a pending component carries no error");
    }

    #[test]
    fn a_report_that_does_not_fit_its_deployment_is_refused_naming_why() {
        type Change = fn(&mut DeploymentStatus);
        let cases: [(Change, StatusRejection); 5] = [
            (
                |r| r.deployment_id = "other".into(),
                StatusRejection::OtherDeployment { route: DEPLOYMENT.into(), body: "other".into() },
            ),
            (|r| r.components[0].name = "ghost".into(), StatusRejection::UnknownComponent("ghost".into())),
            (
                |r| r.components[1].name = "digitron-orchestrator".into(),
                StatusRejection::DuplicateComponent("digitron-orchestrator".into()),
            ),
            (
                |r| {
                    r.components.pop();
                },
                StatusRejection::MissingComponent("database-services".into()),
            ),
            (
                |r| {
                    r.components[0].state = MargoState::Failed;
                    r.status.state = MargoState::Failed;
                },
                StatusRejection::FailedWithoutError { at: "component `digitron-orchestrator`".into() },
            ),
        ];
        for (change, expected) in cases {
            let mut report = example();
            change(&mut report);
            assert_eq!(report.check(DEPLOYMENT, &components()).unwrap_err(), expected);
        }
    }

    #[test]
    fn a_malformed_report_does_not_read() {
        let head = r#""apiVersion": "v1", "kind": "DeploymentStatusManifest", "deploymentId": "d""#;
        for text in [
            format!(r#"{{{head}, "status": {{"state": "sleeping"}}, "components": []}}"#),
            format!(r#"{{{head}, "components": []}}"#),
            format!(r#"{{{head}, "status": {{"state": "pending"}}, "components": [], "extra": 1}}"#),
            r#"{"apiVersion": "v1", "kind": "Other", "deploymentId": "d", "status": {"state": "pending"}, "components": []}"#
                .to_owned(),
            r#"{"deploymentId": "d", "status": {"state": "pending"}, "components": []}"#.to_owned(),
        ] {
            assert!(serde_json::from_str::<DeploymentStatus>(&text).is_err(), "{text}");
        }
    }

    #[test]
    fn a_manifest_references_each_deployment_by_the_digest_of_its_exact_bytes() {
        let version = std::num::NonZeroU64::new(7).unwrap();
        let yaml = b"apiVersion: margo.org/v1-alpha1\nkind: ApplicationDeployment\n".to_vec();
        let manifest =
            StateManifest::of("dev-1", version, &[("d1".into(), yaml.clone())], Some(("sha256:ab".into(), 9)));
        let reference = &manifest.deployments[0];
        assert_eq!(reference.digest, digest(&yaml));
        assert!(reference.digest.starts_with("sha256:") && reference.digest.len() == 7 + 64);
        assert_eq!(reference.url, format!("/api/v1/clients/dev-1/deployments/d1/{}", reference.digest));
        assert_eq!(reference.size_bytes, Some(yaml.len() as u64));
        let bundle = manifest.bundle.clone().unwrap();
        assert_eq!(
            (bundle.media_type.as_str(), bundle.url.as_str()),
            (BUNDLE_MEDIA_TYPE, "/api/v1/clients/dev-1/bundles/sha256:ab")
        );
        let json: serde_json::Value = serde_json::from_slice(&manifest.served().0).unwrap();
        assert_eq!(json["manifestVersion"], 7);
        assert_eq!(json["deployments"][0]["deploymentId"], "d1");
        let (bytes, etag) = manifest.served();
        assert_eq!(etag, format!("\"{}\"", digest(&bytes)), "the ETag is the digest of what is served");
    }

    #[test]
    fn a_manifest_with_no_deployment_has_a_null_bundle_never_an_empty_one() {
        let version = std::num::NonZeroU64::MIN;
        let manifest = StateManifest::of("dev-1", version, &[], Some(("sha256:ab".into(), 9)));
        let json: serde_json::Value = serde_json::from_slice(&manifest.served().0).unwrap();
        assert_eq!(json, serde_json::json!({"manifestVersion": 1, "bundle": null, "deployments": []}));
        // A manifest at version 0 does not read: the range is 1 to 2^64-1.
        assert!(serde_json::from_str::<StateManifest>(r#"{"manifestVersion": 0, "bundle": null, "deployments": []}"#)
            .is_err());
    }

    #[test]
    fn every_state_maps_to_a_status_and_back() {
        for state in MargoState::ALL {
            assert_eq!(MargoState::of(state.status()), state, "{state:?}");
        }
        assert_eq!(MargoState::of(Status::Stopped), MargoState::Installed);
        assert_eq!(MargoState::of(Status::Downloading), MargoState::Installing);
    }
}
