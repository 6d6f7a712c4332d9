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
    sync::{futures::Notified, Notify},
    time::{Instant, Sleep},
};

use super::{
    client::CloseIsFin,
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
    W: AsyncWrite + CloseIsFin + Unpin + 'a,
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
        if end.handover.is_none() && !end.handed_over && end.parked.is_none() {
            this.shared
                .end_within(this.shared.config.half_close_timeout);
        }
        Poll::Ready(end)
    }
}

/// An `async` block rather than an `async fn` (which keeps its arguments twice), with the
/// direction's state made before it and moved in once: two of these live in every relay.
fn pump_until_done<'a, R, W>(
    mut src: R,
    mut dst: W,
    preread: &'a mut Bytes,
    toward: Toward,
    shared: &'a Shared<'a>,
) -> impl Future<Output = DirectionEnd> + 'a
where
    R: AsyncRead + Unpin + 'a,
    W: AsyncWrite + CloseIsFin + Unpin + 'a,
{
    let mut this = Direction::new(toward, shared);
    let mut pending = take_preread(&mut this, preread);
    async move {
        let mut wakeups = std::pin::pin!(Wakeups::new(&shared.commands.control.changed));
        wakeups.as_mut().listen();
        loop {
            if let Some(bytes) = &pending {
                // Written from where it is: a copy moved out would keep room of its own.
                let written = dst.write_all(bytes).await;
                pending = None;
                if written.is_err() {
                    return broken(this);
                }
            }
            if let Some(ending) = this.ending() {
                if this.half_closes(ending, &dst) {
                    shutdown_write(&mut dst).await;
                }
                return this.end;
            }
            // Boxed: a close or handover going in is rare, and its frame would otherwise
            // keep room in every relay's future.
            if let Some((then, writing)) = this
                .injection_due()
                .map(|due| (due.then, Box::pin(write_flushed(&mut dst, due.frame))))
            {
                match (then, writing.await) {
                    (AfterInjection::Relay, Ok(())) => continue,
                    (AfterInjection::Relay, Err(_)) => return broken(this),
                    (AfterInjection::HandOver, _) => {
                        this.end.handover = Some(Vec::new());
                        return this.end;
                    }
                }
            }
            wakeups.as_mut().arm_timer(this.next_deadline());
            let step = std::future::poll_fn(|cx| {
                wakeups
                    .as_mut()
                    .poll_step(cx, &mut src, &mut dst, &mut this)
            })
            .await;
            match step {
                Step::Sent => {}
                Step::Command(command) => pending = this.take_in(&command),
                Step::Pending(bytes) => pending = Some(bytes),
                // A command is read on the next turn of the loop, by `has_changed`; a change
                // of the shared state by the loop's checks.
                Step::Changed => wakeups
                    .as_mut()
                    .listen_again(&shared.commands.control.changed),
                // Otherwise the relay-wide deadline: the loop's check ends the direction.
                Step::Timer if !this.source_overdue() => {}
                // Boxed: the rare end of a direction does not widen every relay's future.
                Step::Timer | Step::Finished => {
                    let seen = wakeups.as_mut().project().seen;
                    return Box::pin(source_finished(this, seen, &mut dst)).await;
                }
                Step::Broken => return broken(this),
            }
        }
    }
}

/// Writes an injected frame and flushes it: after a hand-over nothing else writes here to
/// push out what a TLS stream may still hold.
async fn write_flushed<W: AsyncWrite + Unpin>(dst: &mut W, frame: Bytes) -> std::io::Result<()> {
    dst.write_all(&frame).await?;
    dst.flush().await
}

/// The bytes read before the relay began (along with the handshake, or held over from a
/// switch), planned and counted like any read: what goes out first.
fn take_preread(this: &mut Direction<'_>, preread: &mut Bytes) -> Option<Vec<u8>> {
    // Taken (and dropped) before the first wait, so the future keeps no room for it.
    let preread = std::mem::take(preread);
    if preread.is_empty() {
        return None;
    }
    let pending = match this.plan(&preread) {
        Plan::All => preread.to_vec(),
        Plan::Bytes(bytes) => bytes,
    };
    this.count(preread.len());
    Some(pending)
}

