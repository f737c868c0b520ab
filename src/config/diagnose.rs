//! What a user sees when the merged tree does not fit the file layout: the first unknown key
//! (with "did you mean"), or the first value that alone makes the defaults fail, named with
//! where it came from and what the key accepts; and the warning for a `WSBRIDGE_*` variable
//! that names no key.

use std::collections::BTreeMap;

use super::error::{ConfigError, Origin};
use super::raw::RawConfig;
use super::sources::{Merged, defaults, leaf_keys, lookup, set_path};

/// The merged tree as the raw layout, or an error naming the key at fault.
pub(super) fn deserialize(merged: &Merged) -> Result<RawConfig, ConfigError> {
    toml::Value::Table(merged.tree.clone())
        .try_into()
        .map_err(|error: toml::de::Error| {
            find_bad_key(&merged.tree, &|key| merged.origin_of(key))
                .unwrap_or_else(|| ConfigError::Merged(error.message().to_owned()))
        })
}

/// The warning for a `WSBRIDGE_*` variable that names no key, with the closest name.
pub(super) fn unknown_variable(name: &str, names: &BTreeMap<String, Vec<String>>) -> String {
    let closest = names
        .keys()
        .map(|known| (edit_distance(name, known), known))
        .min()
        .filter(|(distance, _)| *distance <= 3);
    match closest {
        Some((_, known)) => {
            format!("ignoring unknown environment variable {name} (did you mean {known}?)")
        }
        None => format!(
            "ignoring unknown environment variable {name}: it names no configuration key \
             (config.toml lists every key's variable)"
        ),
    }
}

/// Levenshtein distance, for "did you mean".
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = previous + usize::from(ca != *cb);
            previous = row[j + 1];
            row[j + 1] = substitute.min(previous + 1).min(row[j] + 1);
        }
    }
    row[b.len()]
}

/// After the merged tree failed to deserialize: the first key that is unknown, or whose value
/// alone makes the defaults fail, as an error naming it, its origin and what is accepted.
fn find_bad_key(tree: &toml::Table, origin_of: &dyn Fn(&str) -> Origin) -> Option<ConfigError> {
    let defaults = defaults();
    for key in leaf_keys(tree) {
        let path: Vec<&str> = key.split('.').collect();
        let value = lookup(tree, &path)?;
        let Some(default) = lookup(&defaults, &path) else {
            return Some(ConfigError::Unknown {
                origin: origin_of(&key),
                known: known_keys(&defaults, &path),
                key,
            });
        };
        let mut alone = defaults.clone();
        let owned: Vec<String> = path.iter().map(|part| (*part).to_owned()).collect();
        set_path(&mut alone, &owned, value.clone());
        let tried: Result<RawConfig, _> = toml::Value::Table(alone).try_into();
        if let Err(error) = tried {
            return Some(ConfigError::Type {
                origin: origin_of(&key),
                value: shown(&key, value),
                key,
                expected: expected(&defaults, &owned, default, error.message()),
            });
        }
    }
    None
}

/// Keys whose values may hold a secret (header values, credentials in a proxy URL, tokens).
const SECRET_KEYS: &[&str] = &[
    "upstream.headers",
    "upstream.proxy",
    "cluster.secret",
    "auth.client_tokens",
];

/// `value` as an error message may show it: for a key of [`SECRET_KEYS`] (or under one), only
/// its TOML type.
fn shown(key: &str, value: &toml::Value) -> String {
    let secret = SECRET_KEYS
        .iter()
        .any(|secret| key == *secret || key.starts_with(&format!("{secret}.")));
    if secret {
        format!("a {} (not shown: it may hold a secret)", value.type_str())
    } else {
        value.to_string()
    }
}

