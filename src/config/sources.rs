//! Where values come from: the file, then `WSBRIDGE_*` variables, then command-line flags,
//! merged into one TOML tree that remembers each key's [`Origin`].
//!
//! Every key has an environment name derived from its path — section, sub-section and key
//! joined by `_`, upper-cased, after `WSBRIDGE_` — found by walking the default tree, so a new
//! key gets its variable for free. Environment and flag values are read as TOML literals (`42`,
//! `true`, `["a","b"]`) and fall back to plain strings; a string key takes the text as it is.

use std::collections::BTreeMap;
use std::path::Path;

use super::diagnose::unknown_variable;
use super::error::{ConfigError, Origin};
use super::raw::RawConfig;
use super::{ConfigSource, Override, Sources};

const ENV_PREFIX: &str = "WSBRIDGE_";

/// Keys whose value is a table of free names (`upstream.headers`): one key, not a section,
/// so a variable sets the whole table (`WSBRIDGE_UPSTREAM_HEADERS='{ OpenAI-Beta = "…" }'`).
const TABLE_KEYS: &[&str] = &["upstream.headers"];

/// The merged tree, with where each key set in it came from.
#[derive(Debug)]
pub(super) struct Merged {
    pub(super) tree: toml::Table,
    /// Dotted key → the last source that set it.
    origins: BTreeMap<String, Origin>,
    pub(super) source: ConfigSource,
}

impl Merged {
    /// The file, then the environment, then the flags, each over the one before.
    pub(super) fn read(sources: &Sources) -> Result<Self, ConfigError> {
        let mut merged = Self {
            tree: toml::Table::new(),
            origins: BTreeMap::new(),
            source: ConfigSource {
                file: sources.file.clone(),
                ..ConfigSource::default()
            },
        };
        if let Some(path) = &sources.file {
            merged.tree = read_file(path)?;
            relative_to_file(&mut merged.tree, path);
            for key in leaf_keys(&merged.tree) {
                merged.origins.insert(key, Origin::File(path.clone()));
            }
        }
        merged.apply_env(&sources.env);
        merged.apply_flags(&sources.overrides);
        Ok(merged)
    }

    /// `WSBRIDGE_*` variables that name a key set it; others become warnings.
    fn apply_env(&mut self, env: &[(String, String)]) {
        let names = env_names();
        for (name, value) in env {
            if !name.starts_with(ENV_PREFIX) {
                continue;
            }
            match names.get(name) {
                Some(path) => {
                    set_path(&mut self.tree, path, literal_for(path, value));
                    self.origins
                        .insert(path.join("."), Origin::Env(name.clone()));
                    self.source.variables.push(name.clone());
                }
                None => self.source.warnings.push(unknown_variable(name, &names)),
            }
        }
    }

    fn apply_flags(&mut self, overrides: &[Override]) {
        for flag in overrides {
            let path: Vec<String> = flag.key.split('.').map(str::to_owned).collect();
            set_path(&mut self.tree, &path, literal_for(&path, &flag.value));
            self.origins
                .insert(flag.key.to_owned(), Origin::Flag(flag.flag));
            self.source.flags.push(flag.flag);
        }
    }

    /// Where `key` (or, for a section, the first key under it) came from.
    pub(super) fn origin_of(&self, key: &str) -> Origin {
        self.origins
            .iter()
            .find(|(set, _)| set.as_str() == key || set.starts_with(&format!("{key}.")))
            .map_or(Origin::Default, |(_, origin)| origin.clone())
    }
}

fn read_file(path: &Path) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    text.parse::<toml::Table>()
        .map_err(|error| ConfigError::Parse {
            path: path.to_owned(),
            message: error.to_string(),
        })
}

/// Keys that name files: a relative path written in the config file is relative to the
/// file's directory (so a config and its CA bundle can move together, e.g. as one mounted
/// volume); from the environment or a flag it stays relative to the working directory.
const FILE_PATH_KEYS: &[&[&str]] = &[&["upstream", "ca_file"]];

fn relative_to_file(tree: &mut toml::Table, file: &Path) {
    let Some(directory) = file.parent() else {
        return;
    };
    for key in FILE_PATH_KEYS {
        let Some(toml::Value::String(value)) = lookup(tree, key) else {
            continue;
        };
        if value.is_empty() || Path::new(value).is_absolute() {
            continue;
        }
        let resolved = directory.join(value).to_string_lossy().into_owned();
        let key: Vec<String> = key.iter().map(|part| (*part).to_owned()).collect();
        set_path(tree, &key, toml::Value::String(resolved));
    }
}

