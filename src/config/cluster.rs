//! `[cluster]` → [`ClusterConfig`] (docs/architecture.md, "Cluster"): peers are plain
//! `http://host:port` base URLs and `self` is one of them, or `peers_dns` is `NAME:PORT` and
//! `self` is `http://IP:PORT`; the secret is long enough to key an HMAC, and the affinity
//! header is a valid header name.

use std::net::SocketAddr;
use std::time::Duration;

use axum::http::{HeaderName, Uri};

use super::raw::RawCluster;
use super::{ClusterConfig, PeersDns, Secret};
use crate::setting::{Invalid, at_least_one, invalid, within_ten_years};

/// Shortest `cluster.secret`, in bytes.
const MIN_SECRET: usize = 16;

/// `None` when no key of the section is set; an error when some are but not the rest.
pub(super) fn validate(raw: RawCluster) -> Result<Option<ClusterConfig>, Invalid> {
    if raw.peers.is_empty() && raw.peers_dns.is_empty() {
        let unset = raw.self_url.is_empty() && raw.secret.is_empty();
        return match unset && raw.affinity_header.is_empty() {
            true => Ok(None),
            false => Err(invalid(
                "cluster.peers",
                "is empty (and so is cluster.peers_dns), but other [cluster] keys are set: \
                 list every replica's base URL",
            )),
        };
    }
    let (peers, dns) = match raw.peers_dns.as_str() {
        "" => (static_peers(&raw.peers)?, None),
        _ if !raw.peers.is_empty() => {
            return Err(invalid(
                "cluster.peers_dns",
                "cannot be used with cluster.peers: set one of them",
            ));
        }
        name => (Vec::new(), Some(peers_dns(name, raw.dns_refresh_secs)?)),
    };
    let self_url = self_url(&raw.self_url, &peers, dns.is_some())?;
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
        self_url,
        secret: Secret::new(raw.secret),
        affinity_header,
        dns,
    }))
}

fn static_peers(texts: &[String]) -> Result<Vec<String>, Invalid> {
    let mut peers = Vec::with_capacity(texts.len());
    for text in texts {
        let peer = peer_url(text)?;
        if peers.contains(&peer) {
            return Err(invalid("cluster.peers", format!("lists `{peer}` twice")));
        }
        peers.push(peer);
    }
    Ok(peers)
}

/// `NAME:PORT`, and how often to resolve it.
fn peers_dns(text: &str, refresh_secs: u64) -> Result<PeersDns, Invalid> {
    let parsed = text
        .rsplit_once(':')
        .and_then(|(host, port)| Some((host, port.parse::<u16>().ok()?)))
        .filter(|(host, _)| !host.is_empty() && !host.contains('/'));
    let Some((host, port)) = parsed else {
        return Err(invalid(
            "cluster.peers_dns",
            format!("`{text}` is not NAME:PORT, like wsbridge-peers.default.svc:8080"),
        ));
    };
    let every = Duration::from_secs(at_least_one("cluster.dns_refresh_secs", refresh_secs)?);
    Ok(PeersDns {
        host: host.to_owned(),
        port,
        every: within_ten_years("cluster.dns_refresh_secs", every)?,
    })
}

/// This replica's URL: one of the static peers, or with DNS `http://IP:PORT` (written as a
/// resolution writes it), which is how the others will know it.
fn self_url(text: &str, peers: &[String], dns: bool) -> Result<String, Invalid> {
    let me_url = peer_url(text).map_err(|_| {
        invalid(
            "cluster.self",
            "must be this replica's base URL, like http://10.0.0.2:8080",
        )
    })?;
    if dns {
        let address = me_url
            .trim_start_matches("http://")
            .parse::<SocketAddr>()
            .map_err(|_| {
                invalid(
                    "cluster.self",
                    format!(
                        "`{me_url}` must be http://IP:PORT with cluster.peers_dns (the pod's IP)"
                    ),
                )
            })?;
        return Ok(format!("http://{address}"));
    }
    if !peers.contains(&me_url) {
        return Err(invalid(
            "cluster.self",
            format!("`{me_url}` is not one of cluster.peers"),
        ));
    }
    Ok(me_url)
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
        assert_eq!(cluster.self_url, "http://10.0.0.2:8080");
        assert!(cluster.dns.is_none());
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
        assert_eq!(cluster.self_url, "http://127.0.0.1:2");
        assert_eq!(cluster.secret.expose(), "0123456789abcdef0123");
    }

    #[test]
    fn peers_can_come_from_a_dns_name_and_self_is_then_an_ip() {
        let text = "[cluster]\npeers_dns = \"wsbridge-peers.default.svc:8080\"\n\
                    self = \"http://[fd00::0:1]:8080/\"\nsecret = \"0123456789abcdef\"\n";
        let cluster = load(text, &[]).unwrap().cluster.unwrap();
        let dns = cluster.dns.unwrap();
        assert_eq!(
            (dns.host.as_str(), dns.port),
            ("wsbridge-peers.default.svc", 8080)
        );
        assert_eq!(dns.every, std::time::Duration::from_secs(5));
        assert_eq!(cluster.self_url, "http://[fd00::1]:8080");
        assert!(cluster.peers.is_empty());
        let secret = "secret = \"0123456789abcdef\"\n";
        for (text, expected) in [
            (
                "peers_dns = \"svc\"\nself = \"http://10.0.0.1:1\"\n",
                "is not NAME:PORT",
            ),
            (
                "peers_dns = \"svc:80\"\nself = \"http://pod-1:80\"\n",
                "must be http://IP:PORT",
            ),
            (
                "peers_dns = \"svc:80\"\npeers = [\"http://a:1\"]\nself = \"http://a:1\"\n",
                "cannot be used with cluster.peers",
            ),
            (
                "peers_dns = \"svc:80\"\nself = \"http://10.0.0.1:80\"\ndns_refresh_secs = 0\n",
                "cluster.dns_refresh_secs",
            ),
        ] {
            let error = load(&format!("[cluster]\n{text}{secret}"), &[]).unwrap_err();
            assert!(error.to_string().contains(expected), "{text}: {error}");
        }
    }
}