/// Why a direction stops before waiting again.
enum Ending {
    /// A switch took the connection over: nothing is closed.
    HandedOver,
    /// Nothing more goes this way (the close handshake completed, the relay stopped, or
    /// its deadline passed): the destination is half-closed.
    Done,
}

/// A close due now, and what follows it.
struct DueInjection {
    frame: Bytes,
    then: AfterInjection,
}

enum AfterInjection {
    /// Relaying goes on (up to the source's own close).
    Relay,
    /// The client moves to another upstream: this direction ends.
    HandOver,
}

impl Direction<'_> {
    /// Toward the upstream: the client sent its Close, then ended its side of the
    /// connection. A TCP half-close after a Close is legal, but no browser does it, and
    /// the client cannot be told apart from one that left (its socket closed): the
    /// backend's Close is not waited for.
    fn client_left(&self) -> bool {
        self.toward == Toward::Upstream && self.end.close.is_some() && !self.shared.is_opaque()
    }

    /// Whether a direction that ends so half-closes its destination first. Not after a
    /// handover (nothing is closed), nor where both directions end now on plain TCP: the
    /// relay drops both sockets once the other direction has seen it, and `close` sends the
    /// same FIN. Except from the direction that completed the close handshake: its
    /// destination (a browser, after the server's Close) waits for the TCP close, and gets
    /// the FIN now rather than after the other direction's next turn.
    fn half_closes(&self, ending: Ending, dst: &impl CloseIsFin) -> bool {
        match ending {
            Ending::HandedOver => false,
            Ending::Done => self.handshake_complete || !dst.close_is_fin(),
        }
    }

    fn ending(&self) -> Option<Ending> {
        if self.end.handover.is_some() || self.end.handed_over {
            return Some(Ending::HandedOver);
        }
        if self.is_parked() && self.shared.parked.load(Ordering::Acquire) == 2 {
            return Some(Ending::HandedOver);
        }
        let shared = self.shared;
        let out_of_time = shared.end_by().is_some_and(|at| Instant::now() >= at);
        if self.finished() || shared.stopped.load(Ordering::Acquire) || out_of_time {
            return Some(Ending::Done);
        }
        None
    }

    /// The requested close, once the direction is between messages with nothing
    /// half-forwarded (then it goes in right away).
    fn injection_due(&mut self) -> Option<DueInjection> {
        let between_messages = self.tracker.at_message_boundary() && self.end.close.is_none();
        if !between_messages || self.shared.is_opaque() {
            return None;
        }
        Some(match self.take_requested()? {
            Injection::Close(code, reason) => DueInjection {
                frame: self.close_frame(code, &reason),
                then: AfterInjection::Relay,
            },
            Injection::Handover => DueInjection {
                frame: self.close_frame(MOVED_CODE, MOVED_REASON),
                then: AfterInjection::HandOver,
            },
            // Already between messages: the park needs no frame.
            Injection::Park => {
                self.park(Vec::new());
                return None;
            }
        })
    }

    /// Takes a command into account; a frame start held back for a switch that is now
    /// over goes out next.
    fn take_in(&mut self, command: &RelayCommand) -> Option<Vec<u8>> {
        let resumed = if *command == RelayCommand::Park {
            None
        } else {
            self.cancel_park()
        };
        self.on_command(command);
        let held = match self.underway.as_deref_mut() {
            Some(underway) if !self.switching && !underway.held.is_empty() => {
                Some(std::mem::take(&mut underway.held))
            }
            _ => None,
        };
        match (resumed, held) {
            (Some(mut resumed), Some(held)) => {
                resumed.extend_from_slice(&held);
                Some(resumed)
            }
            (resumed, held) => resumed.or(held),
        }
    }

    /// A deadline of this direction passed: a switch that found no message boundary is
    /// given up; true when the source missed its close deadline.
    fn source_overdue(&mut self) -> bool {
        let now = Instant::now();
        let Some(underway) = self.underway.as_deref() else {
            return false;
        };
        let passed = |deadline: Option<Instant>| deadline.is_some_and(|at| now >= at);
        if passed(underway.switch_deadline) {
            self.give_up_switch();
            false
        } else if passed(underway.park_deadline) {
            self.give_up_park();
            false
        } else {
            passed(underway.deadline)
        }
    }
}