/// The default tree, as TOML.
pub(super) fn defaults() -> toml::Table {
    match toml::Value::try_from(RawConfig::default()) {
        Ok(toml::Value::Table(table)) => table,
        _ => toml::Table::new(),
    }
}

/// Every leaf key of the default tree, by its environment variable name.
pub fn env_names() -> BTreeMap<String, Vec<String>> {
    fn walk(
        table: &toml::Table,
        prefix: &mut Vec<String>,
        out: &mut BTreeMap<String, Vec<String>>,
    ) {
        for (key, value) in table {
            prefix.push(key.clone());
            match value {
                toml::Value::Table(inner) if !TABLE_KEYS.contains(&prefix.join(".").as_str()) => {
                    walk(inner, prefix, out);
                }
                _ => {
                    let name = format!("{ENV_PREFIX}{}", prefix.join("_").to_uppercase());
                    out.insert(name, prefix.clone());
                }
            }
            prefix.pop();
        }
    }
    let mut out = BTreeMap::new();
    walk(&defaults(), &mut Vec::new(), &mut out);
    out
}

/// The dotted path of every leaf (a value that is not a table, or one of [`TABLE_KEYS`]) of
/// `table`.
pub(super) fn leaf_keys(table: &toml::Table) -> Vec<String> {
    fn walk(table: &toml::Table, prefix: &str, out: &mut Vec<String>) {
        for (key, value) in table {
            let path = if prefix.is_empty() {
                key.clone()
            } else {
                format!("{prefix}.{key}")
            };
            match value {
                toml::Value::Table(inner) if !TABLE_KEYS.contains(&path.as_str()) => {
                    walk(inner, &path, out);
                }
                _ => out.push(path),
            }
        }
    }
    let mut out = Vec::new();
    walk(table, "", &mut out);
    out
}

pub(super) fn lookup<'a>(table: &'a toml::Table, path: &[&str]) -> Option<&'a toml::Value> {
    let (last, parents) = path.split_last()?;
    let mut table = table;
    for key in parents {
        table = table.get(*key)?.as_table()?;
    }
    table.get(*last)
}

