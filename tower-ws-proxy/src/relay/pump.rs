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
    io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf},
    sync::watch,
    time::Instant,
};

use crate::frame::FrameTracker;

use super::{
    direction::{Direction, Injection, Plan},
    DirectionEnd, Shared, Toward, MOVED_CODE, MOVED_REASON,
};
use crate::RelayCommand;

/// Copies one direction, injecting a requested close at the first message boundary. When it
/// ends other than by handing over, the other direction has the half-close timeout left.
pub(super) async fn pump<R, W>(
    src: R,
    dst: W,
    preread: Bytes,
    toward: Toward,
    commands: watch::Receiver<RelayCommand>,
    shared: &Shared<'_>,
) -> DirectionEnd
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let end = pump_until_done(src, dst, preread, toward, commands, shared).await;
    if end.handover.is_none() && !end.handed_over {
        shared.end_within(shared.config.half_close_timeout);
    }
    end
}

async fn pump_until_done<R, W>(
    mut src: R,
    mut dst: W,
    preread: Bytes,
    toward: Toward,
    mut commands: watch::Receiver<RelayCommand>,
    shared: &Shared<'_>,
) -> DirectionEnd
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut this = Direction {
        toward,
        shared,
        tracker: FrameTracker::with_limits(shared.config.limits),
        end: DirectionEnd::default(),
        requested: None,
        deadline: None,
        switch_deadline: None,
        handshake_complete: false,
        switching: false,
        held: Vec::new(),
        opaque: false,
        messages: 0,
    };
    let mut pending: Option<Vec<u8>> = None;
    // Consumed here so nothing keeps it alive for the rest of the connection.
    let preread = preread;
    if !preread.is_empty() {
        pending = Some(match this.plan(&preread) {
            Plan::All => preread.to_vec(),
            Plan::Bytes(bytes) => bytes,
        });
        this.count(preread.len());
    }
    drop(preread);

    // The rare signals wait in futures made once (and again only after they fired), so the
    // hot path registers nothing: only when the socket has nothing to read does the pump
    // poll them too.
    let mut command_sent = wake_on_command(commands.clone());
    let changed = shared.changed.notified();
    tokio::pin!(changed);
    changed.as_mut().enable();
    let timer = tokio::time::sleep(Duration::from_secs(86_400));
    tokio::pin!(timer);

    loop {
        if let Some(bytes) = pending.take() {
            if dst.write_all(&bytes).await.is_err() {
                return broken(this);
            }
        }
        if this.end.handover.is_some() || this.end.handed_over {
            return this.end;
        }
        let out_of_time = shared.end_by().is_some_and(|at| Instant::now() >= at);
        if this.finished() || shared.stopped.load(Ordering::Acquire) || out_of_time {
            shutdown_write(&mut dst).await;
            return this.end;
        }
        // Between messages and nothing half-forwarded: inject right away.
        if this.tracker.at_message_boundary() && this.end.close.is_none() && !shared.is_opaque() {
            match this.requested.take() {
                Some(Injection::Close(code, reason)) => {
                    let frame = this.close_frame(code, &reason);
                    if dst.write_all(&frame).await.is_err() {
                        return broken(this);
                    }
                    continue;
                }
                Some(Injection::Handover) => {
                    let frame = this.close_frame(MOVED_CODE, MOVED_REASON);
                    let _ = dst.write_all(&frame).await;
                    this.end.handover = Some(Vec::new());
                    return this.end;
                }
                None => {}
            }
        }
        if let Some(deadline) = this.next_deadline() {
            if timer.deadline() != deadline {
                timer.as_mut().reset(deadline);
            }
        }
        let step = std::future::poll_fn(|cx| {
            // A command that arrived since the last look applies before anything more is
            // read: a switch must know where the old upstream's last frames end. (This is
            // polled again without the loop's check after a wakeup.)
            if commands.has_changed().unwrap_or(false) {
                let command = commands.borrow_and_update().clone();
                return Poll::Ready(Step::Command(command));
            }
            // `poll_read` (unlike `try_read`) marks the socket drained after a short read, so
            // each message costs one `read` and one `write`, with no `read` that finds nothing.
            if let Poll::Ready(step) = read_and_forward(cx, &mut src, &mut dst, &mut this) {
                return Poll::Ready(step);
            }
            if let Poll::Ready(watch) = command_sent.as_mut().poll(cx) {
                return Poll::Ready(Step::CommandSent(watch));
            }
            if this.next_deadline().is_some() && timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Step::Timer);
            }
            if changed.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Step::Changed);
            }
            Poll::Pending
        })
        .await;
        match step {
            Step::Sent => {}
            Step::Command(command) => {
                this.on_command(&command);
                if !this.switching && !this.held.is_empty() {
                    pending = Some(std::mem::take(&mut this.held));
                }
            }
            Step::Pending(bytes) => pending = Some(bytes),
            // Read on the next turn of the loop, by `commands.has_changed()`.
            Step::CommandSent(watch) => command_sent = wake_on_command(watch),
            Step::Changed => {
                changed.set(shared.changed.notified());
                changed.as_mut().enable();
            }
            Step::Timer => {
                let now = Instant::now();
                if this.switch_deadline.is_some_and(|at| now >= at) {
                    this.give_up_switch();
                } else if this.deadline.is_some_and(|at| now >= at) {
                    return source_finished(this, &mut commands, &mut dst).await;
                }
                // Otherwise the relay-wide deadline: the loop's check ends the direction.
            }
            Step::Finished => return source_finished(this, &mut commands, &mut dst).await,
            Step::Broken => return broken(this),
        }
    }
}

