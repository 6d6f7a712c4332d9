//! Finding WebSocket frame and message boundaries in a byte stream without decoding payloads.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};

/// A frame's opcode (RFC 6455 §5.2).
///
/// ```
/// use tower_ws_proxy::frame::OpCode;
/// assert!(OpCode::from_bits(0x8).is_control());
/// assert!(!OpCode::from_bits(0x1).is_control());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpCode {
    /// A later fragment of a message.
    Continuation,
    /// The first frame of a text message.
    Text,
    /// The first frame of a binary message.
    Binary,
    /// A close frame.
    Close,
    /// A ping.
    Ping,
    /// A pong.
    Pong,
    /// A reserved opcode: a protocol error.
    Reserved(u8),
}

impl OpCode {
    /// Decodes the low four bits of a frame's first byte.
    pub fn from_bits(bits: u8) -> Self {
        match bits & 0x0f {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xa => OpCode::Pong,
            other => OpCode::Reserved(other),
        }
    }

    /// Whether this is a control frame (close, ping, pong).
    pub fn is_control(self) -> bool {
        matches!(self, OpCode::Close | OpCode::Ping | OpCode::Pong)
    }
}

/// What the tracker learned when a frame ended.
///
/// ```
/// use tower_ws_proxy::frame::{FrameTracker, OpCode};
///
/// let mut tracker = FrameTracker::default();
/// // An unmasked, final text frame "hi".
/// let (consumed, end) = tracker.feed(&[0x81, 0x02, b'h', b'i']).unwrap().unwrap();
/// assert_eq!(consumed, 4);
/// assert_eq!(end.opcode, OpCode::Text);
/// assert!(end.message_boundary);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameEnd {
    /// The frame's opcode.
    pub opcode: OpCode,
    /// Whether the frame had its FIN bit set.
    pub fin: bool,
    /// Whether the stream is now between messages, where a frame may be injected.
    pub message_boundary: bool,
    /// For a close frame with a status code, the code.
    pub close_code: Option<u16>,
}

/// Why the tracker stopped accepting a stream.
///
/// ```
/// use tower_ws_proxy::frame::{FrameError, FrameTracker};
///
/// let mut tracker = FrameTracker::default();
/// // A ping without FIN: control frames must not be fragmented.
/// let err = tracker.feed(&[0x09, 0x00]).unwrap_err();
/// assert_eq!(err, FrameError::Protocol("fragmented control frame"));
/// assert_eq!(err.close_code(), 1002);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameError {
    /// The stream broke RFC 6455 framing. The tracker's state is then meaningless: what
    /// follows can no longer be split into frames.
    Protocol(&'static str),
    /// A data frame or message is larger than the tracker's [`FrameLimits`]. The tracker
    /// has still read the frame's header, so it goes on following the stream (the caller
    /// may swallow the oversized frame and see what comes after it).
    TooBig {
        /// `"frame"` or `"message"`.
        what: &'static str,
        /// The limit it went past, in bytes.
        limit: u64,
        /// Where the frame's header ended in the data fed: its payload starts there.
        resume_at: usize,
    },
}

impl FrameError {
    /// The close code that answers this error: 1002 (protocol error) or 1009 (message too
    /// big).
    pub fn close_code(&self) -> u16 {
        match self {
            FrameError::Protocol(_) => crate::close_code::PROTOCOL_ERROR,
            FrameError::TooBig { .. } => crate::close_code::MESSAGE_TOO_BIG,
        }
    }
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Protocol(reason) => write!(f, "websocket protocol error: {reason}"),
            FrameError::TooBig { what, limit, .. } => {
                write!(f, "websocket {what} larger than {limit} bytes")
            }
        }
    }
}

impl std::error::Error for FrameError {}

/// The largest data frame and message a [`FrameTracker`] accepts (`None`: no limit).
///
/// The defaults are tungstenite's: 16 MiB a frame, 64 MiB a message.
///
/// ```
/// use tower_ws_proxy::frame::{FrameError, FrameLimits, FrameTracker};
///
/// let limits = FrameLimits { max_frame: Some(4), max_message: None };
/// let mut tracker = FrameTracker::with_limits(limits);
/// let err = tracker.feed(&[0x82, 0x05, 1, 2, 3, 4, 5]).unwrap_err();
/// assert_eq!(err, FrameError::TooBig { what: "frame", limit: 4, resume_at: 2 });
/// // The tracker goes on after the oversized frame's header.
/// let (consumed, end) = tracker.feed(&[1, 2, 3, 4, 5]).unwrap().unwrap();
/// assert_eq!((consumed, end.message_boundary), (5, true));
/// ```
///
/// With the `serde` feature it reads as `{ max_frame = 16777216, max_message = 0 }`, where 0
/// means no limit and a field left out keeps its default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Deserialize),
    serde(default, deny_unknown_fields)
)]
pub struct FrameLimits {
    /// The largest payload of one data frame.
    #[cfg_attr(
        feature = "serde",
        serde(deserialize_with = "crate::deserialize::zero_is_none")
    )]
    pub max_frame: Option<u64>,
    /// The largest payload of one message, over all its fragments.
    #[cfg_attr(
        feature = "serde",
        serde(deserialize_with = "crate::deserialize::zero_is_none")
    )]
    pub max_message: Option<u64>,
}