/// For an unknown key at `path`: the keys of the longest section of it that exists, and the
/// closest of them.
fn known_keys(defaults: &toml::Table, path: &[&str]) -> String {
    let (n, section) = (0..path.len())
        .rev()
        .find_map(|n| match lookup(defaults, &path[..n]) {
            Some(toml::Value::Table(table)) => Some((n, table)),
            _ => None,
        })
        .unwrap_or((0, defaults));
    let names: Vec<&str> = section.keys().map(String::as_str).collect();
    let closest = names
        .iter()
        .map(|name| (edit_distance(path[n], name), *name))
        .min()
        .filter(|(distance, _)| *distance <= 2);
    let hint = closest.map_or_else(String::new, |(_, name)| {
        format!(
            "did you mean `{}`? ",
            [&path[..n], &[name]].concat().join(".")
        )
    });
    if n == 0 {
        format!("{hint}the sections are {}", names.join(", "))
    } else {
        format!("{hint}[{}] has {}", path[..n].join("."), names.join(", "))
    }
}

/// What a key accepts, in words, from its default's type and the deserializer's complaint.
fn expected(
    defaults: &toml::Table,
    path: &[String],
    default: &toml::Value,
    message: &str,
) -> String {
    if let Some(names) = variants(message).or_else(|| variants_of(defaults, path, default)) {
        return names;
    }
    for (rust, words) in [
        ("u16", "a whole number from 0 to 65535"),
        ("u32", "a whole number from 0 to 4294967295"),
        ("u64", "a whole number from 0 to 18446744073709551615"),
    ] {
        if message.contains(&format!("expected {rust}")) || message.contains(&format!("for {rust}"))
        {
            return words.to_owned();
        }
    }
    match default {
        toml::Value::Boolean(_) => "`true` or `false`".to_owned(),
        toml::Value::Float(_) | toml::Value::Integer(_) => "a number".to_owned(),
        toml::Value::Array(_) => "a list of strings, such as [\"a\", \"b\"]".to_owned(),
        toml::Value::String(_) => "a string".to_owned(),
        toml::Value::Table(_) => {
            "a table of header names and values, such as { OpenAI-Beta = \"…\" }".to_owned()
        }
        _ => message.to_owned(),
    }
}

/// The names an enum key accepts, from serde's "unknown variant `x`, expected `a` or `b`"
/// (or "expected one of `a`, `b`, `c`").
fn variants(message: &str) -> Option<String> {
    let (_, rest) = message.split_once("unknown variant ")?;
    let (_, names) = rest.split_once(", expected ")?;
    Some(names.trim().to_owned())
}

/// For a value of the wrong type (`format = 1`) at a string-valued key: if the key is an enum,
/// its names, found by asking the deserializer about a name no enum has.
fn variants_of(defaults: &toml::Table, path: &[String], default: &toml::Value) -> Option<String> {
    if !default.is_str() {
        return None;
    }
    let mut probe = defaults.clone();
    set_path(&mut probe, path, toml::Value::String(String::new()));
    let tried: Result<RawConfig, _> = toml::Value::Table(probe).try_into();
    variants(tried.err()?.message())
}

#[cfg(test)]
mod tests {
    use crate::config::testing::load;
    use crate::config::{Config, Override, Sources};

    #[test]
    fn a_bad_value_names_the_key_its_source_and_what_is_accepted() {
        let error = load("", &[("WSBRIDGE_POOL_MAX_SOCKETS", "abc")])
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            "invalid value for `pool.max_sockets` (from environment variable \
             WSBRIDGE_POOL_MAX_SOCKETS): \"abc\" is not a whole number from 0 to 4294967295"
        );
        let error = load("[pool]\nmin_idle = -1\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("`pool.min_idle` (from config file "),
            "{error}"
        );
        assert!(
            error.contains("-1 is not a whole number from 0 to"),
            "{error}"
        );
        let error = load("", &[("WSBRIDGE_CONTINUATION_ENABLED", "yes")])
            .unwrap_err()
            .to_string();
        assert!(
            error.ends_with("\"yes\" is not `true` or `false`"),
            "{error}"
        );
        let error = Config::load(Sources {
            overrides: vec![Override {
                flag: "--listen",
                key: "server.listen",
                value: "nowhere".into(),
            }],
            ..Sources::default()
        })
        .unwrap_err()
        .to_string();
        assert!(
            error.starts_with("invalid value for `server.listen` (from flag --listen): `nowhere`"),
            "{error}"
        );
    }

