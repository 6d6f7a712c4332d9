//! A plaintext connection's first request, read without hyper when it is a WebSocket
//! handshake. hyper's HTTP/1 connection (its dispatcher, two 8 KiB buffers, a header timer,
//! the upgrade's channel and boxed I/O) costs more per WebSocket than the rest of the
//! handshake; a connection that is about to become a relay needs none of it. So the server
//! reads the head itself (httparse, as hyper does), gives the service the request built on
//! the read buffer, writes the `101` and hands the bare socket to the relay
//! ([`DirectUpgrade`]). Anything else (an ordinary request, a head hyper would refuse) goes
//! to hyper from its first byte ([`Prefixed`]), and hyper answers it as before.
//!
//! - `head`: what the first bytes are, and the request they stand for;
//! - `answer`: the service's answer written to the client;
//! - `prefixed`: the connection with its first bytes read again, for hyper.

mod answer;
mod head;
mod prefixed;

pub(super) use self::prefixed::Prefixed;

use std::{future::poll_fn, time::Duration};

use bytes::{Bytes, BytesMut};
use tokio::{io::AsyncReadExt, net::TcpStream, sync::watch, time::Instant};

use self::head::FirstHead;
use super::{accept::stopped, HttpLimits, HttpService};
use crate::client_upgrade::DirectUpgrade;

/// The bounds on a first head read here: hyper's, for the same connection.
#[derive(Clone, Copy)]
pub(super) struct HeadLimits {
    timeout: Duration,
    max_bytes: usize,
    max_headers: usize,
}

impl HeadLimits {
    pub(super) fn new(limits: &HttpLimits) -> Self {
        Self {
            timeout: limits.head_timeout,
            max_bytes: limits.max_head_bytes.max(8192),
            max_headers: limits.max_headers,
        }
    }
}

/// What became of a connection's first request.
pub(super) enum Served {
    /// A WebSocket handshake, answered here; the connection is the relay's or closed.
    Answered,
    /// The client left, sent nothing in time, or the server stopped first.
    Gone,
    /// For hyper, with the bytes read so far.
    ToHyper(Prefixed<TcpStream>),
}

/// Reads the connection's first head by `deadline` (or, once `stop` turns true, within
/// `grace` of it) and answers it if it is a WebSocket handshake.
pub(super) async fn serve_first_request<S>(
    mut tcp: TcpStream,
    service: &mut S,
    limits: HeadLimits,
    (deadline, grace): (Instant, Duration),
    stop: &mut watch::Receiver<bool>,
) -> Served
where
    S: HttpService,
{
    let mut buffer = BytesMut::with_capacity(2048);
    let head_len = match read_head(&mut tcp, &mut buffer, limits, (deadline, grace), stop).await {
        Some(FirstHead::WebSocket(len)) => len,
        Some(_) => return Served::ToHyper(Prefixed::new(buffer.freeze(), tcp)),
        None => return Served::Gone,
    };
    let buffer = buffer.freeze();
    let head = buffer.slice(..head_len);
    let Some(mut request) = head::request(&head, limits.max_headers) else {
        return Served::ToHyper(Prefixed::new(buffer, tcp));
    };
    // Usually nothing: copied, so that the head's buffer goes with the head.
    let rest = Bytes::copy_from_slice(&buffer[head_len..]);
    drop(buffer);
    let (upgrade, upgraded) = DirectUpgrade::new();
    request.extensions_mut().insert(upgrade);
    if poll_fn(|cx| service.poll_ready(cx)).await.is_err() {
        return Served::Gone;
    }
    let response = match service.call(request).await {
        Ok(response) => response,
        Err(error) => {
            // As hyper does with a service error: the connection ends without an answer.
            tracing::debug!(error = %Into::<crate::BoxError>::into(error), "the service failed a websocket handshake");
            return Served::Gone;
        }
    };
    let deadline = Instant::now() + limits.timeout;
    if let Err(error) = answer::answer(tcp, response, rest, upgraded, deadline).await {
        tracing::debug!(%error, "writing the answer to a websocket handshake failed");
    }
    Served::Answered
}

/// Reads until the head is whole, or is not a WebSocket handshake, or is past the limits
/// (hyper's then: it answers 431 or 400). `None`: EOF, an error or the deadline first.
async fn read_head(
    tcp: &mut TcpStream,
    buffer: &mut BytesMut,
    limits: HeadLimits,
    (deadline, grace): (Instant, Duration),
    stop: &mut watch::Receiver<bool>,
) -> Option<FirstHead> {
    let timer = tokio::time::sleep_until(deadline);
    tokio::pin!(timer);
    let mut stopping = false;
    loop {
        if buffer.capacity() - buffer.len() < 512 {
            buffer.reserve(4096);
        }
        tokio::select! {
            read = tcp.read_buf(buffer) => match read {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            },
            () = &mut timer => return None,
            () = stopped(stop), if !stopping => {
                // Accepted just before the stop: its request may be on the way.
                stopping = true;
                let by = deadline.min(Instant::now() + grace);
                timer.as_mut().reset(by);
                continue;
            }
        }
        match head::classify(buffer, limits.max_headers) {
            FirstHead::Partial if buffer.len() < limits.max_bytes => {}
            FirstHead::Partial => return Some(FirstHead::Other),
            classified => return Some(classified),
        }
    }
}
