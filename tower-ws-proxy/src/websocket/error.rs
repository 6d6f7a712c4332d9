//! Errors from below, as the responses the client gets: the proxy's own error type is
//! `Infallible`, so it drops into `axum::Router` as is.

use http::{Response, StatusCode};
use tower_hashring::error::http_status;

use crate::{record::HandshakeResult, text_response, BadUpgrade, ProxyBody, Refusal};

/// Why an upgrade was answered before anything went below.
#[derive(Clone, Copy, Debug)]
pub(super) enum NotAdmitted {
    /// A malformed handshake: 400, or 426 for another version.
    BadHandshake(BadUpgrade),
    /// No place under the connection cap, or shutting down: 503.
    NoPlace(Refusal),
}

impl NotAdmitted {
    /// How its handshake is counted.
    pub(super) fn result(self) -> HandshakeResult {
        match self {
            NotAdmitted::BadHandshake(_) => HandshakeResult::bad_request,
            NotAdmitted::NoPlace(_) => HandshakeResult::refused,
        }
    }

    pub(super) fn into_response(self) -> Response<ProxyBody> {
        match self {
            NotAdmitted::BadHandshake(bad) => bad.into_response(),
            NotAdmitted::NoPlace(refusal) => {
                text_response(StatusCode::SERVICE_UNAVAILABLE, refusal.to_string())
            }
        }
    }
}

/// A balancer's own errors say what is wrong with the request or the ring; anything else
/// came from a backend, and goes to the log only.
pub(super) fn error_response(
    error: &(dyn std::error::Error + 'static),
    public: &str,
) -> Response<ProxyBody> {
    match http_status(error) {
        StatusCode::BAD_GATEWAY => {
            tracing::warn!(%error, "{public}");
            text_response(StatusCode::BAD_GATEWAY, public)
        }
        status => text_response(status, error.to_string()),
    }
}
