//! The read-and-forward loop of one direction.

use std::{
    future::Future,
    pin::Pin,
    sync::atomic::Ordering,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use tokio::{
    io::{AsyncRead, ReadBuf},
    net::{
        tcp::{ReadHalf, WriteHalf},
        TcpStream,
    },
    sync::watch,
};

use crate::frame::FrameTracker;

use super::{
    direction::{Direction, Injection, Plan},
    DirectionEnd, Shared, Toward, MOVED_CODE, MOVED_REASON,
};
use crate::RelayCommand;

/// Copies one direction, injecting a requested close at the first message boundary.
pub(super) async fn pump(
    mut src: ReadHalf<'_>,
    dst: WriteHalf<'_>,
    preread: Bytes,
    toward: Toward,
    mut commands: watch::Receiver<RelayCommand>,
    shared: &Shared<'_>,
) -> DirectionEnd {
    let dst = dst.as_ref();
    let mut this = Direction {
        toward,
        shared,
        tracker: FrameTracker::default(),
        end: DirectionEnd::default(),
        requested: None,
        deadline: None,
        handshake_complete: false,
        switching: false,
        held: Vec::new(),
    };
    let mut pending: Option<Vec<u8>> = None;
    // Consumed here so nothing keeps it alive for the rest of the connection.
    let preread = preread;
    if !preread.is_empty() {
        match this.plan(&preread) {
            Ok(Plan::All) => pending = Some(preread.to_vec()),
            Ok(Plan::Bytes(bytes)) => pending = Some(bytes),
            Err(_) => return this.end,
        }
        this.end.bytes += preread.len() as u64;
    }
    drop(preread);

    // The rare signals wait in futures made once, so the hot path registers nothing: only
    // when the socket has nothing to read does the pump poll them too.
    let mut command_watch = commands.clone();
    let command_arrived = async move {
        let command = command_watch.wait_for(|c| *c != RelayCommand::Run).await;
        command.ok().map(|c| c.clone())
    };
    tokio::pin!(command_arrived);
    let mut command_seen = false;
    let stop = shared.stop.notified();
    tokio::pin!(stop);
    stop.as_mut().enable();
    let close_deadline = tokio::time::sleep(Duration::from_secs(86_400));
    tokio::pin!(close_deadline);

    loop {
        if let Some(bytes) = pending.take() {
            if write_all(dst, &bytes).await.is_err() {
                return this.end;
            }
        }
        if this.end.handover.is_some() || this.end.handed_over {
            return this.end;
        }
        if this.finished() || shared.stopped.load(Ordering::Acquire) {
            shutdown_write(dst);
            return this.end;
        }
        // Between messages and nothing half-forwarded: inject right away.
        if this.tracker.at_message_boundary() && this.end.close.is_none() {
            match this.requested.take() {
                Some(Injection::Close(code, reason)) => {
                    let frame = this.close_frame(code, &reason);
                    if write_all(dst, &frame).await.is_err() {
                        return this.end;
                    }
                    continue;
                }
                Some(Injection::Handover) => {
                    let frame = this.close_frame(MOVED_CODE, MOVED_REASON);
                    let _ = write_all(dst, &frame).await;
                    this.end.handover = Some(Vec::new());
                    return this.end;
                }
                None => {}
            }
        }
        if let Some(deadline) = this.deadline {
            if close_deadline.deadline() != deadline {
                close_deadline.as_mut().reset(deadline);
            }
        }
        let step = std::future::poll_fn(|cx| {
            // A command that arrived since the last look applies before anything more is
            // read: a switch must know where the old upstream's last frames end. (This is
            // polled again without the loop's check after a wakeup.)
            if commands.has_changed().unwrap_or(false) {
                let command = commands.borrow_and_update().clone();
                return Poll::Ready(Step::Command(Some(command)));
            }
            // `poll_read` (unlike `try_read`) marks the socket drained after a short read, so
            // each message costs one `read` and one `write`, with no `read` that finds nothing.
            if let Poll::Ready(step) = read_and_forward(cx, &mut src, dst, &mut this) {
                return Poll::Ready(step);
            }
            if !command_seen {
                if let Poll::Ready(command) = command_arrived.as_mut().poll(cx) {
                    command_seen = true;
                    return Poll::Ready(Step::Command(command));
                }
            }
            if this.deadline.is_some() && close_deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Step::Finished);
            }
            if stop.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Step::Finished);
            }
            Poll::Pending
        })
        .await;
        match step {
            Step::Sent => {}
            Step::Command(command) => {
                if let Some(command) = command {
                    this.on_command(&command);
                }
            }
            Step::Pending(bytes) => pending = Some(bytes),
            // The old upstream ended or missed its deadline while handing over: the client
            // is not closed, it moves on.
            Step::Finished if this.switching => {
                this.end.handed_over = true;
                return this.end;
            }
            Step::Finished => {
                // A switch requested just before the old upstream went: the client moves on.
                if commands.has_changed().unwrap_or(false) {
                    let command = commands.borrow_and_update().clone();
                    this.on_command(&command);
                    if this.switching {
                        this.end.handed_over = true;
                        return this.end;
                    }
                }
                if this.upstream_vanished() {
                    // Tell the client, between messages, rather than leave it a bare EOF:
                    // with the close it was about to get, or a "try again".
                    let command = commands.borrow().clone();
                    let (code, reason) = match (this.requested.take(), command) {
                        (Some(Injection::Close(code, reason)), _)
                        | (_, RelayCommand::Close { code, reason }) => (code, reason),
                        _ => (1012, "the backend closed the connection".into()),
                    };
                    let frame = this.close_frame(code, &reason);
                    let _ = write_all(dst, &frame).await;
                }
                shutdown_write(dst);
                return this.end;
            }
            Step::Broken => return this.end,
        }
    }
}

