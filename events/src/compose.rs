//! Multi-container versions: the part of the compose file format the edge node honours.
//!
//! A compose file is read into [`Service`]s once, when its version is added; whatever the node
//! cannot honour is refused there, with the key that says it. Environment values and ports
//! may use `${NAME}`, `${NAME:-default}` or `${NAME-default}`: each such variable becomes a
//! parameter of the version, with its default, so profiles and per-launch overrides set it
//! like any other parameter. [`Service::resolve`] fills them in at launch.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_yaml::Value;

/// One container of a version, as the node runs it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    pub name: String,
    pub image: String,
    /// Replaces the image's command when not empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub environment: BTreeMap<String, String>,
    /// Compose short syntax: `[IP:][HOST:]CONTAINER[/PROTOCOL]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
    /// `VOLUME:TARGET[:ro]` for a volume of the version, `/HOST/PATH:TARGET[:ro]` for a bind.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restart: Option<String>,
    /// Services started before this one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<String>,
    /// What the container may use; the node's defaults where absent.
    #[serde(default, skip_serializing_if = "Limits::is_empty")]
    pub limits: Limits,
    /// Files under `/run/secrets`, by name, and the secret variable each holds.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, String>,
}

/// A container's resource limits (compose `mem_limit`, `cpus`, `pids_limit`, or
/// `deploy.resources.limits`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Bytes of memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<i64>,
    /// Billionths of a CPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nano_cpus: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<i64>,
}

impl Limits {
    pub fn is_empty(&self) -> bool {
        *self == Limits::default()
    }
}

/// What a compose file says: its services, in the file's order of dependencies, and the
/// parameters its interpolations declare, with their defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compose {
    pub services: Vec<Service>,
    pub parameters: BTreeMap<String, String>,
    /// The top-level `secrets`: each name and the variable its value comes from, which the
    /// version declares secret.
    pub secrets: BTreeMap<String, String>,
}

/// What is wrong with a compose file, and where: `path` is the key, as in
/// `services.web.build`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("compose `{path}`: {message}")]
pub struct ComposeError {
    pub path: String,
    pub message: String,
}

fn error(path: impl Into<String>, message: impl Into<String>) -> ComposeError {
    ComposeError { path: path.into(), message: message.into() }
}

const TOP_LEVEL: &[&str] = &["services", "volumes", "secrets", "version", "name"];
const SERVICE_KEYS: &[&str] = &[
    "image",
    "command",
    "environment",
    "ports",
    "volumes",
    "restart",
    "depends_on",
    "mem_limit",
    "cpus",
    "pids_limit",
    "deploy",
    "secrets",
];

/// Why a key the node does not honour is refused, when there is more to say than that.
/// Why `key` is refused where `keys` are the keys honoured: what to do instead, or the
/// nearest honoured key and the list of them.
fn refusal(key: &str, keys: &[&str]) -> String {
    let known = match key {
        "build" => "the edge node pulls images, it does not build them; give `image`",
        "networks" => "the services of a version share one network of their own; remove `networks`",
        "env_file" => "there is no file beside the compose file on the node; use `environment`",
        "container_name" => "the node names the containers, one per deployment and node",
        "configs" => "not carried to the node; use `environment` or a volume",
        "deploy" => "placement and replicas are the engine's (launch on nodes or a label selector); only `deploy.resources.limits` is honoured",
        "extends" | "include" => "the compose file must stand alone",
        _ => "",
    };
    if !known.is_empty() {
        return known.to_owned();
    }
    let nearest = crate::nearest(key, keys, 2).map(|k| format!(": did you mean `{k}`?")).unwrap_or_default();
    format!("the edge node does not honour this key{nearest} (it honours {})", keys.join(", "))
}

fn supported(key: &str, keys: &[&str]) -> bool {
    keys.contains(&key) || key.starts_with("x-")
}

/// Reads a compose file, refusing what the node cannot honour.
pub fn parse(text: &str) -> Result<Compose, ComposeError> {
    let document: Value = serde_yaml::from_str(text).map_err(|e| error("(file)", format!("not YAML: {e}")))?;
    let top = document.as_mapping().ok_or_else(|| error("(file)", "not a mapping of top-level keys"))?;
    for key in top.keys() {
        let key = text_key(key, "(file)")?;
        if !supported(key, TOP_LEVEL) {
            return Err(error(key, refusal(key, TOP_LEVEL)));
        }
    }
    let volumes = declared_volumes(top.get("volumes"))?;
    let secrets = declared_secrets(top.get("secrets"))?;
    let services = top
        .get("services")
        .and_then(Value::as_mapping)
        .filter(|m| !m.is_empty())
        .ok_or_else(|| error("services", "a compose file needs at least one service"))?;
    let mut parsed = Vec::with_capacity(services.len());
    for (name, body) in services {
        let name = text_key(name, "services")?;
        parsed.push(service(name, body, &volumes, &secrets)?);
    }
    check_dependencies(&parsed)?;
    let mut parameters = BTreeMap::new();
    for service in &parsed {
        for (key, value) in &service.environment {
            variables(value, &format!("services.{}.environment.{key}", service.name), &mut parameters)?;
        }
        for (i, port) in service.ports.iter().enumerate() {
            let path = format!("services.{}.ports[{i}]", service.name);
            variables(port, &path, &mut parameters)?;
            parse_port(&interpolate(port, &parameters, &path)?).map_err(|m| error(&path, m))?;
        }
    }
    Ok(Compose { services: in_start_order(parsed), parameters, secrets })
}