impl Default for FrameLimits {
    fn default() -> Self {
        Self {
            max_frame: Some(16 << 20),
            max_message: Some(64 << 20),
        }
    }
}

impl FrameLimits {
    /// No limit on frames or messages.
    pub const NONE: FrameLimits = FrameLimits {
        max_frame: None,
        max_message: None,
    };
}

/// Follows one direction of a WebSocket connection and reports where frames end.
///
/// It reads only frame headers (and the two status-code bytes of a close frame), so payloads
/// pass through untouched: masked frames stay masked, compressed ones (RSV1,
/// permessage-deflate) stay compressed.
///
/// ```
/// use tower_ws_proxy::frame::FrameTracker;
///
/// // A final, unmasked text frame of 2 bytes ("hi"), then the start of the next frame.
/// let mut tracker = FrameTracker::default();
/// let (taken, end) = tracker.feed(b"\x81\x02hi\x81").unwrap().expect("a frame ends");
/// assert_eq!(taken, 4);
/// assert!(end.fin);
/// assert!(tracker.at_message_boundary());
/// ```
#[derive(Clone, Debug)]
pub struct FrameTracker {
    header: [u8; 14],
    // u8s keep an idle connection's two trackers small.
    header_len: u8,
    /// Inside a fragmented data message: control frames may still interleave.
    in_message: bool,
    frame: Option<Frame>,
    /// Payload bytes of the data message in progress, for `max_message`.
    message_len: u64,
    // Inline, `u64::MAX` for none: smaller than `FrameLimits`, and no allocation per tracker.
    max_frame: u64,
    max_message: u64,
}

#[derive(Clone, Copy, Debug)]
struct Frame {
    opcode: OpCode,
    fin: bool,
    mask: Option<[u8; 4]>,
    remaining: u64,
    read: u64,
    close_code: [u8; 2],
}

impl Default for FrameTracker {
    /// A tracker without limits.
    fn default() -> Self {
        Self::with_limits(FrameLimits::NONE)
    }
}

impl FrameTracker {
    /// A tracker that reports frames and messages past `limits` (the default tracker has
    /// none).
    pub fn with_limits(limits: FrameLimits) -> Self {
        Self {
            header: [0; 14],
            header_len: 0,
            in_message: false,
            frame: None,
            message_len: 0,
            max_frame: limits.max_frame.unwrap_or(u64::MAX),
            max_message: limits.max_message.unwrap_or(u64::MAX),
        }
    }

    /// Whether the next byte fed starts a new frame (nothing of a header or payload is
    /// pending).
    pub fn between_frames(&self) -> bool {
        self.header_len == 0 && self.frame.is_none()
    }

    /// Whether the stream is between messages and not inside a frame.
    pub fn at_message_boundary(&self) -> bool {
        self.header_len == 0 && self.frame.is_none() && !self.in_message
    }

    /// The opcode of the frame in progress, once its first byte has been seen.
    ///
    /// ```
    /// use tower_ws_proxy::frame::{FrameTracker, OpCode};
    ///
    /// let mut tracker = FrameTracker::default();
    /// assert_eq!(tracker.current_opcode(), None);
    /// tracker.feed(&[0x88]).unwrap(); // the first byte of a close frame
    /// assert_eq!(tracker.current_opcode(), Some(OpCode::Close));
    /// ```
    pub fn current_opcode(&self) -> Option<OpCode> {
        match &self.frame {
            Some(frame) => Some(frame.opcode),
            None if self.header_len > 0 => Some(OpCode::from_bits(self.header[0])),
            None => None,
        }
    }

    /// Consumes bytes up to the end of the next frame. Returns how many bytes of `data` that
    /// took and what ended, or `None` if all of `data` was consumed inside a frame.
    ///
    /// An error comes only from a frame's header, so only from a call that began
    /// [`between_frames`](Self::between_frames) or inside a header. After
    /// [`FrameError::TooBig`] the frame's header is consumed (but not counted in the
    /// returned offsets) and feeding may go on.
    pub fn feed(&mut self, data: &[u8]) -> Result<Option<(usize, FrameEnd)>, FrameError> {
        let mut pos = 0;
        loop {
            if let Some(frame) = &mut self.frame {
                let take = frame.remaining.min((data.len() - pos) as u64) as usize;
                if frame.opcode == OpCode::Close {
                    for (i, byte) in data[pos..pos + take].iter().enumerate() {
                        let at = frame.read + i as u64;
                        if at < 2 {
                            let key = frame.mask.map_or(0, |m| m[(at % 4) as usize]);
                            frame.close_code[at as usize] = byte ^ key;
                        }
                    }
                }
                frame.read += take as u64;
                frame.remaining -= take as u64;
                pos += take;
                if frame.remaining > 0 {
                    return Ok(None);
                }
                return Ok(Some((pos, self.finish_frame())));
            }
            // Header: at least two bytes, then the length they announce.
            let needed = self.header_needed();
            let have = usize::from(self.header_len);
            let take = (needed - have).min(data.len() - pos);
            self.header[have..have + take].copy_from_slice(&data[pos..pos + take]);
            self.header_len += take as u8;
            pos += take;
            if usize::from(self.header_len) < self.header_needed() {
                if pos == data.len() {
                    return Ok(None);
                }
                continue;
            }
            if let Some((what, limit)) = self.start_frame()? {
                let resume_at = pos;
                return Err(FrameError::TooBig {
                    what,
                    limit,
                    resume_at,
                });
            }
            if self.frame.is_some_and(|f| f.remaining == 0) {
                return Ok(Some((pos, self.finish_frame())));
            }
            if pos == data.len() {
                return Ok(None);
            }
        }
    }