type CommandSent<'a> = Pin<Box<dyn Future<Output = watch::Receiver<RelayCommand>> + Send + 'a>>;

/// Resolves (with the receiver, to wait again) once a command is sent after `watch` last
/// looked. A relay's commands stay open while it runs, so a closed channel never resolves.
fn wake_on_command<'a>(mut watch: watch::Receiver<RelayCommand>) -> CommandSent<'a> {
    Box::pin(async move {
        if watch.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
        watch
    })
}

/// The source ended, or missed its close deadline.
async fn source_finished<W: AsyncWrite + Unpin>(
    mut this: Direction<'_>,
    commands: &mut watch::Receiver<RelayCommand>,
    dst: &mut W,
) -> DirectionEnd {
    // The old upstream ended or missed its deadline while handing over: the client is not
    // closed, it moves on.
    if this.switching {
        this.end.handed_over = true;
        return this.end;
    }
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
        // Tell the client, between messages, rather than leave it a bare EOF: with the
        // close it was about to get, or a "try again".
        let command = commands.borrow().clone();
        let (code, reason) = match (this.requested.take(), command) {
            (Some(Injection::Close(code, reason)), _)
            | (_, RelayCommand::Close { code, reason }) => (code, reason),
            _ => (
                crate::close_code::SERVICE_RESTART,
                "the backend closed the connection".into(),
            ),
        };
        let frame = this.close_frame(code, &reason);
        let _ = dst.write_all(&frame).await;
    }
    shutdown_write(dst).await;
    this.end
}

/// The destination failed: nothing more can reach it, so both directions stop now.
fn broken(this: Direction<'_>) -> DirectionEnd {
    this.shared.stop_both();
    this.end
}

/// Reads what `src` has and forwards it, without holding a buffer across an await: the
/// per-thread buffer is only borrowed in this synchronous step, and what `dst` cannot take
/// now is copied.
fn read_and_forward<R, W>(
    cx: &mut Context<'_>,
    src: &mut R,
    dst: &mut W,
    this: &mut Direction<'_>,
) -> Poll<Step>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
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
        let plan = this.plan(&buf[..read]);
        this.count(read);
        Poll::Ready(match plan {
            Plan::All => match write_now(cx, dst, &buf[..read]) {
                Ok(written) if written == read => Step::Sent,
                Ok(written) => Step::Pending(buf[written..read].to_vec()),
                Err(_) => Step::Broken,
            },
            Plan::Bytes(bytes) if bytes.is_empty() => Step::Sent,
            Plan::Bytes(bytes) => Step::Pending(bytes),
        })
    })
}

/// What one wait of a pump produced.
enum Step {
    /// Everything read was forwarded.
    Sent,
    /// A command that has not been taken into account yet.
    Command(RelayCommand),
    /// A command was sent while the socket had nothing to read (the wakeup's receiver).
    CommandSent(watch::Receiver<RelayCommand>),
    /// These bytes still have to be written.
    Pending(Vec<u8>),
    /// The relay's shared state changed (stopped, opaque, or a deadline for both).
    Changed,
    /// A deadline of this direction or of the relay passed.
    Timer,
    /// The source ended (EOF or a read error).
    Finished,
    /// The destination failed: drop both sides.
    Broken,
}

thread_local! {
    /// One read buffer per runtime thread, shared by every relay on it.
    static READ_BUFFER: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; 16 * 1024]);
}

/// Writes as much as `dst` takes now; returns how much that was. (What it cannot take now
/// is copied by the caller; `dst` wakes the task when it can take more.)
fn write_now<W: AsyncWrite + Unpin>(
    cx: &mut Context<'_>,
    dst: &mut W,
    data: &[u8],
) -> std::io::Result<usize> {
    let mut written = 0;
    while written < data.len() {
        match Pin::new(&mut *dst).poll_write(cx, &data[written..]) {
            Poll::Ready(Ok(0)) => return Err(std::io::ErrorKind::WriteZero.into()),
            Poll::Ready(Ok(n)) => written += n,
            Poll::Ready(Err(e)) => return Err(e),
            Poll::Pending => break,
        }
    }
    Ok(written)
}

/// Half-closes toward `dst`: it reads EOF after what was sent. (For TCP this is one
/// `shutdown(2)`, which never waits.)
async fn shutdown_write<W: AsyncWrite + Unpin>(dst: &mut W) {
    let _ = dst.shutdown().await;
}