/// The top-level `secrets`: each from an environment variable (`environment: NAME`), which
/// each launch gives sealed. A file beside the compose file is not on the node.
fn declared_secrets(value: Option<&Value>) -> Result<BTreeMap<String, String>, ComposeError> {
    let Some(value) = value.filter(|v| !v.is_null()) else { return Ok(BTreeMap::new()) };
    let map = value.as_mapping().ok_or_else(|| error("secrets", "must map secret names to their source"))?;
    let mut secrets = BTreeMap::new();
    for (name, source) in map {
        let name = text_key(name, "secrets")?;
        let path = format!("secrets.{name}");
        if !valid_name(name) {
            return Err(error(&path, "a secret's name is letters, digits, `_`, `.` and `-`"));
        }
        let variable = match source.as_mapping().map(|m| (m.len(), m.get("environment"))) {
            Some((1, Some(Value::String(variable)))) if crate::application::is_variable_name(variable) => variable,
            _ => {
                let message = "give its value as `environment: VARIABLE`, a secret each launch gives sealed \
                    (a `file` beside the compose file is not on the node)";
                return Err(error(&path, message));
            }
        };
        secrets.insert(name.to_owned(), variable.clone());
    }
    Ok(secrets)
}

fn text_key<'a>(key: &'a Value, path: &str) -> Result<&'a str, ComposeError> {
    key.as_str().ok_or_else(|| error(path, format!("key {key:?} is not text")))
}

fn declared_volumes(value: Option<&Value>) -> Result<BTreeSet<String>, ComposeError> {
    let Some(value) = value.filter(|v| !v.is_null()) else { return Ok(BTreeSet::new()) };
    let map = value.as_mapping().ok_or_else(|| error("volumes", "must map volume names to their settings"))?;
    let mut names = BTreeSet::new();
    for (name, settings) in map {
        let name = text_key(name, "volumes")?;
        if settings.as_mapping().is_some_and(|m| !m.is_empty()) || !(settings.is_null() || settings.is_mapping()) {
            return Err(error(format!("volumes.{name}"), "volume options are not honoured; declare it empty"));
        }
        names.insert(name.to_owned());
    }
    Ok(names)
}

fn valid_name(name: &str) -> bool {
    name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn service(
    name: &str,
    body: &Value,
    volumes: &BTreeSet<String>,
    declared: &BTreeMap<String, String>,
) -> Result<Service, ComposeError> {
    let path = format!("services.{name}");
    if !valid_name(name) {
        return Err(error(&path, "a service name is letters, digits, `_`, `.` and `-`"));
    }
    let body = body.as_mapping().ok_or_else(|| error(&path, "must be a mapping"))?;
    for key in body.keys() {
        let key = text_key(key, &path)?;
        if !supported(key, SERVICE_KEYS) {
            return Err(error(format!("{path}.{key}"), refusal(key, SERVICE_KEYS)));
        }
    }
    let at = |key: &str| format!("{path}.{key}");
    let image = match body.get("image") {
        Some(Value::String(image)) if !image.trim().is_empty() => image.trim().to_owned(),
        Some(_) => return Err(error(at("image"), "must be an image reference")),
        None => return Err(error(at("image"), "every service needs an image")),
    };
    let command = match body.get("command") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(line)) => shell_words::split(line).map_err(|e| error(at("command"), e.to_string()))?,
        Some(Value::Sequence(words)) => strings(words, &at("command"))?,
        Some(_) => return Err(error(at("command"), "must be a string or a list of strings")),
    };
    let environment = environment(body.get("environment"), &at("environment"))?;
    let ports = list(body.get("ports"), &at("ports"), "\"HOST:CONTAINER\"")?;
    let service_volumes = list(body.get("volumes"), &at("volumes"), "\"VOLUME:/target\"")?;
    for (i, volume) in service_volumes.iter().enumerate() {
        let path = format!("{path}.volumes[{i}]");
        match parse_volume(volume).map_err(|m| error(&path, m))? {
            Mount::Volume { name, .. } if !volumes.contains(&name) => {
                return Err(error(path, format!("volume `{name}` is not declared under the top-level `volumes`")));
            }
            Mount::Bind { source, .. } => bind_policy(&source).map_err(|m| error(&path, m))?,
            _ => {}
        }
    }
    let restart = match body.get("restart") {
        None | Some(Value::Null) => None,
        Some(Value::String(policy)) => {
            parse_restart(policy).map_err(|m| error(at("restart"), m))?;
            Some(policy.clone())
        }
        Some(_) => return Err(error(at("restart"), "must be no, always, on-failure[:N] or unless-stopped")),
    };
    let depends_on = match body.get("depends_on") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Sequence(names)) => strings(names, &at("depends_on"))?,
        Some(Value::Mapping(conditions)) => {
            let mut names = Vec::new();
            for (dependency, condition) in conditions {
                let dependency = text_key(dependency, &at("depends_on"))?;
                let condition = condition.get("condition").and_then(Value::as_str).unwrap_or("service_started");
                if condition != "service_started" {
                    let path = format!("{path}.depends_on.{dependency}.condition");
                    return Err(error(path, "only `service_started` is honoured"));
                }
                names.push(dependency.to_owned());
            }
            names
        }
        Some(_) => return Err(error(at("depends_on"), "must list service names")),
    };
    let limits = limits(body, &path)?;
    let mut secrets = BTreeMap::new();
    for secret in list(body.get("secrets"), &at("secrets"), "secret names")? {
        let variable = declared.get(&secret).ok_or_else(|| {
            error(at("secrets"), format!("secret `{secret}` is not declared under the top-level `secrets`"))
        })?;
        secrets.insert(secret, variable.clone());
    }
    Ok(Service {
        name: name.to_owned(),
        image,
        command,
        environment,
        ports,
        volumes: service_volumes,
        restart,
        depends_on,
        limits,
        secrets,
    })
}

