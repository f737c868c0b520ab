//! Replicas of a cluster (docs/architecture.md, "Cluster") sharing one simulator, in-process
//! on ports chosen before they start (each must know the others' URLs).

use wsbridge::Proxy;
use wsbridge::config::{BaseUrl, ClusterConfig, Config, Secret};
use wsbridge::simulator::SimulatorHandle;

use super::{KEY, Reply, metric, request, request_with};

pub const SECRET: &str = "cluster-test-secret-0123456789";

/// `http://127.0.0.1:PORT` for `n` free ports.
pub fn peer_urls(n: usize) -> Vec<String> {
    let listeners: Vec<_> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    listeners
        .iter()
        .map(|l| format!("http://{}", l.local_addr().unwrap()))
        .collect()
}

pub async fn replica(sim: &SimulatorHandle, peers: &[String], me: usize) -> Proxy {
    replica_with(sim, peers, me, |_| {}).await
}

/// [`replica`], with `tune` applied to its configuration last.
pub async fn replica_with(
    sim: &SimulatorHandle,
    peers: &[String],
    me: usize,
    tune: impl FnOnce(&mut Config),
) -> Proxy {
    let mut config = Config::default();
    config.server.listen = peers[me].trim_start_matches("http://").parse().unwrap();
    config.upstream.base_url = BaseUrl::parse(&sim.base_url()).unwrap();
    config.pool.min_idle = 0;
    config.cluster = Some(ClusterConfig {
        peers: peers.to_vec(),
        self_url: peers[me].clone(),
        secret: Secret::new(SECRET),
        affinity_header: None,
        dns: None,
    });
    tune(&mut config);
    Proxy::start(config).await.unwrap()
}

pub async fn metric_of(url: &str, series: &str) -> f64 {
    let metrics = request("GET", &format!("{url}/metrics"), None, None).await;
    metric(&metrics.body, series)
}

pub fn v1(peers: &[String]) -> Vec<String> {
    peers.iter().map(|peer| format!("{peer}/v1")).collect()
}

/// A JSON `POST` to `url` with [`KEY`] and `extra` headers.
pub async fn post_with(url: &str, body: String, extra: &[(&str, &str)]) -> Reply {
    let authorization = format!("Bearer {KEY}");
    let mut headers = vec![
        ("authorization", authorization.as_str()),
        ("content-type", "application/json"),
    ];
    headers.extend_from_slice(extra);
    request_with("POST", url, &headers, Some(body)).await
}

/// Three-or-more replicas of `peers` whose `cluster.affinity_header` is `session_id`.
pub async fn affinity_replicas(sim: &SimulatorHandle, peers: &[String]) -> Vec<Proxy> {
    let mut replicas = Vec::new();
    for me in 0..peers.len() {
        let header = "session_id".parse().unwrap();
        let tune = |config: &mut Config| {
            config.cluster.as_mut().unwrap().affinity_header = Some(header);
        };
        replicas.push(replica_with(sim, peers, me, tune).await);
    }
    replicas
}
