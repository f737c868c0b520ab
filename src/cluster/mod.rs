//! Several replicas behind one ordinary load balancer (docs/architecture.md, "Cluster"): each
//! conversation has an owner replica ([`owner`]), and a replica that receives a bridged request
//! it does not own forwards it there over HTTP, streamed back as it comes, with a signed
//! internal header ([`hop`]). So every turn of a conversation reaches the one replica whose
//! socket holds its head, whichever replica the load balancer picked.
//!
//! An owner that cannot be connected to is skipped for [`DOWN_FOR`] by this replica (its
//! conversations go to their next owner in rendezvous order, the same on every replica), and
//! a request whose forward failed is served here: correct, only slower. So is one the owner
//! refused at its hop check (another secret, clock skew), and a streamed one whose answer's
//! head did not come within [`head_timeout`] (the owner is then marked down too).

mod hop;
mod members;
mod owner;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::Response;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Map, Value};
use tokio::time::Instant;

pub use hop::{Refused, X_WSBRIDGE_FORWARDED, X_WSBRIDGE_HOP_REFUSED};

use crate::auth::Credential;
use crate::config::ClusterConfig;
use crate::metrics::Metrics;
use crate::net::strip_hop_by_hop;

/// How long an owner that refused a connection is skipped.
pub const DOWN_FOR: Duration = Duration::from_secs(5);
/// Connecting to a peer, at most.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// TCP keepalive on peer connections: a peer host that vanished mid-answer is noticed.
const KEEPALIVE: Duration = Duration::from_secs(30);
/// A warning about one peer refusing the hop is logged at most this often.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// How long a forwarded streamed request waits for the owner's response head: twice
/// `upstream.first_event_timeout`, since the owner sends it with the first event and answers
/// 504 after that timeout (the rest is room for its queue and a retried connect). A
/// non-streamed answer's head comes with its whole body, which has no bound to wait for.
pub fn head_timeout(first_event_timeout: Duration) -> Duration {
    first_event_timeout.saturating_mul(2)
}

/// Set by the owner on a forwarded `/v1/responses` answer: the response id, which the
/// forwarding replica remembers (and removes) so that a later `previous_response_id` naming it
/// is sent to the same owner.
pub const X_WSBRIDGE_RESPONSE_ID: HeaderName = HeaderName::from_static("x-wsbridge-response-id");

/// This replica's view of the cluster.
#[derive(Debug)]
pub struct Cluster {
    members: members::Membership,
    ring: owner::Ring,
    signer: hop::Signer,
    affinity_header: Option<HeaderName>,
    client: Client<HttpConnector, Body>,
    head_timeout: Duration,
    /// When a refused hop was last logged, by peer URL.
    warned: Mutex<HashMap<String, Instant>>,
    /// Peers skipped until then, by URL.
    down: Mutex<HashMap<String, Instant>>,
    issued: Mutex<owner::Issued>,
    metrics: Arc<Metrics>,
}

/// A bridged request as a front-end read it. `fields` is the Responses body whose input
/// identifies the conversation (for a chat request, its translation); `body` the bytes as
/// they came, which are what is forwarded.
#[derive(Debug, Clone, Copy)]
pub struct Inbound<'a> {
    pub credential: &'a Credential,
    pub uri: &'a Uri,
    pub headers: &'a HeaderMap,
    pub fields: &'a Map<String, Value>,
    pub body: &'a Bytes,
    /// The answer is SSE (`stream: true`): its head comes with the first event.
    pub stream: bool,
}

/// The mark a verified forwarded request carries (a request extension): serve it here.
#[derive(Debug, Clone)]
pub struct Forwarded {
    /// The sending replica's base URL.
    pub from: Arc<str>,
}

/// The replica that served a bridged request, for the access line (a response extension).
#[derive(Debug, Clone)]
pub struct Owner(pub Arc<str>);

/// A request this replica serves itself.
#[derive(Debug)]
pub struct Local {
    owner: Arc<str>,
    for_peer: bool,
}

impl Local {
    /// True when the answer should carry [`X_WSBRIDGE_RESPONSE_ID`] (a peer forwarded it).
    pub fn wants_response_id(&self) -> bool {
        self.for_peer
    }

    /// Marks the local answer: the owner for the access line, the response id for the peer.
    pub fn finish(self, response: &mut Response, response_id: Option<&str>) {
        if let Some(value) = response_id
            .filter(|_| self.for_peer)
            .and_then(|id| HeaderValue::from_str(id).ok())
        {
            response.headers_mut().insert(X_WSBRIDGE_RESPONSE_ID, value);
        }
        response.extensions_mut().insert(Owner(self.owner));
    }
}