/// A service's limits: `mem_limit`, `cpus` and `pids_limit`, or the same under
/// `deploy.resources.limits` (`memory`, `cpus`, `pids`), not both.
fn limits(body: &serde_yaml::Mapping, path: &str) -> Result<Limits, ComposeError> {
    let mut given = vec![
        (format!("{path}.mem_limit"), "memory", body.get("mem_limit").cloned()),
        (format!("{path}.cpus"), "cpus", body.get("cpus").cloned()),
        (format!("{path}.pids_limit"), "pids", body.get("pids_limit").cloned()),
    ];
    if let Some(deploy) = body.get("deploy") {
        let only = |value: &Value, at: &str, key: &str| -> Result<Option<Value>, ComposeError> {
            let map = value.as_mapping().ok_or_else(|| error(at, "must be a mapping"))?;
            if let Some(other) = map.keys().filter_map(Value::as_str).find(|k| *k != key) {
                return Err(error(format!("{at}.{other}"), refusal("deploy", SERVICE_KEYS)));
            }
            Ok(map.get(key).cloned())
        };
        let at = format!("{path}.deploy");
        let resources = only(deploy, &at, "resources")?;
        let at = format!("{at}.resources");
        let limits = match &resources {
            Some(resources) => only(resources, &at, "limits")?,
            None => None,
        };
        if let Some(value) = limits.as_ref().filter(|l| !l.is_mapping() && !l.is_null()) {
            return Err(error(
                format!("{at}.limits"),
                format!("must map memory, cpus and pids to limits, not {value:?}"),
            ));
        }
        if let Some(Value::Mapping(limits)) = &limits {
            let at = format!("{at}.limits");
            for (key, value) in limits {
                let key = key.as_str().unwrap_or_default();
                let limit = match key {
                    "memory" => "memory",
                    "cpus" => "cpus",
                    "pids" => "pids",
                    _ => return Err(error(format!("{at}.{key}"), "only memory, cpus and pids are honoured")),
                };
                if given.iter().any(|(_, l, v)| *l == limit && v.is_some()) {
                    return Err(error(format!("{at}.{key}"), "given twice: here and at the service's own key"));
                }
                given.push((format!("{at}.{key}"), limit, Some(value.clone())));
            }
        }
    }
    let mut limits = Limits::default();
    for (at, limit, value) in given {
        let value = match value {
            None | Some(Value::Null) => continue,
            Some(value) => scalar(&value).ok_or_else(|| error(&at, "must be a single value"))?,
        };
        match limit {
            "memory" => limits.memory = Some(parse_size(&value).map_err(|m| error(&at, m))?),
            "cpus" => {
                // Docker takes no less than a hundredth of a CPU; 0 would mean no limit at all.
                let cpus = value.parse::<f64>().ok().filter(|c| c.is_finite() && *c >= 0.01 && *c <= 1024.0);
                let cpus = cpus.ok_or_else(|| error(&at, format!("`{value}` is not a number of CPUs such as 0.5")))?;
                limits.nano_cpus = Some((cpus * 1e9).round() as i64);
            }
            _ => {
                let pids = value.parse::<i64>().ok().filter(|p| *p > 0);
                limits.pids = Some(pids.ok_or_else(|| error(&at, format!("`{value}` is not a positive count")))?);
            }
        }
    }
    Ok(limits)
}

