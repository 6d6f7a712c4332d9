//! What a service must be for [`serve`](super::serve) and
//! [`serve_on_workers`](super::serve_on_workers) to host it.

use std::future::Future;

use http::{Request, Response};
use hyper::body::{Body, Incoming};
use tower_service::Service;

use crate::BoxError;

/// A `tower::Service` the server can host: it takes hyper's requests, answers with any body
/// whose data and errors can cross threads, is cloned per connection, and its futures run on
/// spawned tasks. Every service meeting those bounds implements it (an axum `Router`, a
/// `tower::service_fn`, the proxy); the associated types only name what the bounds require,
/// so that `S: HttpService` is the one bound a function needs.
pub trait HttpService:
    Service<
        Request<Incoming>,
        Response = Response<Self::ResponseBody>,
        Error = Self::ServiceError,
        Future = Self::ServiceFuture,
    > + Clone
    + Send
    + 'static
{
    /// The body of its responses.
    type ResponseBody: Body<Data: Send, Error: Into<BoxError>> + Send + 'static;
    /// Its error.
    type ServiceError: Into<BoxError>;
    /// Its response future.
    type ServiceFuture: Future<Output = Result<Response<Self::ResponseBody>, Self::ServiceError>>
        + Send
        + 'static;
}

impl<S, B> HttpService for S
where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type ResponseBody = B;
    type ServiceError = S::Error;
    type ServiceFuture = S::Future;
}
