use std::{
    convert::Infallible,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use http::Response;
use pin_project_lite::pin_project;

use crate::ProxyBody;

pin_project! {
    /// The response future of [`ClientLimit`](super::ClientLimit): the service's, or a 429.
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = StateProj]
    #[derive(Debug)]
    enum State<F> {
        Passed { #[pin] future: F },
        Refused { response: Option<Response<ProxyBody>> },
    }
}

impl<F> ResponseFuture<F> {
    pub(super) fn passed(future: F) -> Self {
        Self {
            state: State::Passed { future },
        }
    }

    pub(super) fn refused(response: Response<ProxyBody>) -> Self {
        Self {
            state: State::Refused {
                response: Some(response),
            },
        }
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ProxyBody>, Infallible>>,
{
    type Output = Result<Response<ProxyBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Passed { future } => future.poll(cx),
            StateProj::Refused { response } => Poll::Ready(Ok(response
                .take()
                .expect("a refused future is polled once after it is ready"))),
        }
    }
}
