//! A binary's settings from a TOML file, under its flags and environment.
//!
//! Each key of the file is the long name of one of the command's flags (`data-dir`, or
//! `data_dir`); its value becomes that flag's default. So a flag given overrides its
//! environment variable, which overrides the file, which overrides the built-in default. A key
//! no flag has is refused, naming it and the keys there are. A list gives a repeated flag its
//! values; a table gives `key=value` pairs (`[label]` for `--label`).

use std::path::Path;

/// Why a settings file cannot be taken.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("reading {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path} is not TOML: {message}")]
    Parse { path: String, message: String },
    #[error("{path}: `{key}` is not a setting of `{command}`: use one of {known}")]
    Unknown { path: String, key: String, command: String, known: String },
    #[error("{path}: `{key}` must be {expected}")]
    Shape { path: String, key: String, expected: &'static str },
}

/// Flags that are not settings: what a file gives them is refused, and they are not shown.
const NOT_SETTINGS: [&str; 5] = ["config", "help", "version", "print-config", "log-json"];

/// The file `path`, read as TOML.
pub fn read(path: &Path) -> Result<toml::Table, SettingsError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read { path: shown.clone(), source })?;
    text.parse::<toml::Table>().map_err(|e| SettingsError::Parse { path: shown, message: e.message().to_owned() })
}

/// `command` with each setting of `table` as the default of its flag. `path` names the file in
/// errors.
pub fn defaults_from(
    mut command: clap::Command,
    table: &toml::Table,
    path: &Path,
) -> Result<clap::Command, SettingsError> {
    let shown = path.display().to_string();
    for (key, value) in table {
        let wanted = key.replace('_', "-");
        let found = command
            .get_arguments()
            .filter(|a| a.get_long().is_some_and(|long| !NOT_SETTINGS.contains(&long)))
            .find(|a| a.get_long() == Some(wanted.as_str()))
            .map(|a| a.get_id().clone());
        let Some(id) = found else {
            let mut known: Vec<&str> =
                command.get_arguments().filter_map(|a| a.get_long()).filter(|l| !NOT_SETTINGS.contains(l)).collect();
            known.sort_unstable();
            return Err(SettingsError::Unknown {
                path: shown,
                key: key.clone(),
                command: command.get_name().to_owned(),
                known: known.join(", "),
            });
        };
        let values = values_of(value).ok_or_else(|| SettingsError::Shape {
            path: shown.clone(),
            key: key.clone(),
            expected: "a string, a number, a boolean, a list of them, or a table of them",
        })?;
        // Given by the file, a flag the command requires is given.
        command = command.mut_arg(id, |arg| arg.default_values(values).required(false));
    }
    Ok(command)
}

/// A value as the flag's words: one for a scalar, one per element of a list, `key=value` per
/// entry of a table.
fn values_of(value: &toml::Value) -> Option<Vec<String>> {
    use toml::Value as V;
    let scalar = |value: &V| match value {
        V::String(text) => Some(text.clone()),
        V::Integer(n) => Some(n.to_string()),
        V::Float(x) => Some(x.to_string()),
        V::Boolean(b) => Some(b.to_string()),
        _ => None,
    };
    match value {
        V::Array(items) => items.iter().map(scalar).collect(),
        V::Table(entries) => entries.iter().map(|(k, v)| scalar(v).map(|v| format!("{k}={v}"))).collect(),
        other => scalar(other).map(|one| vec![one]),
    }
}

/// The settings `matches` took for `command`'s flags, as a file [`defaults_from`] reads: every
/// flag with a value, whatever gave it (the paths of secrets are shown, never their contents).
pub fn shown(command: &clap::Command, matches: &clap::ArgMatches) -> toml::Table {
    let mut table = toml::Table::new();
    for arg in command.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if NOT_SETTINGS.contains(&long) {
            continue;
        }
        let Ok(Some(raw)) = matches.try_get_raw(arg.get_id().as_str()) else { continue };
        let values: Vec<String> = raw.map(|v| v.to_string_lossy().into_owned()).collect();
        let value = match (arg.get_action(), values.as_slice()) {
            (clap::ArgAction::SetTrue | clap::ArgAction::SetFalse, [one]) => toml::Value::Boolean(one == "true"),
            (clap::ArgAction::Append, _) => toml::Value::Array(values.into_iter().map(toml::Value::String).collect()),
            (_, [one]) => toml::Value::String(one.clone()),
            _ => continue,
        };
        table.insert(long.to_owned(), value);
    }
    table
}