/// Reads a size as compose writes it: `1073741824`, `512k`, `256m`, `1g` (also `kb`, `mb`,
/// `gb`; powers of 1024).
pub fn parse_size(text: &str) -> Result<i64, String> {
    let lower = text.trim().to_ascii_lowercase();
    let digits = lower.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = lower.strip_prefix(digits).unwrap_or_default();
    let factor: i64 = match unit {
        "" | "b" => 1,
        "k" | "kb" => 1 << 10,
        "m" | "mb" => 1 << 20,
        "g" | "gb" => 1 << 30,
        _ => return Err(format!("`{text}` is not a size such as 256m or 1g")),
    };
    digits
        .parse::<i64>()
        .ok()
        .filter(|n| *n > 0)
        .and_then(|n| n.checked_mul(factor))
        .ok_or_else(|| format!("`{text}` is not a size such as 256m or 1g"))
}

fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn strings(values: &[Value], path: &str) -> Result<Vec<String>, ComposeError> {
    values
        .iter()
        .enumerate()
        .map(|(i, v)| scalar(v).ok_or_else(|| error(format!("{path}[{i}]"), "must be a string")))
        .collect()
}

/// A list of short-syntax strings; the long syntax is refused, saying what to write.
fn list(value: Option<&Value>, path: &str, short: &str) -> Result<Vec<String>, ComposeError> {
    match value {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Sequence(items)) => items
            .iter()
            .enumerate()
            .map(|(i, v)| {
                scalar(v)
                    .ok_or_else(|| error(format!("{path}[{i}]"), format!("only the short syntax {short} is honoured")))
            })
            .collect(),
        Some(_) => Err(error(path, "must be a list")),
    }
}

/// `environment` as a mapping or as a list of `NAME=value`. A name without a value becomes
/// `${NAME}`: a parameter the launch may set.
fn environment(value: Option<&Value>, path: &str) -> Result<BTreeMap<String, String>, ComposeError> {
    let mut env = BTreeMap::new();
    let mut add = |name: &str, value: Option<String>| -> Result<(), ComposeError> {
        if !crate::application::is_variable_name(name) {
            return Err(error(format!("{path}.{name}"), "not an environment variable name (letters, digits, `_`)"));
        }
        env.insert(name.to_owned(), value.unwrap_or_else(|| format!("${{{name}}}")));
        Ok(())
    };
    match value {
        None | Some(Value::Null) => {}
        Some(Value::Mapping(map)) => {
            for (name, value) in map {
                let name = text_key(name, path)?;
                if !value.is_null() && scalar(value).is_none() {
                    return Err(error(format!("{path}.{name}"), "must be a string, a number or a boolean"));
                }
                add(name, scalar(value))?;
            }
        }
        Some(Value::Sequence(items)) => {
            for (i, item) in items.iter().enumerate() {
                let item = scalar(item).ok_or_else(|| error(format!("{path}[{i}]"), "must be NAME=value"))?;
                match item.split_once('=') {
                    Some((name, value)) => add(name, Some(value.to_owned()))?,
                    None => add(&item, None)?,
                }
            }
        }
        Some(_) => return Err(error(path, "must be a mapping or a list of NAME=value")),
    }
    Ok(env)
}

fn check_dependencies(services: &[Service]) -> Result<(), ComposeError> {
    let names: BTreeSet<&str> = services.iter().map(|s| s.name.as_str()).collect();
    for service in services {
        for dependency in &service.depends_on {
            if !names.contains(dependency.as_str()) || *dependency == service.name {
                let path = format!("services.{}.depends_on", service.name);
                return Err(error(path, format!("`{dependency}` is not another service of the file")));
            }
        }
    }
    if in_start_order(services.to_vec()).len() < services.len() {
        return Err(error("services", "the services' `depends_on` form a cycle"));
    }
    Ok(())
}

/// The services, each after those it depends on; one in a cycle is left out.
fn in_start_order(mut pending: Vec<Service>) -> Vec<Service> {
    let mut ordered: Vec<Service> = Vec::with_capacity(pending.len());
    loop {
        let ready = pending.iter().position(|s| s.depends_on.iter().all(|d| ordered.iter().any(|o| o.name == *d)));
        match ready {
            Some(i) => ordered.push(pending.remove(i)),
            None => return ordered,
        }
    }
}

