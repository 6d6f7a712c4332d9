//! One direction's frame bookkeeping: where a requested close or a handover goes in.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use tokio::time::Instant;

use crate::frame::{close_frame, FrameTracker, OpCode, ProtocolError};

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
}

/// The state of one direction.
pub(super) struct Direction<'a> {
    pub(super) toward: Toward,
    pub(super) shared: &'a Shared<'a>,
    pub(super) tracker: FrameTracker,
    pub(super) end: DirectionEnd,
    pub(super) requested: Option<Injection>,
    pub(super) deadline: Option<Instant>,
    pub(super) handshake_complete: bool,
    /// Toward the client, switching: forward the old upstream's frames up to its close.
    pub(super) switching: bool,
    /// Toward the client, switching: the start of a frame that may be the old upstream's
    /// close, held back until it is known.
    pub(super) held: Vec<u8>,
}

impl Direction<'_> {
    /// Takes a command into account.
    pub(super) fn on_command(&mut self, command: &RelayCommand) {
        let closing =
            self.end.close.is_some() || self.end.injected.is_some() || self.requested.is_some();
        match command {
            RelayCommand::Close { code, reason } if !closing && !self.switching => {
                self.requested = Some(Injection::Close(*code, reason.clone()));
            }
            RelayCommand::Switch if !closing && !self.switching => match self.toward {
                Toward::Upstream => self.requested = Some(Injection::Handover),
                // A close frame the client has partly seen cannot be taken back.
                Toward::Client if self.tracker.current_opcode() != Some(OpCode::Close) => {
                    self.switching = true;
                    self.deadline = Some(Instant::now() + self.shared.config.close_timeout);
                }
                Toward::Client => {}
            },
            _ => {}
        }
    }

    /// Follows the frames in `data`, injecting a requested close at a message boundary.
    /// Nothing after an injected close goes out: the destination already has our close.
    pub(super) fn plan(&mut self, data: &[u8]) -> Result<Plan, ProtocolError> {
        if self.switching {
            return self.plan_switching(data).map(Plan::Bytes);
        }
        let already_closed = self.end.injected.is_some();
        let mut out: Option<Vec<u8>> = None;
        let mut pos = 0;
        while pos < data.len() {
            let Some((consumed, frame)) = self.tracker.feed(&data[pos..])? else {
                break;
            };
            pos += consumed;
            if frame.opcode == OpCode::Close && self.end.close.is_none() {
                self.end.close = Some(frame.close_code.unwrap_or(1005));
                self.deadline
                    .get_or_insert(Instant::now() + self.shared.config.close_timeout);
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
                match self.requested.take() {
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
                        return Ok(Plan::Bytes(buf));
                    }
                    None => {}
                }
            }
        }
        Ok(match out {
            // The close went in here: what came before it, then the close.
            Some(buf) => Plan::Bytes(buf),
            None if already_closed => Plan::Bytes(Vec::new()),
            None => Plan::All,
        })
    }

    /// Toward the client while switching: forwards the old upstream's frames up to its
    /// close, which (with anything after it) the client never sees.
    pub(super) fn plan_switching(&mut self, data: &[u8]) -> Result<Vec<u8>, ProtocolError> {
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < data.len() {
            let frame_start = pos;
            let Some((consumed, frame)) = self.tracker.feed(&data[pos..])? else {
                // Inside a frame that goes on in the next read: hold it back if it is the
                // close, forward it otherwise.
                if self.tracker.current_opcode() == Some(OpCode::Close) {
                    self.held.extend_from_slice(&data[pos..]);
                } else {
                    out.extend_from_slice(&data[pos..]);
                }
                break;
            };
            pos += consumed;
            if frame.opcode == OpCode::Close {
                self.held = Vec::new();
                self.end.close = Some(frame.close_code.unwrap_or(1005));
                if self.tracker.at_message_boundary() {
                    self.end.handed_over = true;
                } else {
                    // Moving now would leave the client with half a message.
                    out.extend_from_slice(&close_frame(1012, "Service Restart", false));
                    self.end.injected = Some(1012);
                    self.shared.stop_both();
                }
                self.switching = false;
                return Ok(out);
            }
            out.extend_from_slice(&std::mem::take(&mut self.held));
            out.extend_from_slice(&data[frame_start..pos]);
        }
        Ok(out)
    }

    pub(super) fn close_frame(&mut self, code: u16, reason: &str) -> Bytes {
        self.end.injected = Some(code);
        self.deadline = Some(Instant::now() + self.shared.config.close_timeout);
        close_frame(code, reason, self.toward == Toward::Upstream)
    }

    /// Toward the client: the upstream ended without a close, and the client is between
    /// messages and has had no close from us either.
    pub(super) fn upstream_vanished(&self) -> bool {
        self.toward == Toward::Client
            && self.end.close.is_none()
            && self.end.injected.is_none()
            && self.tracker.at_message_boundary()
    }

    /// Whether nothing more needs to go this way.
    pub(super) fn finished(&self) -> bool {
        self.handshake_complete || (self.end.injected.is_some() && self.end.close.is_some())
    }
}
