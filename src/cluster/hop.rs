//! The internal hop between replicas (docs/architecture.md, "Cluster"): a forwarded request
//! carries `x-wsbridge-forwarded: v1;ts=SECONDS;from=URL;sig=HEX`, an HMAC-SHA256 keyed by
//! `cluster.secret` over the version, the timestamp, the sending and receiving replicas, the
//! method, the path and query, and the SHA-256 of the body. The receiving replica serves such
//! a request itself (so a request is forwarded at most once) and refuses one whose header does
//! not verify, so the hop cannot be used from outside.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderName, HeaderValue, Method, Uri};
use ring::{digest, hmac};

/// The internal header.
pub const X_WSBRIDGE_FORWARDED: HeaderName = HeaderName::from_static("x-wsbridge-forwarded");

/// Set on the 403 of a refused internal header, so a forwarding replica tells the owner's hop
/// check (another secret, clock skew, its URL spelt otherwise) from an answer to relay.
pub const X_WSBRIDGE_HOP_REFUSED: HeaderName = HeaderName::from_static("x-wsbridge-hop-refused");

/// How far a forwarded request's timestamp may be from the receiver's clock.
pub(super) const MAX_SKEW: Duration = Duration::from_secs(60);

/// Why an internal header was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Not `v1;ts=…;from=…;sig=…`.
    Malformed,
    /// `from` is the receiving replica itself.
    FromSelf,
    /// Older or newer than [`MAX_SKEW`].
    Stale,
    /// The HMAC does not match.
    BadSignature,
}

/// 403 in OpenAI's shape.
impl axum::response::IntoResponse for Refused {
    fn into_response(self) -> axum::response::Response {
        let mut response = crate::protocol::OpenAiError::new(
            axum::http::StatusCode::FORBIDDEN,
            "invalid_request_error",
            format!(
                "The {X_WSBRIDGE_FORWARDED} header is internal to a wsbridge cluster and was \
                 refused: {}.",
                self.reason()
            ),
        )
        .with_code("forbidden")
        .into_response();
        response
            .headers_mut()
            .insert(X_WSBRIDGE_HOP_REFUSED, HeaderValue::from_static("1"));
        response
    }
}

impl Refused {
    pub fn reason(self) -> &'static str {
        match self {
            Self::Malformed => "it is malformed",
            Self::FromSelf => "it claims to come from this replica",
            Self::Stale => "its timestamp is too old or in the future",
            Self::BadSignature => "its signature does not verify",
        }
    }
}

/// What is signed, besides the replicas.
#[derive(Debug, Clone, Copy)]
pub(super) struct Signed<'a> {
    pub(super) method: &'a Method,
    pub(super) uri: &'a Uri,
    pub(super) body: &'a [u8],
}

/// Signs and checks internal headers.
#[derive(Debug)]
pub(super) struct Signer {
    key: hmac::Key,
}

impl Signer {
    pub(super) fn new(secret: &[u8]) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }
    }

    /// The header `from` sends to `to` for `request`, at `now`.
    pub(super) fn header(
        &self,
        from: &str,
        to: &str,
        request: Signed<'_>,
        now: SystemTime,
    ) -> HeaderValue {
        let ts = seconds(now);
        let tag = hmac::sign(&self.key, &message(ts, from, to, request));
        let value = format!("v1;ts={ts};from={from};sig={}", hex(tag.as_ref()));
        HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static("v1"))
    }

    /// Checks a header received by `to` (this replica); the sender's URL when it verifies.
    /// The sender need not be a member this replica knows: only replicas hold the secret, and
    /// with `cluster.peers_dns` a new replica forwards before the others have resolved it.
    pub(super) fn verify(
        &self,
        value: &HeaderValue,
        to: &str,
        request: Signed<'_>,
        now: SystemTime,
    ) -> Result<String, Refused> {
        let text = value.to_str().map_err(|_| Refused::Malformed)?;
        let mut fields = text.split(';');
        let (Some("v1"), Some(ts), Some(from), Some(sig), None) = (
            fields.next(),
            fields.next().and_then(|f| f.strip_prefix("ts=")),
            fields.next().and_then(|f| f.strip_prefix("from=")),
            fields.next().and_then(|f| f.strip_prefix("sig=")),
            fields.next(),
        ) else {
            return Err(Refused::Malformed);
        };
        let ts: u64 = ts.parse().map_err(|_| Refused::Malformed)?;
        let sig = unhex(sig).ok_or(Refused::Malformed)?;
        if from == to {
            return Err(Refused::FromSelf);
        }
        if seconds(now).abs_diff(ts) > MAX_SKEW.as_secs() {
            return Err(Refused::Stale);
        }
        hmac::verify(&self.key, &message(ts, from, to, request), &sig)
            .map_err(|_| Refused::BadSignature)?;
        Ok(from.to_owned())
    }
}

fn seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

fn message(ts: u64, from: &str, to: &str, request: Signed<'_>) -> Vec<u8> {
    let body = digest::digest(&digest::SHA256, request.body);
    let path = request
        .uri
        .path_and_query()
        .map_or("/", |path| path.as_str());
    format!(
        "wsbridge-forwarded v1\n{ts}\n{from}\n{to}\n{}\n{path}\n{}",
        request.method,
        hex(body.as_ref())
    )
    .into_bytes()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(&text[at..at + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "http://10.0.0.1:8080";
    const B: &str = "http://10.0.0.2:8080";

    #[test]
    fn a_signed_request_verifies_once_and_nothing_else_does() {
        let signer = Signer::new(b"0123456789abcdef");
        let uri: Uri = "/v1/responses?x=1".parse().unwrap();
        let request = Signed {
            method: &Method::POST,
            uri: &uri,
            body: b"{\"input\":\"hi\"}",
        };
        let now = SystemTime::now();
        let header = signer.header(A, B, request, now);
        assert_eq!(signer.verify(&header, B, request, now), Ok(A.to_owned()));
        let later = now + MAX_SKEW + Duration::from_secs(2);
        assert_eq!(
            signer.verify(&header, B, request, later),
            Err(Refused::Stale)
        );
        // Another body, path, receiver or secret: refused.
        let other_body = Signed {
            body: b"{\"input\":\"ho\"}",
            ..request
        };
        let other_uri: Uri = "/v1/responses".parse().unwrap();
        let other_path = Signed {
            uri: &other_uri,
            ..request
        };
        for changed in [other_body, other_path] {
            assert_eq!(
                signer.verify(&header, B, changed, now),
                Err(Refused::BadSignature)
            );
        }
        assert_eq!(
            signer.verify(&header, A, request, now),
            Err(Refused::FromSelf),
            "a replica never accepts a request from itself"
        );
        let stranger = Signer::new(b"fedcba9876543210");
        assert_eq!(
            stranger.verify(&header, B, request, now),
            Err(Refused::BadSignature)
        );
        for forged in [
            "v1",
            "1",
            "v1;ts=x;from=http://10.0.0.1:8080;sig=00",
            "v1;ts=1;from=http://10.0.0.1:8080;sig=zz",
            "v2;ts=1;from=http://10.0.0.1:8080;sig=00",
        ] {
            let value = HeaderValue::from_static(forged);
            assert_eq!(
                signer.verify(&value, B, request, now),
                Err(Refused::Malformed),
                "{forged}"
            );
        }
        // A replica this one does not know yet, holding the secret: accepted.
        let newcomer = signer.header("http://10.9.9.9:1", B, request, now);
        assert_eq!(
            signer.verify(&newcomer, B, request, now),
            Ok("http://10.9.9.9:1".to_owned())
        );
    }
}
