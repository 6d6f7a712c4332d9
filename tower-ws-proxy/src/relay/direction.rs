//! One direction's frame bookkeeping: where a requested close or a handover goes in, and
//! what a framing error or an oversized message does to the stream.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use tokio::time::Instant;

use crate::{
    close_code,
    frame::{close_frame, FrameEnd, FrameError, FrameTracker, OpCode},
    ParkError, SwitchError,
};

use super::{DirectionEnd, RelayCommand, Shared, Toward, MOVED_CODE, MOVED_REASON};

/// What to send on after reading some bytes.
pub(super) enum Plan {
    /// All of them, unchanged (the common case: no copy).
    All,
    /// These bytes instead (a close was injected, or part is swallowed or held back).
    Bytes(Vec<u8>),
}

/// What a direction was asked to inject at its next message boundary.
pub(super) enum Injection {
    /// A close frame, then swallow what the source sends up to its own close.
    Close(u16, String),
    /// Toward the upstream: a close, then stop reading from the client (a switch).
    Handover,
    /// Stop reading from the source, without a close: the relay is being parked.
    Park,
}

/// What a direction keeps while a close, switch or park is under way.
#[derive(Default)]
pub(super) struct Underway {
    pub(super) requested: Option<Injection>,
    /// When this direction gives up waiting for its source's close.
    pub(super) deadline: Option<Instant>,
    /// Toward the upstream: when a requested handover gives up waiting for a boundary.
    pub(super) switch_deadline: Option<Instant>,
    /// When a requested park gives up waiting for this direction's boundary.
    pub(super) park_deadline: Option<Instant>,
    /// Toward the client, switching: the start of a frame that may be the old upstream's
    /// close, held back until it is known.
    pub(super) held: Vec<u8>,
}

/// The state of one direction.
pub(super) struct Direction<'a> {
    pub(super) toward: Toward,
    pub(super) shared: &'a Shared<'a>,
    pub(super) tracker: FrameTracker,
    pub(super) end: DirectionEnd,
    /// Boxed, and made the first time a close, switch or park is: an idle relay's two
    /// directions keep a pointer each instead.
    pub(super) underway: Option<Box<Underway>>,
    pub(super) handshake_complete: bool,
    /// Toward the client, switching: forward the old upstream's frames up to its close.
    pub(super) switching: bool,
    /// This direction's source broke the framing: its bytes pass through untracked.
    pub(super) opaque: bool,
    /// Data messages completed since the last [`count`](Self::count).
    pub(super) messages: u64,
}

impl<'a> Direction<'a> {
    /// A direction about to relay its first bytes.
    pub(super) fn new(toward: Toward, shared: &'a Shared<'a>) -> Self {
        Self {
            toward,
            shared,
            tracker: FrameTracker::with_limits(shared.config.limits),
            end: DirectionEnd::default(),
            underway: None,
            handshake_complete: false,
            switching: false,
            opaque: false,
            messages: 0,
        }
    }
}