    fn header_needed(&self) -> usize {
        if self.header_len < 2 {
            return 2;
        }
        let length = match self.header[1] & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if self.header[1] & 0x80 != 0 { 4 } else { 0 };
        2 + length + mask
    }

    /// Starts the frame whose header is complete; reports a limit it goes past.
    fn start_frame(&mut self) -> Result<Option<(&'static str, u64)>, FrameError> {
        let h = &self.header;
        let fin = h[0] & 0x80 != 0;
        let opcode = OpCode::from_bits(h[0]);
        let (remaining, mask_at) = match h[1] & 0x7f {
            126 => (u64::from(u16::from_be_bytes([h[2], h[3]])), 4),
            127 => {
                let length = u64::from_be_bytes(h[2..10].try_into().expect("8 bytes"));
                if length >> 63 != 0 {
                    return Err(FrameError::Protocol("payload length has its top bit set"));
                }
                (length, 10)
            }
            short => (u64::from(short), 2),
        };
        let mask = (h[1] & 0x80 != 0).then(|| h[mask_at..mask_at + 4].try_into().expect("4 bytes"));
        match opcode {
            OpCode::Reserved(_) => return Err(FrameError::Protocol("reserved opcode")),
            op if op.is_control() && !fin => {
                return Err(FrameError::Protocol("fragmented control frame"))
            }
            op if op.is_control() && remaining > 125 => {
                return Err(FrameError::Protocol("control frame longer than 125 bytes"))
            }
            OpCode::Continuation if !self.in_message => {
                return Err(FrameError::Protocol("continuation frame outside a message"))
            }
            OpCode::Text | OpCode::Binary if self.in_message => {
                return Err(FrameError::Protocol(
                    "new message inside a fragmented message",
                ))
            }
            _ => {}
        }
        self.header_len = 0;
        let mut too_big = None;
        if !opcode.is_control() {
            if opcode != OpCode::Continuation {
                self.message_len = 0;
            }
            self.message_len = self.message_len.saturating_add(remaining);
            // `u64::MAX` (no limit) is never exceeded: no length is above it.
            too_big = if remaining > self.max_frame {
                Some(("frame", self.max_frame))
            } else if self.message_len > self.max_message {
                Some(("message", self.max_message))
            } else {
                None
            };
        }
        self.frame = Some(Frame {
            opcode,
            fin,
            mask,
            remaining,
            read: 0,
            close_code: [0; 2],
        });
        Ok(too_big)
    }

    fn finish_frame(&mut self) -> FrameEnd {
        let frame = self.frame.take().expect("a frame is in progress");
        if !frame.opcode.is_control() {
            self.in_message = !frame.fin;
        }
        FrameEnd {
            opcode: frame.opcode,
            fin: frame.fin,
            message_boundary: !self.in_message,
            close_code: (frame.opcode == OpCode::Close && frame.read >= 2)
                .then(|| u16::from_be_bytes(frame.close_code)),
        }
    }
}

/// Encodes a close frame. Frames toward a server must be masked (RFC 6455 §5.3): pass
/// `masked = true` for those, and a random mask is used.
///
/// ```
/// use tower_ws_proxy::frame::{close_frame, FrameTracker};
///
/// let frame = close_frame(1001, "going away", true);
/// let (_, end) = FrameTracker::default().feed(&frame).unwrap().unwrap();
/// assert_eq!(end.close_code, Some(1001));
/// ```
pub fn close_frame(code: u16, reason: &str, masked: bool) -> Bytes {
    // Control payloads are at most 125 bytes: 2 for the code, the rest for the reason.
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let reason = &reason.as_bytes()[..end];
    let mut payload = Vec::with_capacity(2 + reason.len());
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(reason);

    let mut frame = BytesMut::with_capacity(6 + payload.len());
    frame.put_u8(0x88);
    if masked {
        let mask = fastrand::u32(..).to_be_bytes();
        frame.put_u8(0x80 | payload.len() as u8);
        frame.put_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    } else {
        frame.put_u8(payload.len() as u8);
        frame.put_slice(&payload);
    }
    frame.freeze()
}
