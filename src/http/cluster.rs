//! The hooks of owner routing between replicas (docs/architecture.md, "Cluster"): the
//! middleware that checks the internal header, and the routing call the bridged front-ends
//! make once they have read a request.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::App;
use crate::cluster::X_WSBRIDGE_FORWARDED;
use crate::protocol::OpenAiError;

/// Owner routing of a bridged request (docs/architecture.md, "Cluster"): `Ok` with the
/// owner's answer when another replica owns it, else how to serve it here (`None`: no cluster).
pub(super) async fn owner_route(
    app: &App,
    inbound: crate::cluster::Inbound<'_>,
    forwarded: Option<crate::cluster::Forwarded>,
) -> Result<Response, Option<crate::cluster::Local>> {
    match &app.cluster {
        None => Err(None),
        Some(cluster) => cluster.route(inbound, forwarded).await.map_err(Some),
    }
}

/// A request with the cluster's internal header (docs/architecture.md, "Cluster"): served
/// here, marked [`crate::cluster::Forwarded`], when a peer signed it; else 403. Without a
/// `[cluster]` the header means nothing and is dropped.
pub(super) async fn internal_hop(
    State(app): State<Arc<App>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(value) = request.headers().get(X_WSBRIDGE_FORWARDED).cloned() else {
        return next.run(request).await;
    };
    let (mut parts, body) = request.into_parts();
    parts.headers.remove(X_WSBRIDGE_FORWARDED);
    let Some(cluster) = &app.cluster else {
        return next.run(Request::from_parts(parts, body)).await;
    };
    // The signature covers the body: read it (it is read whole by the handler anyway).
    let limit = app.config.server.max_body_bytes;
    let Ok(bytes) = axum::body::to_bytes(body, limit).await else {
        return OpenAiError::invalid_request(format!(
            "The request body could not be read, or is over {limit} bytes \
             (server.max_body_bytes)."
        ))
        .into_response();
    };
    match cluster.verify(&value, &parts.method, &parts.uri, &bytes) {
        Ok(forwarded) => {
            parts.extensions.insert(forwarded);
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Err(refused) => refused.into_response(),
    }
}
