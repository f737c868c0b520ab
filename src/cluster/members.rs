//! Who the replicas are (docs/architecture.md, "Cluster"): the static `cluster.peers`, or the
//! addresses `cluster.peers_dns` resolves to (a Kubernetes headless Service), re-resolved
//! every `cluster.dns_refresh_secs`. This replica is always a member. Replicas that resolve at
//! slightly different moments may briefly disagree on an owner: a request is then forwarded
//! once more than needed (a forwarded request is always served where it arrives), never
//! looped.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use crate::config::{ClusterConfig, PeersDns};

/// One view of the membership: every replica's base URL, and which is this one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Members {
    pub(super) peers: Vec<String>,
    pub(super) me: usize,
}

impl Members {
    /// `peers` with `self_url` added when missing.
    fn new(mut peers: Vec<String>, self_url: &str) -> Self {
        if !peers.iter().any(|peer| peer == self_url) {
            peers.push(self_url.to_owned());
        }
        let me = peers.iter().position(|peer| peer == self_url).unwrap_or(0);
        Self { peers, me }
    }

    /// The members a resolution gives: `http://ADDRESS` for each, this replica included,
    /// sorted so that every replica builds the same list.
    fn resolved(addresses: impl IntoIterator<Item = SocketAddr>, self_url: &str) -> Self {
        let mut peers: Vec<String> = addresses
            .into_iter()
            .map(|address| format!("http://{address}"))
            .collect();
        peers.push(self_url.to_owned());
        peers.sort();
        peers.dedup();
        Self::new(peers, self_url)
    }
}

/// The current members, kept up to date in the background when they come from DNS.
#[derive(Debug)]
pub(super) struct Membership {
    current: Arc<RwLock<Arc<Members>>>,
    refresher: Option<tokio::task::AbortHandle>,
}

impl Membership {
    /// Starts the DNS refresher, if any (so this runs in a tokio runtime).
    pub(super) fn new(config: &ClusterConfig) -> Self {
        let first = Members::new(config.peers.clone(), &config.self_url);
        let current = Arc::new(RwLock::new(Arc::new(first)));
        let refresher = config.dns.clone().map(|dns| {
            let task = refresh(dns, config.self_url.clone(), current.clone());
            tokio::spawn(task).abort_handle()
        });
        Self { current, refresher }
    }

    pub(super) fn get(&self) -> Arc<Members> {
        match self.current.read() {
            Ok(members) => members.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        if let Some(refresher) = &self.refresher {
            refresher.abort();
        }
    }
}

/// Resolves `dns` now and then every `dns.every`, replacing the members when they change;
/// a failed resolution keeps the last members.
async fn refresh(dns: PeersDns, self_url: String, current: Arc<RwLock<Arc<Members>>>) {
    loop {
        match tokio::net::lookup_host((dns.host.as_str(), dns.port)).await {
            Ok(addresses) => {
                let members = Members::resolved(addresses, &self_url);
                let mut slot = current.write().unwrap_or_else(|p| p.into_inner());
                if **slot != members {
                    tracing::info!(peers = ?members.peers, "cluster members changed");
                    *slot = Arc::new(members);
                }
            }
            Err(error) => {
                tracing::warn!(host = %dns.host, %error, "cannot resolve cluster.peers_dns");
            }
        }
        tokio::time::sleep(dns.every).await;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn every_replica_builds_the_same_list_from_a_resolution() {
        let a: SocketAddr = "10.0.0.2:8080".parse().unwrap();
        let b: SocketAddr = "10.0.0.1:8080".parse().unwrap();
        let v6: SocketAddr = "[fd00::1]:8080".parse().unwrap();
        let one = Members::resolved([a, b, v6], "http://10.0.0.1:8080");
        let two = Members::resolved([v6, b, a], "http://10.0.0.2:8080");
        assert_eq!(one.peers, two.peers);
        assert_eq!(one.peers[0], "http://10.0.0.1:8080");
        assert!(one.peers.contains(&"http://[fd00::1]:8080".to_owned()));
        assert_eq!((one.me, two.me), (0, 1));
        // Not (yet) in the records: still a member.
        let alone = Members::resolved([a], "http://10.0.0.9:8080");
        assert_eq!(alone.peers.len(), 2);
        assert_eq!(alone.peers[alone.me], "http://10.0.0.9:8080");
    }

    #[tokio::test]
    async fn a_dns_name_is_resolved_into_members() {
        let config = ClusterConfig {
            peers: Vec::new(),
            self_url: "http://10.9.9.9:1".into(),
            secret: crate::config::Secret::new("0123456789abcdef"),
            affinity_header: None,
            dns: Some(PeersDns {
                host: "localhost".into(),
                port: 7,
                every: Duration::from_secs(60),
            }),
        };
        let membership = Membership::new(&config);
        assert_eq!(membership.get().peers, ["http://10.9.9.9:1"]);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while membership.get().peers.len() < 2 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let members = membership.get();
        assert!(
            members.peers.contains(&"http://127.0.0.1:7".to_owned()),
            "{members:?}"
        );
        assert_eq!(members.peers[members.me], "http://10.9.9.9:1");
    }
}
