use std::{
    convert::Infallible,
    fmt,
    future::Future,
    pin::Pin,
    task::{ready, Context, Poll},
};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_service::Service;

use super::{error::error_response, upgrade::PendingUpgrade};
use crate::{BoxError, ConnectionHandle, ProxyBody, RelayHandle};

pin_project! {
    /// The response future of [`WebSocketProxy`](super::WebSocketProxy): the service below
    /// is readied and called in it, and whatever that answers, or fails with, becomes the
    /// client's response. For a WebSocket upgrade answered with a `101`, the relay is
    /// spawned before the response is returned. A refused upgrade is answered without a
    /// call below.
    ///
    /// ```
    /// use std::convert::Infallible;
    ///
    /// use http::{Request, Response};
    /// use tower_layer::Layer;
    /// use tower_service::Service;
    /// use tower_ws_proxy::{
    ///     LiveConnections, ProxyBody, RelayConfig, WebSocketFuture, WebSocketLayer,
    /// };
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let backend = tower::service_fn(|_: Request<ProxyBody>| async {
    ///     Ok::<_, Infallible>(Response::new(ProxyBody::default()))
    /// });
    /// let mut proxy = WebSocketLayer::new(LiveConnections::new(10), RelayConfig::default())
    ///     .layer(backend);
    /// let future: WebSocketFuture<_> = proxy.call(Request::new(ProxyBody::default()));
    /// assert_eq!(future.await.unwrap().status(), 200);
    /// # }
    /// ```
    pub struct ResponseFuture<S, H = RelayHandle>
    where
        S: Service<Request<ProxyBody>>,
    {
        #[pin]
        state: State<S, H>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, H>
    where
        S: Service<Request<ProxyBody>>,
    {
        // Refused before anything went below.
        Answered { response: Option<Response<ProxyBody>> },
        // An ordinary request, below.
        Forwarding { #[pin] answer: Oneshot<S, Request<ProxyBody>> },
        // An admitted WebSocket upgrade, on its way to a backend.
        Upgrading {
            #[pin]
            answer: Oneshot<S, Request<ProxyBody>>,
            upgrade: Option<PendingUpgrade<H>>,
        },
    }
}

impl<S, H> ResponseFuture<S, H>
where
    S: Service<Request<ProxyBody>>,
{
    pub(super) fn answered(response: Response<ProxyBody>) -> Self {
        Self {
            state: State::Answered {
                response: Some(response),
            },
        }
    }

    pub(super) fn forwarding(service: S, request: Request<ProxyBody>) -> Self {
        Self {
            state: State::Forwarding {
                answer: Oneshot::new(service, request),
            },
        }
    }

    pub(super) fn upgrading(
        service: S,
        request: Request<ProxyBody>,
        upgrade: PendingUpgrade<H>,
    ) -> Self {
        Self {
            state: State::Upgrading {
                answer: Oneshot::new(service, request),
                upgrade: Some(upgrade),
            },
        }
    }
}

impl<S, H> Future for ResponseFuture<S, H>
where
    S: Service<Request<ProxyBody>, Response = Response<ProxyBody>>,
    S::Error: Into<BoxError>,
    H: ConnectionHandle,
{
    type Output = Result<Response<ProxyBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        const DONE: &str = "ResponseFuture polled after completion";
        let response = match self.project().state.project() {
            StateProj::Answered { response } => response.take().expect(DONE),
            StateProj::Forwarding { answer } => match ready!(answer.poll(cx)) {
                Ok(response) => response,
                Err(error) => error_response(&*error, "no backend answered"),
            },
            StateProj::Upgrading { answer, upgrade } => {
                let answer = ready!(answer.poll(cx));
                upgrade.take().expect(DONE).answer_client(answer)
            }
        };
        Poll::Ready(Ok(response))
    }
}

impl<S, H> fmt::Debug for ResponseFuture<S, H>
where
    S: Service<Request<ProxyBody>>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Answered { .. } => "answered",
            State::Forwarding { .. } => "forwarding",
            State::Upgrading { .. } => "upgrading",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .finish()
    }
}

pin_project! {
    /// Readies a service, then calls it (the proxy's `poll_ready` leaves that to its
    /// response future).
    #[project = OneshotProj]
    enum Oneshot<S, Req>
    where
        S: Service<Req>,
    {
        NotReady { service: S, request: Option<Req> },
        Called { #[pin] future: S::Future },
    }
}

impl<S, Req> Oneshot<S, Req>
where
    S: Service<Req>,
{
    fn new(service: S, request: Req) -> Self {
        Oneshot::NotReady {
            service,
            request: Some(request),
        }
    }
}

impl<S, Req> Future for Oneshot<S, Req>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            match self.as_mut().project() {
                OneshotProj::NotReady { service, request } => {
                    if let Err(error) = ready!(service.poll_ready(cx)) {
                        return Poll::Ready(Err(error.into()));
                    }
                    let request = request.take().expect("Oneshot polled after completion");
                    let future = service.call(request);
                    self.set(Oneshot::Called { future });
                }
                OneshotProj::Called { future } => return future.poll(cx).map_err(Into::into),
            }
        }
    }
}