    #[test]
    fn a_bad_value_of_a_key_that_may_hold_a_secret_is_not_echoed() {
        for (variable, value) in [
            ("WSBRIDGE_UPSTREAM_HEADERS", "Api-Token: s3cret-value"),
            // A token list without its brackets: read as a string, not a list.
            ("WSBRIDGE_AUTH_CLIENT_TOKENS", "s3cret-value"),
        ] {
            let error = load("", &[(variable, value)]).unwrap_err().to_string();
            assert!(!error.contains("s3cret"), "{error}");
            assert!(error.contains("not shown: it may hold a secret"), "{error}");
        }
    }

    #[test]
    fn a_bad_name_for_an_enum_key_lists_the_names_it_accepts() {
        let error = load("", &[("WSBRIDGE_LOG_FORMAT", "xml")])
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            "invalid value for `log.format` (from environment variable WSBRIDGE_LOG_FORMAT): \
             \"xml\" is not `text` or `json`"
        );
        let error = load("[simulator.latency]\nprofile = 3\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("`simulator.latency.profile` (from config file ")
                && error.ends_with("3 is not one of `none`, `openai`, `custom`"),
            "{error}"
        );
        let error = Config::load(Sources {
            overrides: vec![Override {
                flag: "--log-format",
                key: "log.format",
                value: "JSON".into(),
            }],
            ..Sources::default()
        })
        .unwrap_err()
        .to_string();
        assert!(
            error.starts_with("invalid value for `log.format` (from flag --log-format): \"JSON\""),
            "{error}"
        );
        for (variable, value, accepted) in [
            ("WSBRIDGE_UPSTREAM_MODE", "local", "`remote` or `simulator`"),
            ("WSBRIDGE_AUTH_MODE", "forward", "`passthrough` or `inject`"),
            (
                "WSBRIDGE_CONTINUATION_REASONING",
                "loose",
                "`lenient` or `strict`",
            ),
        ] {
            let error = load("", &[(variable, value)]).unwrap_err().to_string();
            assert!(
                error.contains(variable) && error.ends_with(&format!("is not {accepted}")),
                "{error}"
            );
        }
    }

    #[test]
    fn unknown_variables_are_warnings_with_the_closest_name() {
        let config = load("", &[("WSBRIDGE_POOL_MAX_SOCKET", "4")]).unwrap();
        assert_eq!(
            config.source.warnings,
            [
                "ignoring unknown environment variable WSBRIDGE_POOL_MAX_SOCKET (did you mean \
              WSBRIDGE_POOL_MAX_SOCKETS?)"
            ]
        );
        assert_eq!(config.pool.max_sockets, 64);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_clear_errors() {
        let error = load("[simulator]\ntool_cals = 3\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("unknown key `simulator.tool_cals` (from config file "),
            "{error}"
        );
        assert!(
            error.contains("did you mean `simulator.tool_calls`? [simulator] has accepted_keys, "),
            "{error}"
        );
        let error = load("[sever]\nlisten = \"x\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("did you mean `server`? the sections are "),
            "{error}"
        );
        let error = load("[server]\nlisten = \"nowhere\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(error.contains("server.listen"), "{error}");
        let error = load("[simulator.latency]\nprofile = \"fast\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(error.contains("simulator.latency.profile"), "{error}");
        let error = load("[pool]\nmax_age_secs = 9223372036854775807\n", &[])
            .unwrap_err()
            .to_string();
        assert!(error.contains("pool.max_age_secs"), "{error}");
    }
}
