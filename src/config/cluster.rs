//! `[cluster]` → [`ClusterConfig`] (docs/architecture.md, "Cluster"): peers are plain
//! `http://host:port` base URLs, `self` is one of them, the secret is long enough to key an
//! HMAC, and the affinity header is a valid header name.

use axum::http::{HeaderName, Uri};

use super::raw::RawCluster;
use super::{ClusterConfig, Secret};
use crate::setting::{Invalid, invalid};

/// Shortest `cluster.secret`, in bytes.
const MIN_SECRET: usize = 16;

/// `None` when no key of the section is set; an error when some are but not the rest.
pub(super) fn validate(raw: RawCluster) -> Result<Option<ClusterConfig>, Invalid> {
    if raw.peers.is_empty() {
        return match (raw.self_url.is_empty(), raw.secret.is_empty()) {
            (true, true) if raw.affinity_header.is_empty() => Ok(None),
            _ => Err(invalid(
                "cluster.peers",
                "is empty, but other [cluster] keys are set: list every replica's base URL",
            )),
        };
    }
    let mut peers = Vec::with_capacity(raw.peers.len());
    for text in &raw.peers {
        let peer = peer_url(text)?;
        if peers.contains(&peer) {
            return Err(invalid("cluster.peers", format!("lists `{peer}` twice")));
        }
        peers.push(peer);
    }
    let me_url = peer_url(&raw.self_url).map_err(|_| {
        invalid(
            "cluster.self",
            "must be this replica's base URL as it appears in cluster.peers",
        )
    })?;
    let Some(me) = peers.iter().position(|peer| *peer == me_url) else {
        return Err(invalid(
            "cluster.self",
            format!("`{me_url}` is not one of cluster.peers"),
        ));
    };
    if raw.secret.len() < MIN_SECRET {
        return Err(invalid(
            "cluster.secret",
            format!("must be at least {MIN_SECRET} bytes, the same on every replica"),
        ));
    }
    let affinity_header = match raw.affinity_header.as_str() {
        "" => None,
        name => Some(HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
            invalid(
                "cluster.affinity_header",
                format!("`{name}` is not a header name"),
            )
        })?),
    };
    Ok(Some(ClusterConfig {
        peers,
        me,
        secret: Secret::new(raw.secret),
        affinity_header,
    }))
}

/// `http://host:port` (a trailing `/` allowed), returned without the slash.
fn peer_url(text: &str) -> Result<String, Invalid> {
    let refused = || {
        invalid(
            "cluster.peers",
            format!("`{text}` is not a base URL like http://10.0.0.2:8080"),
        )
    };
    let uri: Uri = text.parse().map_err(|_| refused())?;
    let plain = uri.scheme_str() == Some("http")
        && uri
            .authority()
            .is_some_and(|authority| authority.port().is_some())
        && matches!(uri.path(), "" | "/")
        && uri.query().is_none()
        && !text.contains('@');
    if !plain {
        return Err(refused());
    }
    Ok(text.trim_end_matches('/').to_owned())
}

#[cfg(test)]
mod tests {
    use crate::config::testing::load;

    const PEERS: &str = "peers = [\"http://10.0.0.1:8080\", \"http://10.0.0.2:8080/\"]\n";

    #[test]
    fn no_cluster_by_default_and_a_full_section_is_kept() {
        assert!(load("", &[]).unwrap().cluster.is_none());
        let text = format!(
            "[cluster]\n{PEERS}self = \"http://10.0.0.2:8080\"\nsecret = \"0123456789abcdef\"\n\
             affinity_header = \"Session_Id\"\n"
        );
        let cluster = load(&text, &[]).unwrap().cluster.unwrap();
        assert_eq!(
            cluster.peers,
            ["http://10.0.0.1:8080", "http://10.0.0.2:8080"]
        );
        assert_eq!(cluster.me, 1);
        assert_eq!(cluster.affinity_header.unwrap().as_str(), "session_id");
    }

    #[test]
    fn each_wrong_key_is_named() {
        let cases = [
            (
                "[cluster]\nself = \"http://10.0.0.1:8080\"\n",
                "cluster.peers",
            ),
            (
                "[cluster]\npeers = [\"https://10.0.0.1:8080\"]\n",
                "cluster.peers",
            ),
            (
                "[cluster]\npeers = [\"http://10.0.0.1\"]\n",
                "cluster.peers",
            ),
            (
                "[cluster]\npeers = [\"http://10.0.0.1:80/v1\"]\n",
                "cluster.peers",
            ),
            (
                "[cluster]\npeers = [\"http://a:1\", \"http://a:1/\"]\n",
                "lists `http://a:1` twice",
            ),
            (
                &format!("[cluster]\n{PEERS}self = \"http://10.0.0.3:8080\"\n"),
                "is not one of cluster.peers",
            ),
            (
                &format!("[cluster]\n{PEERS}self = \"http://10.0.0.1:8080\"\nsecret = \"short\"\n"),
                "cluster.secret",
            ),
            (
                &format!(
                    "[cluster]\n{PEERS}self = \"http://10.0.0.1:8080\"\n\
                     secret = \"0123456789abcdef\"\naffinity_header = \"a b\"\n"
                ),
                "cluster.affinity_header",
            ),
        ];
        for (text, expected) in cases {
            let error = load(text, &[]).unwrap_err().to_string();
            assert!(error.contains(expected), "{text}: {error}");
        }
    }

    #[test]
    fn the_section_is_read_from_the_environment() {
        let env = [
            (
                "WSBRIDGE_CLUSTER_PEERS",
                r#"["http://127.0.0.1:1","http://127.0.0.1:2"]"#,
            ),
            ("WSBRIDGE_CLUSTER_SELF", "http://127.0.0.1:2"),
            ("WSBRIDGE_CLUSTER_SECRET", "0123456789abcdef0123"),
        ];
        let cluster = load("", &env).unwrap().cluster.unwrap();
        assert_eq!(cluster.me, 1);
        assert_eq!(cluster.secret.expose(), "0123456789abcdef0123");
    }
}
