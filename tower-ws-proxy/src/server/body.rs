//! The body of the requests the server hands its service.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

/// A request's body as the server hands it to its service: hyper's [`Incoming`] for a
/// request hyper read, none for a WebSocket handshake the server read itself (a `GET`
/// without a body). Any `Body<Data = Bytes>` service takes it, an axum `Router` included.
///
/// ```
/// use http_body_util::BodyExt;
/// use tower_ws_proxy::server::RequestBody;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let body = RequestBody::default();
/// assert!(body.collect().await.unwrap().to_bytes().is_empty());
/// # }
/// ```
#[derive(Debug, Default)]
pub struct RequestBody(Option<Incoming>);

impl From<Incoming> for RequestBody {
    fn from(body: Incoming) -> Self {
        Self(Some(body))
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match &mut self.get_mut().0 {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.0
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}
