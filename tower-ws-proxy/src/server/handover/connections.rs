//! After the listeners, the live WebSockets: the old process parks them in batches and sends
//! each batch's records with their sockets; the new process decodes a batch and answers
//! ready, the old one says go and closes its copies, and only then does the new one relay
//! them. Until the go, a batch is still the old process's: if the new one refuses, breaks
//! off or dies, the old one resumes the batch itself and keeps everything it has not sent.
//!
//! Old to new, each message is a kind byte, a length (u32, big-endian) and a payload; a
//! batch's descriptors (client, then upstream, per connection) ride on its first bytes.
//! New to old, one byte answers each batch.

use std::{
    collections::VecDeque,
    io::IoSliceMut,
    mem::MaybeUninit,
    os::fd::{AsFd, BorrowedFd, OwnedFd},
    time::Duration,
};

use bytes::{Buf, BufMut, Bytes};
use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
use tokio::{io::Interest, net::UnixStream};

use super::{send_with_fds, HandoverError};
use crate::ParkedConnection;

const BATCH: u8 = b'B';
const GO: u8 = b'G';
const DONE: u8 = b'D';
const READY: u8 = b'R';
const REFUSED: u8 = b'N';

/// The most connections one batch carries: two descriptors each, and Linux passes at most
/// 253 in one message (`SCM_MAX_FD`).
pub const MAX_BATCH: usize = 120;
/// The largest message accepted (a batch's records, with the bytes read ahead).
const MAX_MESSAGE: usize = 256 << 20;
/// How long either side waits for the other's next step before breaking off.
pub(super) const STEP_DEADLINE: Duration = Duration::from_secs(10);

/// The sending side's steps, on the handover socket.
pub(super) async fn send_batch(
    stream: &UnixStream,
    batch: &[ParkedConnection],
) -> Result<(), HandoverError> {
    if batch.is_empty() || batch.len() > MAX_BATCH {
        return Err(HandoverError::Protocol(format!(
            "a batch holds 1 to {MAX_BATCH} connections, not {}",
            batch.len()
        )));
    }
    let mut payload = Vec::new();
    payload.put_u32(batch.len() as u32);
    for connection in batch {
        connection.encode(&mut payload);
    }
    let fds: Vec<BorrowedFd<'_>> = batch
        .iter()
        .flat_map(|c| [c.relay.client.as_fd(), c.relay.upstream.as_fd()])
        .collect();
    send_message(stream, BATCH, &payload, &fds).await?;
    let answer = tokio::time::timeout(STEP_DEADLINE, read_byte(stream))
        .await
        .map_err(|_| HandoverError::Silent(STEP_DEADLINE))??;
    match answer {
        READY => Ok(()),
        REFUSED => Err(HandoverError::Protocol(
            "the new process refused a batch".into(),
        )),
        other => Err(HandoverError::Protocol(format!(
            "the new process answered {other:#x} to a batch"
        ))),
    }
}

/// Tells the new process to relay the batch it said it is ready for.
pub(super) async fn send_go(stream: &UnixStream) -> Result<(), HandoverError> {
    send_message(stream, GO, &[], &[]).await
}

/// Tells the new process that no more connections come.
pub(super) async fn send_done(stream: &UnixStream) -> Result<(), HandoverError> {
    send_message(stream, DONE, &[], &[]).await
}