/// Reads what `src` has and forwards it, without holding a buffer across an await: the
/// per-thread buffer is only borrowed in this synchronous step, and what `dst` cannot take
/// now is copied.
fn read_and_forward(
    cx: &mut Context<'_>,
    src: &mut ReadHalf<'_>,
    dst: &TcpStream,
    this: &mut Direction<'_>,
) -> Poll<Step> {
    READ_BUFFER.with_borrow_mut(|buf| {
        let mut read_buf = ReadBuf::new(buf);
        let read = match Pin::new(&mut *src).poll_read(cx, &mut read_buf) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(_)) => return Poll::Ready(Step::Finished),
            Poll::Ready(Ok(())) if read_buf.filled().is_empty() => {
                return Poll::Ready(Step::Finished)
            }
            Poll::Ready(Ok(())) => read_buf.filled().len(),
        };
        this.shared.touch();
        this.end.bytes += read as u64;
        Poll::Ready(match this.plan(&buf[..read]) {
            Ok(Plan::All) => match try_write_all(dst, &buf[..read]) {
                Ok(written) if written == read => Step::Sent,
                Ok(written) => Step::Pending(buf[written..read].to_vec()),
                Err(_) => Step::Broken,
            },
            Ok(Plan::Bytes(bytes)) if bytes.is_empty() => Step::Sent,
            Ok(Plan::Bytes(bytes)) => Step::Pending(bytes),
            Err(error) => {
                tracing::debug!(%error, toward = ?this.toward, "dropping websocket relay");
                Step::Broken
            }
        })
    })
}

/// What one wait of a pump produced.
enum Step {
    /// Everything read was forwarded.
    Sent,
    /// A command arrived while the socket had nothing to read.
    Command(Option<RelayCommand>),
    /// These bytes still have to be written.
    Pending(Vec<u8>),
    /// The source ended, the close deadline passed, or the close handshake completed.
    Finished,
    /// The destination failed or the framing was invalid: drop both sides.
    Broken,
}

thread_local! {
    /// One read buffer per runtime thread, shared by every relay on it.
    static READ_BUFFER: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; 16 * 1024]);
}

/// Writes as much as the socket takes now; returns how much that was.
fn try_write_all(dst: &TcpStream, data: &[u8]) -> std::io::Result<usize> {
    let mut written = 0;
    while written < data.len() {
        match dst.try_write(&data[written..]) {
            Ok(n) => written += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    Ok(written)
}

async fn write_all(dst: &TcpStream, mut data: &[u8]) -> std::io::Result<()> {
    while !data.is_empty() {
        dst.writable().await?;
        let written = try_write_all(dst, data)?;
        data = &data[written..];
    }
    Ok(())
}

/// Half-closes toward `dst`: it reads EOF after what was sent.
fn shutdown_write(dst: &TcpStream) {
    let _ = socket2::SockRef::from(dst).shutdown(std::net::Shutdown::Write);
}