/// The path `--config` names in `args`, or else the environment variable `env`.
pub fn path_in(args: &[String], env: &str) -> Option<std::path::PathBuf> {
    let mut given = args.iter().skip(1);
    while let Some(arg) = given.next() {
        if arg == "--config" {
            return given.next().map(std::path::PathBuf::from);
        }
        if let Some(path) = arg.strip_prefix("--config=") {
            return Some(path.into());
        }
        if arg == "--" {
            break;
        }
    }
    std::env::var_os(env).map(std::path::PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Arg, ArgAction, Command};

    fn command() -> Command {
        Command::new("run")
            .arg(Arg::new("nats").long("nats").env("SETTINGS_TEST_NATS").default_value("tls://127.0.0.1:4222"))
            .arg(Arg::new("data_dir").long("data-dir").default_value("data"))
            .arg(Arg::new("label").long("label").action(ArgAction::Append))
            .arg(Arg::new("heartbeat").long("heartbeat").default_value("5"))
    }

    fn table(text: &str) -> toml::Table {
        text.parse().unwrap()
    }

    #[test]
    fn the_file_sets_defaults_that_flags_override() {
        let file = table("data_dir = \"/var/lib/edge-node\"\nheartbeat = 2.5\nnats = \"tls://10.0.0.1:4222\"\n[label]\nsite = \"north\"\nrack = \"7\"\n");
        let command = defaults_from(command(), &file, Path::new("config.toml")).unwrap();
        let matches = command.clone().get_matches_from(["run", "--nats", "tls://127.0.0.1:1"]);
        assert_eq!(matches.get_one::<String>("nats").unwrap(), "tls://127.0.0.1:1", "the flag wins");
        assert_eq!(matches.get_one::<String>("data_dir").unwrap(), "/var/lib/edge-node");
        assert_eq!(matches.get_one::<String>("heartbeat").unwrap(), "2.5");
        let labels: Vec<&String> = matches.get_many::<String>("label").unwrap().collect();
        assert_eq!(labels, ["rack=7", "site=north"]);
        let matches = command.get_matches_from(["run", "--label", "zone=a"]);
        let labels: Vec<&String> = matches.get_many::<String>("label").unwrap().collect();
        assert_eq!(labels, ["zone=a"], "flags given replace the file's list");
    }

    #[test]
    fn a_key_no_flag_has_or_a_value_of_no_shape_is_refused_naming_it() {
        let unknown = defaults_from(command(), &table("nast = \"x\""), Path::new("c.toml")).unwrap_err();
        assert!(
            unknown
                .to_string()
                .contains("`nast` is not a setting of `run`: use one of data-dir, heartbeat, label, nats"),
            "{unknown}"
        );
        let nested = defaults_from(command(), &table("[label]\nsite = { a = 1 }"), Path::new("c.toml")).unwrap_err();
        assert!(nested.to_string().contains("`label` must be"), "{nested}");
        let dir = tempfile_dir();
        let broken = dir.join("broken.toml");
        std::fs::write(&broken, "nats = ").unwrap();
        assert!(matches!(read(&broken), Err(SettingsError::Parse { .. })));
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("settings-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn the_path_comes_from_the_flag_or_else_the_environment() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            path_in(&args(&["x", "run", "--config", "/etc/a.toml"]), "SETTINGS_TEST_UNSET"),
            Some("/etc/a.toml".into())
        );
        assert_eq!(
            path_in(&args(&["x", "--config=/etc/b.toml", "run"]), "SETTINGS_TEST_UNSET"),
            Some("/etc/b.toml".into())
        );
        assert_eq!(path_in(&args(&["x", "run"]), "SETTINGS_TEST_UNSET"), None);
    }
}