impl Direction<'_> {
    /// The state of a close, switch or park under way, made the first time one is.
    pub(super) fn underway(&mut self) -> &mut Underway {
        self.underway.get_or_insert_default()
    }

    /// The close, handover or park requested and not yet in.
    pub(super) fn take_requested(&mut self) -> Option<Injection> {
        self.underway.as_deref_mut()?.requested.take()
    }

    /// Takes back a request of `kind` that found no boundary, with its deadline.
    fn withdraw(
        &mut self,
        kind: fn(&Injection) -> bool,
        deadline: fn(&mut Underway) -> &mut Option<Instant>,
    ) {
        if let Some(underway) = self.underway.as_deref_mut() {
            *deadline(underway) = None;
            if underway.requested.as_ref().is_some_and(kind) {
                underway.requested = None;
            }
        }
    }

    /// Moves the held-back frame start to the end of `out`.
    fn release_held(&mut self, out: &mut Vec<u8>) {
        if let Some(underway) = self.underway.as_deref_mut() {
            out.append(&mut underway.held);
        }
    }

    fn count_message(&mut self, frame: &FrameEnd) {
        let data = matches!(
            frame.opcode,
            OpCode::Text | OpCode::Binary | OpCode::Continuation
        );
        if frame.fin && data {
            self.messages += 1;
        }
    }

    /// Counts `bytes` read, and the messages they completed, into the connection's traffic.
    pub(super) fn count(&mut self, bytes: usize) {
        self.end.bytes += bytes as u64;
        let messages = std::mem::take(&mut self.messages);
        if let Some(traffic) = &self.shared.commands.traffic {
            traffic.count(self.toward == Toward::Upstream, messages, bytes as u64);
        }
    }

    /// Takes a command into account.
    pub(super) fn on_command(&mut self, command: &RelayCommand) {
        if self.shared.is_opaque() {
            // Without frame boundaries nothing can be injected; the deadline ends it.
            if *command == RelayCommand::Park {
                self.refuse_park();
            }
            return;
        }
        if self.switching && *command != RelayCommand::Switch {
            // The switch was given up (or overtaken by a close): back to plain relaying.
            self.stop_switching();
        }
        let requested = self
            .underway
            .as_ref()
            .is_some_and(|u| u.requested.is_some());
        let closing = self.end.close.is_some() || self.end.injected.is_some() || requested;
        match command {
            RelayCommand::Park if closing || self.switching => self.refuse_park(),
            RelayCommand::Park if self.end.parked.is_none() => {
                let at = Instant::now() + self.shared.config.switch_timeout;
                let underway = self.underway();
                underway.requested = Some(Injection::Park);
                underway.park_deadline = Some(at);
            }
            RelayCommand::Close { code, reason } if !closing && !self.switching => {
                self.underway().requested = Some(Injection::Close(*code, reason.clone()));
            }
            RelayCommand::Switch if !closing && !self.switching => match self.toward {
                Toward::Upstream => {
                    let at = Instant::now() + self.shared.config.switch_timeout;
                    let underway = self.underway();
                    underway.requested = Some(Injection::Handover);
                    underway.switch_deadline = Some(at);
                }
                // A close frame the client has partly seen cannot be taken back.
                Toward::Client if self.tracker.current_opcode() != Some(OpCode::Close) => {
                    self.switching = true;
                    let config = &self.shared.config;
                    // The old upstream's close comes only after the client's boundary.
                    let at = Instant::now() + config.switch_timeout + config.close_timeout;
                    self.underway().deadline = Some(at);
                }
                Toward::Client => {}
            },
            _ => {}
        }
    }

    /// Toward the upstream: the client stayed inside a message for the whole switch
    /// timeout. The switch is answered [`SwitchError::NoBoundary`] and the relay goes on.
    pub(super) fn give_up_switch(&mut self) {
        self.withdraw(
            |request| matches!(request, Injection::Handover),
            |underway| &mut underway.switch_deadline,
        );
        let pending = self.shared.commands.control.lock().switch.take();
        if let Some(pending) = pending {
            let _ = pending.done.send(Err(SwitchError::NoBoundary));
        }
        // Tells the other direction to stop waiting for the old upstream's close.
        self.shared
            .commands
            .control
            .back_to_run(&RelayCommand::Switch);
    }

    /// A park asked of a direction that is closing or switching: answered at once, and the
    /// relay goes on.
    fn refuse_park(&mut self) {
        self.answer_park(ParkError::Ended);
    }

    /// Tells the park's caller why it failed (once: the first direction to know answers)
    /// and takes the command back, so the other direction stops waiting too.
    fn answer_park(&mut self, error: ParkError) {
        let control = &self.shared.commands.control;
        let pending = control.lock().park.take();
        if let Some(pending) = pending {
            let _ = pending.send(Err(error));
        }
        control.back_to_run(&RelayCommand::Park);
    }

    /// A requested park found no message boundary here within the switch timeout.
    pub(super) fn give_up_park(&mut self) {
        self.withdraw(
            |request| matches!(request, Injection::Park),
            |underway| &mut underway.park_deadline,
        );
        self.answer_park(ParkError::NoBoundary);
    }

    /// Stops reading from the source here; `leftover` was read past the boundary.
    pub(super) fn park(&mut self, leftover: Vec<u8>) {
        if let Some(underway) = self.underway.as_deref_mut() {
            underway.park_deadline = None;
        }
        self.end.parked = Some(leftover);
        if self.shared.parked.fetch_add(1, Ordering::AcqRel) == 1 {
            // Both directions are parked: the other one may be waiting.
            self.shared.wake();
        }
    }

    /// A command other than the park came before both directions parked: back to
    /// relaying, with the bytes read past the boundary first (planned like any read).
    /// Nothing changes once both are parked: the relay is handed off.
    pub(super) fn cancel_park(&mut self) -> Option<Vec<u8>> {
        self.withdraw(
            |request| matches!(request, Injection::Park),
            |underway| &mut underway.park_deadline,
        );
        self.end.parked.as_ref()?;
        let shared = self.shared;
        if shared
            .parked
            .compare_exchange(1, 0, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return None;
        }
        let leftover = self.end.parked.take().unwrap_or_default();
        match self.plan(&leftover) {
            Plan::All if leftover.is_empty() => None,
            Plan::All => Some(leftover),
            Plan::Bytes(bytes) => Some(bytes),
        }
    }

    /// Whether this direction has stopped reading for a park.
    pub(super) fn is_parked(&self) -> bool {
        self.end.parked.is_some()
    }

    /// Toward the client: back to plain relaying; a held-back frame start goes out next.
    fn stop_switching(&mut self) {
        self.switching = false;
        if self.end.injected.is_none() && self.end.close.is_none() {
            if let Some(underway) = self.underway.as_deref_mut() {
                underway.deadline = None;
            }
        }
    }

    /// Follows the frames in `data`, injecting a requested close at a message boundary.
    /// Nothing after an injected close goes out: the destination already has our close.
    ///
    /// A framing error makes the relay opaque (transparent, like nginx and HAProxy): the
    /// bytes go through as they are, so the endpoint that owns the protocol answers it
    /// (typically a 1002 close), and both sides must end within the close timeout.
    pub(super) fn plan(&mut self, data: &[u8]) -> Plan {
        if self.switching {
            return Plan::Bytes(self.plan_switching(data));
        }
        let already_closed = self.end.injected.is_some();
        if self.opaque {
            return if already_closed {
                Plan::Bytes(Vec::new())
            } else {
                Plan::All
            };
        }
        let mut out: Option<Vec<u8>> = None;
        let mut pos = 0;
        while pos < data.len() {
            let at_boundary = self.tracker.at_message_boundary();
            let frame_start = self.tracker.between_frames().then_some(pos);
            let (consumed, frame) = match self.tracker.feed(&data[pos..]) {
                Ok(Some(end)) => end,
                Ok(None) => break,
                Err(FrameError::Protocol(reason)) => {
                    tracing::debug!(reason, toward = ?self.toward, "framing error: relaying opaquely");
                    self.opaque = true;
                    self.shared.go_opaque();
                    break;
                }
                Err(error @ FrameError::TooBig { resume_at, .. }) => {
                    if out.is_none() && !already_closed {
                        out = Some(self.refuse_oversized(data, pos, frame_start, at_boundary));
                    }
                    tracing::debug!(%error, toward = ?self.toward, "closing with 1009");
                    pos += resume_at;
                    continue;
                }
            };
            pos += consumed;
            self.count_message(&frame);
            if frame.opcode == OpCode::Close && self.end.close.is_none() {
                self.end.close = Some(frame.close_code.unwrap_or(close_code::NO_STATUS));
                let at = Instant::now() + self.shared.config.close_timeout;
                self.underway().deadline.get_or_insert(at);
                if self.shared.closes.fetch_add(1, Ordering::AcqRel) == 1 {
                    // Both sides have closed: nothing valid can follow either way.
                    self.handshake_complete = true;
                    self.shared.stop_both();
                }
            }
            if self.end.injected.is_none()
                && frame.message_boundary
                && frame.opcode != OpCode::Close
            {
                match self.take_requested() {
                    Some(Injection::Close(code, reason)) => {
                        let mut buf = data[..pos].to_vec();
                        buf.extend_from_slice(&self.close_frame(code, &reason));
                        out = Some(buf);
                    }
                    Some(Injection::Handover) => {
                        let mut buf = data[..pos].to_vec();
                        buf.extend_from_slice(&self.close_frame(MOVED_CODE, MOVED_REASON));
                        // The rest belongs to the next upstream, unread by the tracker.
                        self.end.handover = Some(data[pos..].to_vec());
                        return Plan::Bytes(buf);
                    }
                    Some(Injection::Park) => {
                        // The rest goes to whoever resumes the relay, unread by the tracker.
                        self.park(data[pos..].to_vec());
                        return Plan::Bytes(data[..pos].to_vec());
                    }
                    None => {}
                }
            }
        }
        match out {
            // The close went in here: what came before it, then the close.
            Some(buf) => Plan::Bytes(buf),
            None if already_closed => Plan::Bytes(Vec::new()),
            None => Plan::All,
        }
    }

    /// A frame past the size limits starts at `frame_start` (or in an earlier read): what
    /// came before it goes out, then a 1009 close if the destination is between messages
    /// (otherwise it only gets the end of the stream). The source is asked to close with
    /// 1009 too, and the rest of what it sends is swallowed up to its close.
    fn refuse_oversized(
        &mut self,
        data: &[u8],
        pos: usize,
        frame_start: Option<usize>,
        at_boundary: bool,
    ) -> Vec<u8> {
        const REASON: &str = "message too big";
        let mut buf = data[..frame_start.unwrap_or(pos)].to_vec();
        if frame_start.is_some() && at_boundary {
            buf.extend_from_slice(&self.close_frame(close_code::MESSAGE_TOO_BIG, REASON));
        } else {
            self.end.injected = Some(close_code::MESSAGE_TOO_BIG);
            self.underway().deadline = Some(Instant::now() + self.shared.config.half_close_timeout);
        }
        self.shared.commands.control.send(RelayCommand::Close {
            code: close_code::MESSAGE_TOO_BIG,
            reason: REASON.into(),
        });
        buf
    }

    /// Toward the client while switching: forwards the old upstream's frames up to its
    /// close, which (with anything after it) the client never sees.
    pub(super) fn plan_switching(&mut self, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < data.len() {
            let frame_start = pos;
            let (consumed, frame) = match self.tracker.feed(&data[pos..]) {
                Ok(Some(end)) => end,
                // Inside a frame that goes on in the next read: hold it back if it is the
                // close, forward it otherwise.
                Ok(None) => {
                    if self.tracker.current_opcode() == Some(OpCode::Close) {
                        self.underway().held.extend_from_slice(&data[pos..]);
                    } else {
                        out.extend_from_slice(&data[pos..]);
                    }
                    break;
                }
                // The old upstream broke the framing mid-switch: no boundary can be trusted
                // any more, so the switch ends with the relay, which turns opaque.
                Err(_) => {
                    self.switching = false;
                    self.opaque = true;
                    self.shared.go_opaque();
                    self.release_held(&mut out);
                    out.extend_from_slice(&data[pos..]);
                    break;
                }
            };
            pos += consumed;
            self.count_message(&frame);
            if frame.opcode == OpCode::Close {
                if let Some(underway) = self.underway.as_deref_mut() {
                    underway.held = Vec::new();
                }
                self.end.close = Some(frame.close_code.unwrap_or(close_code::NO_STATUS));
                if self.tracker.at_message_boundary() {
                    self.end.handed_over = true;
                } else {
                    // Moving now would leave the client with half a message.
                    out.extend_from_slice(&close_frame(
                        close_code::SERVICE_RESTART,
                        "Service Restart",
                        false,
                    ));
                    self.end.injected = Some(close_code::SERVICE_RESTART);
                    self.shared.stop_both();
                }
                self.switching = false;
                return out;
            }
            self.release_held(&mut out);
            out.extend_from_slice(&data[frame_start..pos]);
        }
        out
    }

    pub(super) fn close_frame(&mut self, code: u16, reason: &str) -> Bytes {
        self.end.injected = Some(code);
        self.underway().deadline = Some(Instant::now() + self.shared.config.close_timeout);
        close_frame(code, reason, self.toward == Toward::Upstream)
    }

    /// Toward the client: the upstream ended without a close, and the client is between
    /// messages and has had no close from us either.
    pub(super) fn upstream_vanished(&self) -> bool {
        self.toward == Toward::Client
            && !self.shared.is_opaque()
            && self.end.close.is_none()
            && self.end.injected.is_none()
            && self.tracker.at_message_boundary()
    }

    /// Whether nothing more needs to go this way.
    pub(super) fn finished(&self) -> bool {
        self.handshake_complete || (self.end.injected.is_some() && self.end.close.is_some())
    }

    /// The earliest deadline this direction waits on, counting the relay-wide one.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        let end_by = self.shared.end_by();
        let Some(underway) = self.underway.as_deref() else {
            return end_by;
        };
        [
            underway.deadline,
            underway.switch_deadline,
            underway.park_deadline,
            end_by,
        ]
        .into_iter()
        .flatten()
        .min()
    }
}