/// Every `${NAME}` of `text`, recorded with its default (a later default does not replace an
/// earlier one).
fn variables(text: &str, path: &str, found: &mut BTreeMap<String, String>) -> Result<(), ComposeError> {
    scan(text, path, &mut |name, default| {
        found.entry(name.to_owned()).or_insert_with(|| default.unwrap_or_default().to_owned());
        String::new()
    })
    .map(|_| ())
}

/// `text` with every `${NAME}` replaced by its value, or its default when it has none; `$$`
/// is a single `$`.
pub fn interpolate(text: &str, values: &BTreeMap<String, String>, path: &str) -> Result<String, ComposeError> {
    scan(text, path, &mut |name, default| {
        values.get(name).cloned().or_else(|| default.map(str::to_owned)).unwrap_or_default()
    })
}

fn scan(text: &str, path: &str, value: &mut dyn FnMut(&str, Option<&str>) -> String) -> Result<String, ComposeError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some((before, after)) = rest.split_once('$') {
        out.push_str(before);
        rest = after;
        if let Some(after) = rest.strip_prefix('$') {
            out.push('$');
            rest = after;
        } else if let Some(braced) = rest.strip_prefix('{') {
            let (inner, after) =
                braced.split_once('}').ok_or_else(|| error(path, format!("unclosed `${{` in {text:?}")))?;
            let (name, default) = match inner.find([':', '-', '?', '+']).and_then(|i| inner.split_at_checked(i)) {
                None => (inner, None),
                Some((name, form)) => match form.strip_prefix(":-").or_else(|| form.strip_prefix('-')) {
                    Some(default) => (name, Some(default)),
                    None => {
                        let form: String = form.chars().take(2).collect();
                        let honoured = "use `${NAME:-default}`";
                        return Err(error(path, format!("`${{NAME{form}...}}` is not honoured; {honoured}")));
                    }
                },
            };
            if !crate::application::is_variable_name(name) {
                return Err(error(path, format!("`${{{inner}}}` does not name a variable")));
            }
            out.push_str(&value(name, default));
            rest = after;
        } else {
            let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len());
            let (name, after) = rest.split_at_checked(end).unwrap_or((rest, ""));
            if name.is_empty() || !crate::application::is_variable_name(name) {
                return Err(error(path, format!("a lone `$` in {text:?}; write `$$` for a dollar sign")));
            }
            out.push_str(&value(name, None));
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

impl Service {
    /// The service with the launch's parameter values in its environment and ports.
    pub fn resolve(&self, values: &BTreeMap<String, String>) -> Result<Service, ComposeError> {
        let path = |part: &str| format!("services.{}.{part}", self.name);
        let mut resolved = self.clone();
        for (key, value) in resolved.environment.iter_mut() {
            *value = interpolate(value, values, &path(&format!("environment.{key}")))?;
        }
        for (i, port) in resolved.ports.iter_mut().enumerate() {
            let at = path(&format!("ports[{i}]"));
            *port = interpolate(port, values, &at)?;
            parse_port(port).map_err(|m| error(&at, m))?;
        }
        Ok(resolved)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Udp,
}

/// A published port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    /// The host address it listens on; every address when `None`.
    pub host_ip: Option<String>,
    /// The host port; one the engine picks when `None`.
    pub host_port: Option<u16>,
    pub container_port: u16,
    pub protocol: Protocol,
}

impl Port {
    /// Docker's key for the container side: `80/tcp`.
    pub fn container_key(&self) -> String {
        let protocol = match self.protocol {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        };
        format!("{}/{protocol}", self.container_port)
    }
}

/// Reads `[IP:][HOST:]CONTAINER[/tcp|/udp]`.
pub fn parse_port(text: &str) -> Result<Port, String> {
    let (address, protocol) = match text.rsplit_once('/') {
        Some((address, "tcp")) => (address, Protocol::Tcp),
        Some((address, "udp")) => (address, Protocol::Udp),
        Some((_, other)) => return Err(format!("protocol `{other}` is not tcp or udp")),
        None => (text, Protocol::Tcp),
    };
    let number = |part: &str, what: &str| -> Result<u16, String> {
        if part.contains('-') {
            return Err(format!("port ranges are not honoured: `{part}`"));
        }
        part.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| format!("{what} `{part}` is not a port number"))
    };
    let (host, container) = match address.rsplit_once(':') {
        Some((host, container)) => (Some(host), container),
        None => (None, address),
    };
    let container_port = number(container, "container port")?;
    let (host_ip, host_port) = match host {
        None => (None, None),
        Some(host) => {
            let (ip, port) = match host.strip_prefix('[') {
                Some(v6) => {
                    let (ip, port) = v6.split_once("]:").ok_or_else(|| format!("`{host}` is not [IPv6]:PORT"))?;
                    (Some(ip), port)
                }
                None => match host.rsplit_once(':') {
                    Some((ip, port)) => (Some(ip), port),
                    None => (None, host),
                },
            };
            if let Some(ip) = ip.filter(|ip| ip.parse::<std::net::IpAddr>().is_err()) {
                return Err(format!("`{ip}` is not an IP address"));
            }
            let host_port = if port.is_empty() { None } else { Some(number(port, "host port")?) };
            (ip.map(str::to_owned), host_port)
        }
    };
    Ok(Port { host_ip, host_port, container_port, protocol })
}