/// Where a request should go before anything is tried.
#[derive(Debug, Clone, Copy)]
struct Target {
    /// The conversation's key; `None` when routed by a remembered response id.
    key: Option<u128>,
    /// An index in `members.peers`.
    owner: usize,
}

impl Cluster {
    /// Starts the DNS refresher when the members come from `cluster.peers_dns`, so this runs
    /// in a tokio runtime. `first_event_timeout` is `upstream.first_event_timeout`.
    pub fn new(
        config: &ClusterConfig,
        first_event_timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        let secret = config.secret.expose().as_bytes();
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        http.set_keepalive(Some(KEEPALIVE));
        // Shorter than a peer's `server.header_read_timeout`, so a pooled connection is not
        // reused just as the peer closes it.
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(10))
            .build(http);
        Self {
            down: Mutex::default(),
            members: members::Membership::new(config),
            ring: owner::Ring::new(secret),
            signer: hop::Signer::new(secret),
            affinity_header: config.affinity_header.clone(),
            client,
            head_timeout: head_timeout(first_event_timeout),
            warned: Mutex::default(),
            issued: Mutex::default(),
            metrics,
        }
    }

    /// Checks the internal header of a request: refused (counted; 403 as its response)
    /// unless a peer signed this very request within [`hop::MAX_SKEW`].
    pub fn verify(
        &self,
        value: &HeaderValue,
        method: &Method,
        uri: &Uri,
        body: &[u8],
    ) -> Result<Forwarded, Refused> {
        let signed = hop::Signed { method, uri, body };
        let members = self.members.get();
        let me = &members.peers[members.me];
        match self.signer.verify(value, me, signed, SystemTime::now()) {
            Ok(from) => Ok(Forwarded {
                from: Arc::from(from),
            }),
            Err(refused) => {
                self.metrics.cluster_forged_refused();
                tracing::warn!(
                    reason = refused.reason(),
                    "internal forwarding header refused"
                );
                Err(refused)
            }
        }
    }

    /// Forwards `inbound` to its owner and returns the owner's answer, or says to serve it
    /// here (this replica owns it, a peer sent it, or forwarding failed).
    pub async fn route(
        &self,
        inbound: Inbound<'_>,
        forwarded: Option<Forwarded>,
    ) -> Result<Response, Local> {
        let members = self.members.get();
        let local = |for_peer| Local {
            owner: Arc::from(members.peers[members.me].as_str()),
            for_peer,
        };
        if forwarded.is_some() {
            self.metrics.cluster_served_for_peer();
            return Err(local(true));
        }
        let Some(mut target) = self.target(&members, &inbound) else {
            return Err(local(false));
        };
        let mut failed = false;
        while target.owner != members.me {
            let peer = &members.peers[target.owner];
            let failure = match self.send(&members.peers[members.me], peer, inbound).await {
                Ok(response) => {
                    self.metrics.cluster_forwarded();
                    return Ok(response);
                }
                Err(failure) => failure,
            };
            failed = true;
            if !self.failed(peer, failure) {
                break;
            }
            target.owner = match target.key {
                Some(key) => self.owner(&members, key),
                None => members.me,
            };
        }
        if failed {
            self.metrics.cluster_local_fallback();
        }
        Err(local(false))
    }

    /// Logs and counts a failed forward to `peer`, marking it down when it is unreachable;
    /// true when the request may go to the next owner (nothing reached this one).
    fn failed(&self, peer: &str, failure: Failure) -> bool {
        match failure {
            Failure::Connect(error) => {
                self.metrics.cluster_owner_unreachable();
                tracing::warn!(owner = %peer, %error, "owner replica unreachable");
                self.mark_down(peer);
                true
            }
            Failure::NoHead => {
                self.metrics.cluster_owner_unreachable();
                tracing::warn!(owner = %peer, timeout_ms = self.head_timeout.as_millis(),
                    "owner replica sent no answer in time; serving here");
                self.mark_down(peer);
                false
            }
            Failure::Refused => {
                let now = Instant::now();
                let mut warned = lock(&self.warned);
                if warned.get(peer).is_none_or(|at| now >= *at + WARN_EVERY) {
                    warned.insert(peer.to_owned(), now);
                    tracing::warn!(owner = %peer,
                        "owner replica refused the internal header (another cluster.secret, \
                         clock skew over a minute, or its URL spelt otherwise in cluster.peers); \
                         serving here");
                }
                false
            }
            Failure::Other(error) => {
                tracing::warn!(owner = %peer, %error, "forwarding failed; serving here");
                false
            }
        }
    }

    fn mark_down(&self, peer: &str) {
        lock(&self.down).insert(peer.to_owned(), Instant::now() + DOWN_FOR);
    }

    /// The owner of `key` among the members that are up.
    fn owner(&self, members: &members::Members, key: u128) -> usize {
        let down = lock(&self.down);
        let now = Instant::now();
        self.ring.owner(key, &members.peers, |index| {
            index == members.me
                || down
                    .get(&members.peers[index])
                    .is_none_or(|until| now >= *until)
        })
    }

    /// The owner of a request: the replica that issued its `previous_response_id` when this
    /// replica remembers it and it is up, else the owner of its conversation's key: the
    /// affinity header's value when present, else its root items (for a request naming a
    /// `previous_response_id`, whose input holds only new items, none: it is served here).
    fn target(&self, members: &members::Members, inbound: &Inbound<'_>) -> Option<Target> {
        let previous = inbound
            .fields
            .get("previous_response_id")
            .and_then(Value::as_str);
        if let Some(target) = previous.and_then(|id| self.issuer(members, id)) {
            return Some(target);
        }
        let affinity = self
            .affinity_header
            .as_ref()
            .and_then(|name| inbound.headers.get(name))
            .map(HeaderValue::as_bytes);
        if previous.is_some() && affinity.is_none() {
            return None;
        }
        let key = self
            .ring
            .key(inbound.credential, affinity, inbound.fields)?;
        let owner = self.owner(members, key);
        Some(Target {
            key: Some(key),
            owner,
        })
    }

    /// The replica that answered response `id` when this replica forwarded it there, if it
    /// is a member and not marked down.
    fn issuer(&self, members: &members::Members, id: &str) -> Option<Target> {
        let issuer = lock(&self.issued).owner(id)?;
        let owner = members.peers.iter().position(|peer| **peer == *issuer)?;
        let up = lock(&self.down)
            .get(&members.peers[owner])
            .is_none_or(|until| Instant::now() >= *until);
        up.then_some(Target { key: None, owner })
    }

    /// One forward: the client's headers (minus hop-by-hop ones) and body, signed; the
    /// answer's head and body relayed as they come.
    async fn send(&self, me: &str, peer: &str, inbound: Inbound<'_>) -> Result<Response, Failure> {
        let path = inbound
            .uri
            .path_and_query()
            .map_or("/", |path| path.as_str());
        let mut headers = inbound.headers.clone();
        strip_hop_by_hop(&mut headers);
        headers.remove(header::HOST);
        headers.remove(header::CONTENT_LENGTH);
        headers.remove(header::EXPECT);
        let signed = hop::Signed {
            method: &Method::POST,
            uri: inbound.uri,
            body: inbound.body,
        };
        let mark = self.signer.header(me, peer, signed, SystemTime::now());
        headers.insert(X_WSBRIDGE_FORWARDED, mark);
        let mut request = axum::http::Request::new(Body::from(inbound.body.clone()));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = format!("{peer}{path}").parse().unwrap_or_default();
        *request.headers_mut() = headers;
        let waiting = self.client.request(request);
        let response = if inbound.stream {
            tokio::time::timeout(self.head_timeout, waiting)
                .await
                .map_err(|_| Failure::NoHead)?
        } else {
            waiting.await
        };
        let response = response.map_err(|error| match error.is_connect() {
            true => Failure::Connect(error),
            false => Failure::Other(error),
        })?;
        if response.status() == StatusCode::FORBIDDEN
            && response.headers().contains_key(X_WSBRIDGE_HOP_REFUSED)
        {
            return Err(Failure::Refused);
        }
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        if let Some(id) = parts.headers.remove(X_WSBRIDGE_RESPONSE_ID)
            && let Ok(id) = id.to_str()
        {
            lock(&self.issued).remember(id.to_owned(), Arc::from(peer));
        }
        parts.extensions.insert(Owner(Arc::from(peer)));
        Ok(Response::from_parts(parts, Body::new(body)))
    }
}

/// Why a forward did not give the owner's answer.
#[derive(Debug)]
enum Failure {
    /// No connection (refused, unreachable, [`CONNECT_TIMEOUT`]): nothing reached the owner.
    Connect(hyper_util::client::legacy::Error),
    /// The connection failed after the request may have reached the owner.
    Other(hyper_util::client::legacy::Error),
    /// A streamed request's answer head did not come within [`head_timeout`].
    NoHead,
    /// The owner's hop check refused the request (its 403 with [`X_WSBRIDGE_HOP_REFUSED`]).
    Refused,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
