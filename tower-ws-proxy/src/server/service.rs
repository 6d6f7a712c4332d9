//! What the server can serve, named once.

use http::{Request, Response};
use hyper::body::Body;
use tower_service::Service;

use super::RequestBody;
use crate::BoxError;

/// A `tower::Service` the server can serve: it answers HTTP requests, can be cloned for each
/// connection, and its futures and response bodies can move between threads. Implemented for
/// every such service (an axum `Router`, a `tower::service_fn`, a `ServiceBuilder` stack).
///
/// ```
/// use tower_ws_proxy::server::HttpService;
///
/// fn servable(_: impl HttpService) {}
/// servable(tower::service_fn(|_: http::Request<tower_ws_proxy::server::RequestBody>| async {
///     Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Empty::<bytes::Bytes>::new()))
/// }));
/// ```
pub trait HttpService:
    Service<
        Request<RequestBody>,
        Response = Response<Self::ResponseBody>,
        Error: Into<BoxError>,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static
{
    /// The body of its responses.
    type ResponseBody: Body<Data: Send, Error: Into<BoxError>> + Send + 'static;
}

impl<S, B> HttpService for S
where
    S: Service<Request<RequestBody>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body<Data: Send, Error: Into<BoxError>> + Send + 'static,
{
    type ResponseBody = B;
}