/// A service's volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mount {
    /// A named volume of the version: each deployment on each node has its own.
    Volume { name: String, target: String, read_only: bool },
    /// A directory of the node.
    Bind { source: String, target: String, read_only: bool },
}

/// Host paths no deployment ever mounts, nor any directory that holds one: each is the host
/// itself (its configuration, devices and kernel) or the container engine, which is root on it.
pub const FORBIDDEN_BINDS: &[&str] = &[
    "/etc",
    "/proc",
    "/sys",
    "/dev",
    "/boot",
    "/root",
    "/home",
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib64",
    "/var/run/docker.sock",
    "/run/docker.sock",
    "/var/lib/docker",
    "/run/containerd",
    "/var/run/containerd",
    "/run/user",
    "/var/spool/cron",
];

/// Whether host path `source` may be bind-mounted; if not, why, naming the rule. Checked when
/// a version is added and again by the node, which does not take the engine's word for it.
pub fn bind_policy(source: &str) -> Result<(), String> {
    let path = normalize_path(source)?;
    for forbidden in FORBIDDEN_BINDS {
        if path == *forbidden || path.starts_with(&format!("{forbidden}/")) {
            return Err(format!("host path `{source}` is never mounted: it is under `{forbidden}`"));
        }
        if path == "/" || forbidden.starts_with(&format!("{path}/")) {
            return Err(format!("host path `{source}` is never mounted: it holds `{forbidden}`"));
        }
    }
    Ok(())
}

/// `source` as an absolute path without `.`, empty parts or a final `/`; refused with `..`.
pub fn normalize_path(source: &str) -> Result<String, String> {
    let mut parts = Vec::new();
    for part in source.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(format!("host path `{source}` holds `..`: give the path itself")),
            part => parts.push(part),
        }
    }
    Ok(format!("/{}", parts.join("/")))
}

/// Reads `SOURCE:TARGET[:ro|:rw]`.
pub fn parse_volume(text: &str) -> Result<Mount, String> {
    let parts: Vec<&str> = text.split(':').collect();
    let (source, target, read_only) = match parts.as_slice() {
        [source, target] => (*source, *target, false),
        [source, target, "ro"] => (*source, *target, true),
        [source, target, "rw"] => (*source, *target, false),
        [_, _, mode] => return Err(format!("mode `{mode}` is not ro or rw")),
        [_] => return Err("an anonymous volume is not honoured; name it: VOLUME:/target".into()),
        _ => return Err(format!("`{text}` is not SOURCE:TARGET[:ro]")),
    };
    if !target.starts_with('/') {
        return Err(format!("target `{target}` is not an absolute path"));
    }
    let (source, target) = (source.to_owned(), target.to_owned());
    if source.starts_with('/') {
        Ok(Mount::Bind { source, target, read_only })
    } else if source.starts_with('.') || source.starts_with('~') {
        Err(format!("`{source}` is relative to a directory the node does not have; give an absolute path"))
    } else if valid_name(&source) {
        Ok(Mount::Volume { name: source, target, read_only })
    } else {
        Err(format!("`{source}` is neither a volume name nor an absolute path"))
    }
}

/// A restart policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    No,
    Always,
    OnFailure(Option<u32>),
    UnlessStopped,
}