pub(super) fn set_path(tree: &mut toml::Table, path: &[String], value: toml::Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut table = tree;
    for key in parents {
        let entry = table
            .entry(key.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        let toml::Value::Table(inner) = entry else {
            return;
        };
        table = inner;
    }
    table.insert(last.clone(), value);
}

/// A value from the environment or the command line for the key at `path`. A string key
/// takes the text as it is (`WSBRIDGE_AUTH_API_KEY_ENV=123` is the name "123", not a number)
/// unless it is a quoted TOML string; other keys read it as a TOML literal.
fn literal_for(path: &[String], text: &str) -> toml::Value {
    let value = literal(text);
    let path: Vec<&str> = path.iter().map(String::as_str).collect();
    let string_key = lookup(&defaults(), &path).is_some_and(toml::Value::is_str);
    if string_key && !value.is_str() {
        toml::Value::String(text.to_owned())
    } else {
        value
    }
}

/// A value from the environment or the command line: a TOML literal, else a string.
fn literal(text: &str) -> toml::Value {
    format!("v = {text}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut table| table.remove("v"))
        .unwrap_or_else(|| toml::Value::String(text.to_owned()))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::config::testing::load;
    use crate::config::{Config, Override, Sources};

    #[test]
    fn environment_overrides_file_and_reads_toml_literals() {
        let config = load(
            "[simulator]\ntool_calls = 3\n",
            &[
                ("WSBRIDGE_SIMULATOR_TOOL_CALLS", "7"),
                ("WSBRIDGE_SIMULATOR_ACCEPTED_KEYS", r#"["sk-a","sk-b"]"#),
                ("WSBRIDGE_SERVER_LISTEN", "0.0.0.0:9"),
                ("WSBRIDGE_SIMULATOR_LATENCY_TTFT_MS", "12.5"),
                ("WSBRIDGE_SIMULATOR_LATENCY_PROFILE", "custom"),
                ("UNRELATED", "x"),
            ],
        )
        .unwrap();
        assert_eq!(config.simulator.tool_calls, 7);
        assert_eq!(config.simulator.accepted_keys, ["sk-a", "sk-b"]);
        assert_eq!(config.server.listen.to_string(), "0.0.0.0:9");
        assert_eq!(config.simulator.latency.ttft, Duration::from_micros(12_500));
    }

    #[test]
    fn a_relative_ca_file_in_the_file_is_relative_to_the_file() {
        let directory =
            std::env::temp_dir().join(format!("wsbridge-relative-ca-{}", std::process::id()));
        std::fs::create_dir_all(&directory).unwrap();
        let file = directory.join("config.toml");
        std::fs::write(&file, "[upstream]\nca_file = \"certs/ca.pem\"\n").unwrap();
        let read = |env: Vec<(String, String)>| {
            Config::load(Sources {
                file: Some(file.clone()),
                env,
                overrides: Vec::new(),
            })
            .unwrap_err()
            .to_string()
        };
        // The file does not exist either way: the error names the path that was tried.
        let from_file = read(Vec::new());
        let expected = directory.join("certs/ca.pem");
        assert!(
            from_file.contains(&*expected.to_string_lossy()),
            "{from_file}"
        );
        let from_env = read(vec![("WSBRIDGE_UPSTREAM_CA_FILE".into(), "ca.pem".into())]);
        assert!(
            from_env.contains("\"ca.pem\"") || from_env.contains(" ca.pem"),
            "{from_env}"
        );
        assert!(
            !from_env.contains(&*directory.to_string_lossy()),
            "{from_env}"
        );
        let _ = std::fs::remove_dir_all(&directory);
    }

    #[test]
    fn command_line_overrides_environment() {
        let config = Config::load(Sources {
            file: None,
            env: vec![("WSBRIDGE_SERVER_LISTEN".into(), "127.0.0.1:1".into())],
            overrides: vec![Override {
                flag: "--listen",
                key: "server.listen",
                value: "127.0.0.1:2".into(),
            }],
        })
        .unwrap();
        assert_eq!(config.server.listen.port(), 2);
        assert_eq!(
            config.source.to_string(),
            "defaults + WSBRIDGE_SERVER_LISTEN + --listen"
        );
    }

    #[test]
    fn a_table_key_is_set_whole_by_its_variable() {
        let config = load(
            "[upstream.headers]\nx-from-file = \"1\"\n",
            &[(
                "WSBRIDGE_UPSTREAM_HEADERS",
                r#"{ OpenAI-Beta = "responses_websockets=2026-02-06" }"#,
            )],
        )
        .unwrap();
        let headers = &config.upstream.headers;
        assert_eq!(headers["openai-beta"], "responses_websockets=2026-02-06");
        assert!(
            !headers.contains_key("x-from-file"),
            "the variable replaces the table"
        );
        assert_eq!(
            config.source.to_string(),
            format!(
                "defaults + {} + WSBRIDGE_UPSTREAM_HEADERS",
                config.source.file.as_ref().unwrap().display()
            )
        );
        let error = load("", &[("WSBRIDGE_UPSTREAM_HEADERS", "OpenAI-Beta: x")])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains(
                "`upstream.headers` (from environment variable WSBRIDGE_UPSTREAM_HEADERS)"
            ) && error.contains("a table of header names and values"),
            "{error}"
        );
        let error = load("[upstream.headers]\nApi-Key = \"k\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("`upstream.headers` (from config file ")
                && error.contains("`Api-Key` cannot be set here"),
            "{error}"
        );
    }

    #[test]
    fn string_keys_take_variable_text_as_it_is() {
        let config = load(
            "",
            &[
                ("WSBRIDGE_LOG_LEVEL", "1"),
                ("WSBRIDGE_SIMULATOR_LISTEN", "\"127.0.0.1:7\""),
            ],
        )
        .unwrap();
        assert_eq!(config.log.level, "1");
        assert_eq!(config.simulator.listen.port(), 7);
        let error = load("", &[("WSBRIDGE_SERVER_LISTEN", "8080")])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains(
                "(from environment variable WSBRIDGE_SERVER_LISTEN): `8080` is not an address"
            ),
            "{error}"
        );
    }
}