async fn send_message(
    stream: &UnixStream,
    kind: u8,
    payload: &[u8],
    fds: &[BorrowedFd<'_>],
) -> Result<(), HandoverError> {
    let mut message = Vec::with_capacity(5 + payload.len());
    message.put_u8(kind);
    message.put_u32(payload.len() as u32);
    message.extend_from_slice(payload);
    send_with_fds(stream, &message, fds).await?;
    Ok(())
}

async fn read_byte(stream: &UnixStream) -> Result<u8, HandoverError> {
    let mut byte = [0u8; 1];
    loop {
        stream.readable().await?;
        match stream.try_read(&mut byte) {
            Ok(0) => return Err(HandoverError::Protocol("the new process went away".into())),
            Ok(_) => return Ok(byte[0]),
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(error) => return Err(error.into()),
        }
    }
}

/// The receiving side: the connections the old process hands over, batch by batch.
///
/// ```no_run
/// # async fn f(inherited: tower_ws_proxy::server::handover::Inherited) -> Result<(), tower_ws_proxy::server::handover::HandoverError> {
/// let mut arrivals = inherited.serving().await?;
/// while let Some(batch) = arrivals.next_batch().await? {
///     // Decoded and answered ready; the old process may still take it back.
///     arrivals.committed().await?;
///     for connection in batch {
///         // resume it (`Resumer::resume`)
/// #       drop(connection);
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Arrivals {
    pub(super) stream: UnixStream,
    pub(super) incoming: Incoming,
}

impl Arrivals {
    /// The next batch, decoded, once this process said it is ready for it; `None` once the
    /// old process is done. Relay a batch only after [`committed`](Self::committed).
    pub async fn next_batch(&mut self) -> Result<Option<Vec<ParkedConnection>>, HandoverError> {
        let (kind, mut payload) = self.next_message().await?;
        match kind {
            DONE => return Ok(None),
            BATCH => {}
            other => {
                return Err(HandoverError::Protocol(format!(
                    "expected a batch, got message {other:#x}"
                )))
            }
        }
        match self.decode_batch(&mut payload) {
            Ok(batch) => {
                self.answer(READY).await?;
                Ok(Some(batch))
            }
            Err(error) => {
                let _ = self.answer(REFUSED).await;
                Err(error)
            }
        }
    }

    /// Waits for the old process's go for the batch last received: from then on it is
    /// this process's to relay.
    pub async fn committed(&mut self) -> Result<(), HandoverError> {
        match self.next_message().await?.0 {
            GO => Ok(()),
            other => Err(HandoverError::Protocol(format!(
                "expected the go, got message {other:#x}"
            ))),
        }
    }

    async fn answer(&self, byte: u8) -> Result<(), HandoverError> {
        loop {
            self.stream.writable().await?;
            match self.stream.try_write(&[byte]) {
                Ok(_) => return Ok(()),
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(error) => return Err(error.into()),
            }
        }
    }

    fn decode_batch(
        &mut self,
        payload: &mut Bytes,
    ) -> Result<Vec<ParkedConnection>, HandoverError> {
        let count = payload
            .try_get_u32()
            .map_err(|_| HandoverError::Protocol("an empty batch".into()))?
            as usize;
        if count == 0 || count > MAX_BATCH || self.incoming.fds.len() < 2 * count {
            return Err(HandoverError::Protocol(format!(
                "a batch of {count} connections came with {} sockets",
                self.incoming.fds.len()
            )));
        }
        let mut batch = Vec::with_capacity(count);
        for _ in 0..count {
            let (Some(client), Some(upstream)) =
                (self.incoming.fds.pop_front(), self.incoming.fds.pop_front())
            else {
                unreachable!("counted above");
            };
            let connection = ParkedConnection::decode(payload, client, upstream)
                .map_err(|error| HandoverError::Protocol(error.to_string()))?;
            batch.push(connection);
        }
        Ok(batch)
    }

    /// The next whole message: its kind and payload.
    async fn next_message(&mut self) -> Result<(u8, Bytes), HandoverError> {
        loop {
            if let Some(message) = self.incoming.take_message()? {
                return Ok(message);
            }
            let received = tokio::time::timeout(STEP_DEADLINE, self.incoming.fill(&self.stream))
                .await
                .map_err(|_| HandoverError::Silent(STEP_DEADLINE))??;
            if received == 0 {
                return Err(HandoverError::Protocol("the old process went away".into()));
            }
        }
    }
}

/// Bytes and descriptors received and not yet taken.
#[derive(Debug, Default)]
pub(super) struct Incoming {
    bytes: Vec<u8>,
    fds: VecDeque<OwnedFd>,
}

impl Incoming {
    /// A whole line and every descriptor received, if the line is here (the offer's).
    pub(super) fn take_line(&mut self) -> Option<(String, Vec<OwnedFd>)> {
        let end = self.bytes.iter().position(|b| *b == b'\n')?;
        let line = String::from_utf8_lossy(&self.bytes[..end]).into_owned();
        self.bytes.drain(..=end);
        Some((line, self.fds.drain(..).collect()))
    }

    /// A whole message, if one is here.
    fn take_message(&mut self) -> Result<Option<(u8, Bytes)>, HandoverError> {
        if self.bytes.len() < 5 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([self.bytes[1], self.bytes[2], self.bytes[3], self.bytes[4]])
            as usize;
        if len > MAX_MESSAGE {
            return Err(HandoverError::Protocol(format!(
                "a message of {len} bytes is over the limit"
            )));
        }
        if self.bytes.len() < 5 + len {
            return Ok(None);
        }
        let kind = self.bytes[0];
        let payload = Bytes::copy_from_slice(&self.bytes[5..5 + len]);
        self.bytes.drain(..5 + len);
        Ok(Some((kind, payload)))
    }

    /// Reads what is there (descriptors close-on-exec); 0 at the end.
    pub(super) async fn fill(&mut self, stream: &UnixStream) -> std::io::Result<usize> {
        let mut space = vec![MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(253))];
        let mut chunk = vec![0u8; 256 * 1024];
        loop {
            stream.readable().await?;
            let received = stream.try_io(Interest::READABLE, || {
                let mut control = RecvAncillaryBuffer::new(&mut space);
                let mut iov = [IoSliceMut::new(&mut chunk)];
                let message = rustix::net::recvmsg(
                    stream.as_fd(),
                    &mut iov,
                    &mut control,
                    RecvFlags::CMSG_CLOEXEC,
                )
                .map_err(std::io::Error::from)?;
                for ancillary in control.drain() {
                    if let RecvAncillaryMessage::ScmRights(fds) = ancillary {
                        self.fds.extend(fds);
                    }
                }
                Ok(message.bytes)
            });
            match received {
                Ok(n) => {
                    self.bytes.extend_from_slice(&chunk[..n]);
                    return Ok(n);
                }
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(error) => return Err(error),
            }
        }
    }
}