pub fn parse_restart(text: &str) -> Result<Restart, String> {
    match text {
        "no" => Ok(Restart::No),
        "always" => Ok(Restart::Always),
        "unless-stopped" => Ok(Restart::UnlessStopped),
        "on-failure" => Ok(Restart::OnFailure(None)),
        _ => match text.strip_prefix("on-failure:").map(str::parse::<u32>) {
            Some(Ok(n)) => Ok(Restart::OnFailure(Some(n))),
            _ => Err(format!("`{text}` is not no, always, on-failure[:N] or unless-stopped")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO_SERVICES: &str = r#"
services:
  web:
    image: 127.0.0.1:5000/sample/app:1.0.0
    environment:
      GREETING: "${GREETING:-hello}"
      LEVEL: info
    ports: ["127.0.0.1:${HTTP_PORT:-18080}:8080"]
    volumes: ["data:/data", "/srv/sample/config:/config:ro"]
    restart: unless-stopped
    depends_on: [cache]
  cache:
    image: 127.0.0.1:5000/sample/logger:1.0.0
    command: sh -c 'echo "cache up"; exec httpd -f -p 8080 -h /www'
    environment: [MODE=fast, TOKEN]
volumes:
  data:
"#;

    #[test]
    fn limits_are_read_from_the_service_or_from_deploy_resources_and_refused_when_malformed() {
        let service = |body: &str| parse(&format!("services:\n  web:\n    image: a:1\n{body}"));
        let own = service("    mem_limit: 256m\n    cpus: 0.5\n    pids_limit: 100\n").unwrap();
        let limits = Limits { memory: Some(256 << 20), nano_cpus: Some(500_000_000), pids: Some(100) };
        assert_eq!(own.services[0].limits, limits);
        let deploy = "    deploy:\n      resources:\n        limits: {memory: 256mb, cpus: '0.5', pids: 100}\n";
        assert_eq!(service(deploy).unwrap().services[0].limits, limits);
        assert_eq!(service("").unwrap().services[0].limits, Limits::default());
        for (body, path) in [
            ("    mem_limit: lots\n", "services.web.mem_limit"),
            ("    cpus: -1\n", "services.web.cpus"),
            ("    cpus: 0.0000001\n", "services.web.cpus"),
            ("    mem_limit: [1g]\n", "services.web.mem_limit"),
            ("    deploy:\n      resources:\n        limits: 1g\n", "services.web.deploy.resources.limits"),
            ("    pids_limit: 0\n", "services.web.pids_limit"),
            ("    deploy:\n      replicas: 3\n", "services.web.deploy.replicas"),
            (
                "    deploy:\n      resources:\n        reservations: {memory: 1g}\n",
                "services.web.deploy.resources.reservations",
            ),
            (
                "    deploy:\n      resources:\n        limits: {devices: []}\n",
                "services.web.deploy.resources.limits.devices",
            ),
            (
                "    mem_limit: 1g\n    deploy:\n      resources:\n        limits: {memory: 1g}\n",
                "services.web.deploy.resources.limits.memory",
            ),
        ] {
            assert_eq!(service(body).unwrap_err().path, path, "{body}");
        }
    }

    #[test]
    fn secrets_come_from_variables_each_launch_gives_and_become_files_of_the_services_that_name_them() {
        let text = "secrets:\n  db_password:\n    environment: DB_PASSWORD\nservices:\n  web:\n    image: a:1\n    secrets: [db_password]\n  side:\n    image: b:1\n";
        let compose = parse(text).unwrap();
        assert_eq!(compose.secrets, [("db_password".to_owned(), "DB_PASSWORD".to_owned())].into());
        let web = compose.services.iter().find(|s| s.name == "web").unwrap();
        assert_eq!(web.secrets, [("db_password".to_owned(), "DB_PASSWORD".to_owned())].into());
        assert!(compose.services.iter().find(|s| s.name == "side").unwrap().secrets.is_empty());

        let from_file = "secrets:\n  db_password:\n    file: ./pw.txt\nservices:\n  web:\n    image: a:1\n";
        let refused = parse(from_file).unwrap_err();
        assert_eq!(refused.path, "secrets.db_password");
        assert!(refused.message.contains("environment: VARIABLE"), "{}", refused.message);
        let undeclared = "services:\n  web:\n    image: a:1\n    secrets: [db_password]\n";
        let refused = parse(undeclared).unwrap_err();
        assert_eq!(refused.path, "services.web.secrets");
        assert!(refused.message.contains("not declared"), "{}", refused.message);
    }

    #[test]
    fn the_host_itself_and_the_container_engine_are_never_bind_mounted() {
        for source in [
            "/",
            "//",
            "/etc",
            "/etc/passwd",
            "/proc/1/root",
            "/sys",
            "/dev/sda",
            "/var/run/docker.sock",
            "/run/docker.sock",
            "/run",
            "/var",
            "/var/lib/docker/volumes",
            "/srv/../etc",
            "/./etc/",
        ] {
            assert!(bind_policy(source).is_err(), "{source} is refused");
        }
        for source in ["/srv/sample", "/data", "/var/log/app", "/etcetera", "/opt/app/dev"] {
            assert_eq!(bind_policy(source), Ok(()), "{source} is allowed");
        }
        let refused = parse(&TWO_SERVICES.replace("/srv/sample/config", "/var/run/docker.sock")).unwrap_err();
        assert_eq!(refused.path, "services.web.volumes[1]");
        assert!(refused.message.contains("never mounted"), "{}", refused.message);
    }

    #[test]
    fn a_compose_file_gives_its_services_in_start_order_and_its_parameters() {
        let compose = parse(TWO_SERVICES).unwrap();
        let names: Vec<_> = compose.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["cache", "web"], "a service comes after those it depends on");
        let web = &compose.services[1];
        assert_eq!(web.ports, ["127.0.0.1:${HTTP_PORT:-18080}:8080"]);
        assert_eq!(web.restart.as_deref(), Some("unless-stopped"));
        assert_eq!(web.environment["LEVEL"], "info");
        let cache = &compose.services[0];
        assert_eq!(cache.command, ["sh", "-c", "echo \"cache up\"; exec httpd -f -p 8080 -h /www"]);
        assert_eq!(cache.environment["TOKEN"], "${TOKEN}");
        let parameters: Vec<_> = compose.parameters.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(parameters, [("GREETING", "hello"), ("HTTP_PORT", "18080"), ("TOKEN", "")]);
    }

    #[test]
    fn resolving_fills_in_values_and_defaults() {
        let compose = parse(TWO_SERVICES).unwrap();
        let values = [("HTTP_PORT".to_owned(), "19090".to_owned())].into();
        let web = compose.services[1].resolve(&values).unwrap();
        assert_eq!(web.ports, ["127.0.0.1:19090:8080"]);
        assert_eq!(web.environment["GREETING"], "hello");
        let bad = [("HTTP_PORT".to_owned(), "http".to_owned())].into();
        let e = compose.services[1].resolve(&bad).unwrap_err();
        assert_eq!(e.path, "services.web.ports[0]");
        assert!(e.message.contains("`http` is not a port number"), "{e}");
    }

    #[test]
    fn what_the_node_cannot_honour_is_refused_by_its_key() {
        let cases = [
            ("services:\n  web:\n    build: .\n", "services.web.build", "does not build"),
            ("services:\n  web:\n    image: a\n    privileged: true\n", "services.web.privileged", "does not honour"),
            ("services:\n  web:\n    image: a\nnetworks:\n  n: {}\n", "networks", "share one network"),
            ("services:\n  web:\n    image: a\n    ports: [{target: 80}]\n", "services.web.ports[0]", "short syntax"),
            ("services:\n  web:\n    image: a\n    volumes: [\"x:/x\"]\n", "services.web.volumes[0]", "not declared"),
            ("services:\n  web:\n    image: a\n    volumes: [\"./x:/x\"]\n", "services.web.volumes[0]", "relative"),
            ("services:\n  web:\n    image: a\n    restart: sometimes\n", "services.web.restart", "`sometimes`"),
            ("services:\n  web:\n    image: a\n    ports: [\"80-81:80-81\"]\n", "services.web.ports[0]", "ranges"),
            ("services:\n  web:\n    image: a\n    depends_on: [db]\n", "services.web.depends_on", "`db`"),
            ("services:\n  web:\n    environment: {A: b}\n", "services.web.image", "needs an image"),
            ("services: {}\n", "services", "at least one service"),
            (
                "services:\n  web:\n    image: a\n    environment: {A: \"${A:?set it}\"}\n",
                "services.web.environment.A",
                "${NAME:?",
            ),
            (
                "services:\n  web:\n    image: a\n    environment: {A: \"5$\"}\n",
                "services.web.environment.A",
                "lone `$`",
            ),
            ("services: [\n", "(file)", "not YAML"),
            (
                "services:\n  web:\n    image: a\n    enviroment: {A: b}\n",
                "services.web.enviroment",
                "did you mean `environment`?",
            ),
        ];
        for (text, path, message) in cases {
            let e = parse(text).unwrap_err();
            assert_eq!(e.path, path, "{text}");
            assert!(e.to_string().contains(message), "{text}: {e}");
        }
    }

    #[test]
    fn a_dependency_cycle_is_refused() {
        let text = "services:\n  a:\n    image: x\n    depends_on: [b]\n  b:\n    image: y\n    depends_on: [a]\n";
        assert!(parse(text).unwrap_err().message.contains("cycle"));
    }

    #[test]
    fn ports_volumes_and_restart_policies_read_as_docker_needs_them() {
        let port = parse_port("127.0.0.1:8080:80/udp").unwrap();
        assert_eq!(port.host_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!((port.host_port, port.container_port, port.container_key().as_str()), (Some(8080), 80, "80/udp"));
        assert_eq!(parse_port("80").unwrap().host_port, None);
        assert_eq!(parse_port("[::1]:8080:80").unwrap().host_ip.as_deref(), Some("::1"));
        assert_eq!(parse_port("127.0.0.1::80").unwrap().host_port, None);
        assert!(parse_port("localhost:80:80").unwrap_err().contains("not an IP address"));
        assert_eq!(
            parse_volume("data:/data:ro").unwrap(),
            Mount::Volume { name: "data".into(), target: "/data".into(), read_only: true }
        );
        assert!(matches!(parse_volume("/srv:/srv").unwrap(), Mount::Bind { .. }));
        assert_eq!(parse_restart("on-failure:3"), Ok(Restart::OnFailure(Some(3))));
        assert_eq!(interpolate("$$HOME and ${X}", &BTreeMap::new(), "p").unwrap(), "$HOME and ");
    }
}