pin_project_lite::pin_project! {
    /// What wakes a waiting pump besides its socket. Commands, and changes to the relay's
    /// shared state, wake it through one registration made once (and again only after it
    /// fired), so the hot path registers nothing: only when the socket has nothing to read
    /// does the pump poll these too.
    struct Wakeups<'a> {
        // The version of the last command taken in. Version 0 is the relay's start: a
        // pump of a later phase (after a switch) takes in any command sent before it began.
        seen: u64,
        #[pin]
        changed: Notified<'a>,
        // Boxed and made only once a deadline is set (closing, switching): an idle relay
        // keeps no timer of its own.
        timer: Option<Pin<Box<Sleep>>>,
    }
}

impl<'a> Wakeups<'a> {
    fn new(changed: &'a Notify) -> Self {
        Self {
            seen: 0,
            changed: changed.notified(),
            timer: None,
        }
    }

    fn listen(self: Pin<&mut Self>) {
        self.project().changed.enable();
    }

    /// After the change registration fired.
    fn listen_again(self: Pin<&mut Self>, changed: &'a Notify) {
        let mut registration = self.project().changed;
        registration.set(changed.notified());
        registration.as_mut().enable();
    }

    /// Points the timer at the direction's next deadline, if it has one.
    fn arm_timer(self: Pin<&mut Self>, deadline: Option<Instant>) {
        let Some(deadline) = deadline else {
            return;
        };
        match self.project().timer {
            Some(timer) if timer.deadline() == deadline => {}
            Some(timer) => timer.as_mut().reset(deadline),
            timer @ None => *timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
        }
    }

    /// One look at everything a pump waits on, in order.
    fn poll_step<R, W>(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        src: &mut R,
        dst: &mut W,
        this: &mut Direction<'_>,
    ) -> Poll<Step>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let wakeups = self.project();
        // A TLS destination takes bytes into its session and may keep records it could
        // not send yet; they go out here once the socket can take them, or they would wait
        // for the next message. For TCP this is a no-op.
        if let Poll::Ready(Err(_)) = Pin::new(&mut *dst).poll_flush(cx) {
            return Poll::Ready(Step::Broken);
        }
        let control = &this.shared.commands.control;
        // A command that arrived since the last look applies before anything more is
        // read: a switch must know where the old upstream's last frames end. (This is
        // polled again without the loop's check after a wakeup.)
        if control.has_changed(*wakeups.seen) {
            let (command, version) = control.command();
            *wakeups.seen = version;
            return Poll::Ready(Step::Command(command));
        }
        // `poll_read` (unlike `try_read`) marks the socket drained after a short read, so
        // each message costs one `read` and one `write`, with no `read` that finds nothing.
        // A parked direction reads nothing more: what comes next is for whoever resumes.
        if !this.is_parked() {
            if let Poll::Ready(step) = read_and_forward(cx, src, dst, this) {
                return Poll::Ready(step);
            }
        }
        if let (Some(_), Some(timer)) = (this.next_deadline(), wakeups.timer) {
            if timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Step::Timer);
            }
        }
        if wakeups.changed.poll(cx).is_ready() {
            return Poll::Ready(Step::Changed);
        }
        Poll::Pending
    }
}

/// The source ended, or missed its close deadline.
async fn source_finished<W: AsyncWrite + CloseIsFin + Unpin>(
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
        let (code, reason) = match (this.take_requested(), command) {
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
    if this.client_left() {
        // Nothing can reach this client any more: the backend has its Close, and both
        // sockets go now (as nginx does), instead of a half-close that waits for the
        // backend's Close only to write it into a socket whose owner is gone.
        this.shared.stop_both();
        if !dst.close_is_fin() {
            shutdown_write(dst).await;
        }
        return this.end;
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
