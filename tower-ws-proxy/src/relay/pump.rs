//! The read-and-forward loop of one direction.

use std::{
    future::Future,
    pin::Pin,
    sync::atomic::Ordering,
    task::{Context, Poll},
};

use bytes::Bytes;
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf},
    time::Instant,
};

use crate::frame::FrameTracker;

use super::{
    direction::{Direction, Injection, Plan},
    DirectionEnd, Shared, Toward, MOVED_CODE, MOVED_REASON,
};
use crate::RelayCommand;

/// Copies one direction (`preread` first: bytes read along with the handshake, or held over
/// from a switch), injecting a requested close at the first message boundary. When it ends
/// other than by handing over, the other direction has the half-close timeout left.
pub(super) fn pump<'a, R, W>(
    src: R,
    dst: W,
    preread: &'a mut Bytes,
    toward: Toward,
    shared: &'a Shared<'a>,
) -> impl Future<Output = DirectionEnd> + 'a
where
    R: AsyncRead + Unpin + 'a,
    W: AsyncWrite + Unpin + 'a,
{
    PumpEnd {
        until_done: pump_until_done(src, dst, preread, toward, shared),
        shared,
    }
}

pin_project_lite::pin_project! {
    /// Gives the other direction the half-close timeout once this one ends other than by a
    /// handover. A named future, not an `async` block around the loop's future: the block
    /// would keep that future twice (as its capture and as what it awaits).
    struct PumpEnd<'a, F> {
        #[pin]
        until_done: F,
        shared: &'a Shared<'a>,
    }
}

impl<F: Future<Output = DirectionEnd>> Future for PumpEnd<'_, F> {
    type Output = DirectionEnd;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<DirectionEnd> {
        let this = self.project();
        let end = std::task::ready!(this.until_done.poll(cx));
        if end.handover.is_none() && !end.handed_over {
            this.shared
                .end_within(this.shared.config.half_close_timeout);
        }
        Poll::Ready(end)
    }
}

async fn pump_until_done<R, W>(
    mut src: R,
    mut dst: W,
    preread: &mut Bytes,
    toward: Toward,
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
    {
        // Taken (and dropped) before the first wait, so the future keeps no room for it.
        let preread = std::mem::take(preread);
        if !preread.is_empty() {
            pending = Some(match this.plan(&preread) {
                Plan::All => preread.to_vec(),
                Plan::Bytes(bytes) => bytes,
            });
            this.count(preread.len());
        }
    }

    // Commands, and changes to the relay's shared state, wake the pump through one
    // registration made once (and again only after it fired), so the hot path registers
    // nothing: only when the socket has nothing to read does the pump poll it too.
    let control = &shared.commands.control;
    // Version 0 is the relay's start: a pump of a later phase (after a switch) takes in
    // any command sent before it began.
    let mut seen = 0;
    let changed = control.changed.notified();
    tokio::pin!(changed);
    changed.as_mut().enable();
    // Boxed and made only once a deadline is set (closing, switching): an idle relay keeps
    // no timer of its own.
    let mut timer: Option<Pin<Box<tokio::time::Sleep>>> = None;

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
            match &mut timer {
                Some(timer) if timer.deadline() == deadline => {}
                Some(timer) => timer.as_mut().reset(deadline),
                None => timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
        }
        let step = std::future::poll_fn(|cx| {
            // A command that arrived since the last look applies before anything more is
            // read: a switch must know where the old upstream's last frames end. (This is
            // polled again without the loop's check after a wakeup.)
            if control.has_changed(seen) {
                let (command, version) = control.command();
                seen = version;
                return Poll::Ready(Step::Command(command));
            }
            // `poll_read` (unlike `try_read`) marks the socket drained after a short read, so
            // each message costs one `read` and one `write`, with no `read` that finds nothing.
            if let Poll::Ready(step) = read_and_forward(cx, &mut src, &mut dst, &mut this) {
                return Poll::Ready(step);
            }
            if let (Some(_), Some(timer)) = (this.next_deadline(), &mut timer) {
                if timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Step::Timer);
                }
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
            // A command is read on the next turn of the loop, by `has_changed`; a change of
            // the shared state by the loop's checks.
            Step::Changed => {
                changed.set(control.changed.notified());
                changed.as_mut().enable();
            }
            Step::Timer => {
                let now = Instant::now();
                if this.switch_deadline.is_some_and(|at| now >= at) {
                    this.give_up_switch();
                } else if this.deadline.is_some_and(|at| now >= at) {
                    return Box::pin(source_finished(this, &mut seen, &mut dst)).await;
                }
                // Otherwise the relay-wide deadline: the loop's check ends the direction.
            }
            // Boxed: the rare end of a direction does not widen every relay's future.
            Step::Finished => return Box::pin(source_finished(this, &mut seen, &mut dst)).await,
            Step::Broken => return broken(this),
        }
    }
}

/// The source ended, or missed its close deadline.
async fn source_finished<W: AsyncWrite + Unpin>(
    mut this: Direction<'_>,
    seen: &mut u64,
    dst: &mut W,
) -> DirectionEnd {
    // The old upstream ended or missed its deadline while handing over: the client is not
    // closed, it moves on.
    if this.switching {
        this.end.handed_over = true;
        return this.end;
    }
    // A switch requested just before the old upstream went: the client moves on.
    let control = &this.shared.commands.control;
    if control.has_changed(*seen) {
        let (command, version) = control.command();
        *seen = version;
        this.on_command(&command);
        if this.switching {
            this.end.handed_over = true;
            return this.end;
        }
    }
    if this.upstream_vanished() {
        // Tell the client, between messages, rather than leave it a bare EOF: with the
        // close it was about to get, or a "try again".
        let (command, _) = this.shared.commands.control.command();
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
    /// These bytes still have to be written.
    Pending(Vec<u8>),
    /// A command was sent, or the relay's shared state changed (stopped, opaque, or a
    /// deadline for both).
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
