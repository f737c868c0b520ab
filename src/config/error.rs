//! What can be wrong with a configuration, and where a value came from.

use std::path::PathBuf;

use crate::setting::Invalid;

/// Everything that can be wrong with a configuration; `main` exits with status 64 on any.
/// Each names the key, where its value came from, and what is accepted.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("unknown key `{key}` ({origin}); {known}")]
    Unknown {
        key: String,
        origin: Origin,
        known: String,
    },
    #[error("invalid value for `{key}` ({origin}): {value} is not {expected}")]
    Type {
        key: String,
        origin: Origin,
        value: String,
        expected: String,
    },
    #[error("invalid configuration: {0}")]
    Merged(String),
    #[error("invalid value for `{key}` ({origin}): {message}")]
    Invalid {
        key: &'static str,
        origin: Origin,
        message: String,
    },
}

impl ConfigError {
    /// A value that failed validation, with where it came from.
    pub(super) fn invalid(invalid: Invalid, origin: Origin) -> Self {
        Self::Invalid {
            key: invalid.key,
            origin,
            message: invalid.message,
        }
    }
}

/// Where a key's value came from, for error messages and the start-up line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Default,
    File(PathBuf),
    Env(String),
    Flag(&'static str),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Default => f.write_str("the built-in default"),
            Origin::File(path) => write!(f, "from config file {}", path.display()),
            Origin::Env(name) => write!(f, "from environment variable {name}"),
            Origin::Flag(flag) => write!(f, "from flag {flag}"),
        }
    }
}
