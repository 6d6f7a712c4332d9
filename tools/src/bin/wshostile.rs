//! Hostile and broken WebSocket clients against a loopback gateway: a probe for fault suites
//! and soaks.
//!
//! Each `--kind` opens `--connections` raw TCP sockets to `--url` (`{user}` replaced per
//! connection) and writes its bytes by hand: a slowloris head, a message parked mid-way, frames
//! that break RFC 6455, bad handshakes, an oversized head, a 100 MiB frame. For each connection
//! it records what the gateway answered (an HTTP status, a close code, EOF, a reset, or
//! nothing before the deadline) and how long that took, and prints one line per kind:
//!
//! ```text
//! kind=reserved-opcode n=5 answered=close-1002+eof:5 timeouts=0 median_ms=3 max_ms=4
//! ```
//!
//! Answers: `http-<status>` (for a 101 followed by what came after it), `close-<code>` (or
//! `close-none` without a code) followed by `+eof`, `+reset` or `+timeout` for how the
//! socket ended after it, or just `eof`, `reset`, `timeout`; `held` for a connection that
//! stayed open and quiet for `--hold-ms` (parked-mid-message); `connect-error`,
//! `handshake-<answer>` when the valid handshake a kind needs failed. A `timeouts` count is
//! the connections whose last wait ran into `--answer-ms` (or the end of `--seconds`).
//! `elapsed` runs from the hostile bytes (after any handshake) to that last answer.
//!
//! It judges nothing: it exits 0 whatever the answers (2 on bad arguments or a non-loopback
//! target). `--json` prints one JSON object per kind instead.

use std::{
    collections::BTreeMap,
    fmt,
    process::ExitCode,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use clap::{Parser, ValueEnum};
use serde_json::json;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use wscluster_tools::check_loopback;

#[derive(Parser, Clone, Debug)]
#[command(about = "Hostile and broken WebSocket clients against a loopback gateway")]
struct Args {
    /// Target, with `{user}` for the user id, e.g. `ws://127.0.0.1:7000/connect/{user}`.
    #[arg(long)]
    url: String,
    /// A kind of client (repeat for several; `all` for every kind).
    #[arg(long = "kind", value_enum, default_values_t = [KindArg::All])]
    kinds: Vec<KindArg>,
    /// Connections per kind (all kinds and connections run at once).
    #[arg(long, default_value_t = 5)]
    connections: usize,
    /// How long a connection that gets no answer on purpose (parked-mid-message) stays open
    /// before it leaves, in ms.
    #[arg(long, default_value_t = 2000)]
    hold_ms: u64,
    /// The deadline of every connect and every wait for an answer, in ms.
    #[arg(long, default_value_t = 5000)]
    answer_ms: u64,
    /// The whole run ends after this many seconds, answered or not.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Seed for the garbage bytes and masks (default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// One JSON object per kind instead of `key=value` lines.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
enum KindArg {
    All,
    PartialHead,
    ParkedMidMessage,
    ReservedOpcode,
    LongPing,
    FragmentedPing,
    Unmasked,
    Garbage,
    HalfClose,
    BadKey,
    MissingKey,
    BadVersion,
    UpgradeWithBody,
    OversizedHead,
    BigMessage,
}

impl KindArg {
    const EVERY: [KindArg; 14] = [
        KindArg::PartialHead,
        KindArg::ParkedMidMessage,
        KindArg::ReservedOpcode,
        KindArg::LongPing,
        KindArg::FragmentedPing,
        KindArg::Unmasked,
        KindArg::Garbage,
        KindArg::HalfClose,
        KindArg::BadKey,
        KindArg::MissingKey,
        KindArg::BadVersion,
        KindArg::UpgradeWithBody,
        KindArg::OversizedHead,
        KindArg::BigMessage,
    ];

    fn name(self) -> String {
        self.to_possible_value()
            .map(|v| v.get_name().to_owned())
            .unwrap_or_default()
    }
}

/// Where to connect and what to put in the request line.
#[derive(Debug)]
struct Target {
    authority: String,
    path_template: String,
}

impl Target {
    fn parse(url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("ws://")
            .or_else(|| url.strip_prefix("http://"))
            .ok_or_else(|| format!("only ws:// and http:// URLs are supported, got `{url}`"))?;
        let (authority, path) = match rest.find('/') {
            Some(at) => (&rest[..at], &rest[at..]),
            None => (rest, "/"),
        };
        Ok(Self {
            authority: authority.to_owned(),
            path_template: path.to_owned(),
        })
    }

    fn path(&self, user: &str) -> String {
        self.path_template.replace("{user}", user)
    }
}

/// How a socket ended after (or without) a close frame.
#[derive(Clone, Copy, Debug)]
enum End {
    Eof,
    Reset,
    Timeout,
}

impl fmt::Display for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            End::Eof => "eof",
            End::Reset => "reset",
            End::Timeout => "timeout",
        })
    }
}

/// One connection's result.
#[derive(Debug)]
struct Outcome {
    answer: String,
    timed_out: bool,
    elapsed: Duration,
}

impl Outcome {
    fn new(answer: impl Into<String>, timed_out: bool, since: Instant) -> Self {
        Self {
            answer: answer.into(),
            timed_out,
            elapsed: since.elapsed(),
        }
    }
}

/// A tiny xorshift generator: masks, keys and garbage need no cryptographic randomness.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn fill(&mut self, bytes: &mut [u8]) {
        for chunk in bytes.chunks_mut(8) {
            let word = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
    }

    fn mask(&mut self) -> [u8; 4] {
        let mut mask = [0; 4];
        self.fill(&mut mask);
        mask
    }
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A client frame: `first` is FIN/RSV/opcode, `payload` is masked with `mask` when given;
/// `announce` overrides the length in the header (for a frame whose payload never comes).
fn frame(first: u8, payload: &[u8], mask: Option<[u8; 4]>, announce: Option<u64>) -> Vec<u8> {
    let len = announce.unwrap_or(payload.len() as u64);
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let mut out = vec![first];
    if len < 126 {
        out.push(mask_bit | len as u8);
    } else if len <= u64::from(u16::MAX) {
        out.push(mask_bit | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(mask_bit | 127);
        out.extend_from_slice(&len.to_be_bytes());
    }
    match mask {
        Some(mask) => {
            out.extend_from_slice(&mask);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// Per-connection state shared by the kinds.
#[derive(Debug)]
struct Conn {
    stream: TcpStream,
    /// Bytes read past the last thing parsed.
    buffer: Vec<u8>,
    /// The last 101 response head, for its `Sec-WebSocket-Accept`.
    last_head: Option<String>,
}

/// What a read returned.
enum Read {
    Data,
    End(End),
}

/// The run's deadlines and settings.
#[derive(Debug)]
struct Plan {
    target: Target,
    answer: Duration,
    hold: Duration,
    run_end: Instant,
}

impl Plan {
    /// `answer` from now, but never past the end of the run.
    fn deadline(&self, wait: Duration) -> Instant {
        (Instant::now() + wait).min(self.run_end)
    }
}

impl Conn {
    async fn open(plan: &Plan) -> Option<Self> {
        let deadline = plan.deadline(plan.answer);
        let stream = tokio::time::timeout_at(
            deadline.into(),
            TcpStream::connect(plan.target.authority.as_str()),
        )
        .await
        .ok()?
        .ok()?;
        let _ = stream.set_nodelay(true);
        Some(Self {
            stream,
            buffer: Vec::new(),
            last_head: None,
        })
    }

    /// Writes everything before `deadline`; a failure (the server closed, or stopped
    /// reading) is not an answer by itself: the reads that follow report how it ended.
    async fn send(&mut self, bytes: &[u8], deadline: Instant) -> bool {
        matches!(
            tokio::time::timeout_at(deadline.into(), self.stream.write_all(bytes)).await,
            Ok(Ok(()))
        )
    }

    async fn read_more(&mut self, deadline: Instant) -> Read {
        let mut chunk = [0u8; 16 * 1024];
        match tokio::time::timeout_at(deadline.into(), self.stream.read(&mut chunk)).await {
            Err(_) => Read::End(End::Timeout),
            Ok(Ok(0)) => Read::End(End::Eof),
            Ok(Ok(n)) => {
                self.buffer.extend_from_slice(&chunk[..n]);
                Read::Data
            }
            Ok(Err(_)) => Read::End(End::Reset),
        }
    }

    /// Reads an HTTP response head: its status, or how the socket ended without one.
    async fn response_status(&mut self, deadline: Instant) -> Result<u16, End> {
        loop {
            if let Some(at) = find(&self.buffer, b"\r\n\r\n") {
                let head: Vec<u8> = self.buffer.drain(..at + 4).collect();
                let head = String::from_utf8_lossy(&head).into_owned();
                let status = head
                    .split_whitespace()
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                if status == 101 {
                    self.last_head = Some(head);
                }
                return Ok(status);
            }
            if self.buffer.len() > 64 * 1024 {
                return Ok(0);
            }
            if let Read::End(end) = self.read_more(deadline).await {
                // A status line without its blank line still says something.
                return match std::str::from_utf8(&self.buffer)
                    .ok()
                    .and_then(|s| s.strip_prefix("HTTP/1.1 "))
                    .and_then(|s| s.get(..3))
                    .and_then(|s| s.parse().ok())
                {
                    Some(status) => Ok(status),
                    None => Err(end),
                };
            }
        }
    }

    /// Skips the server's data and control frames until its close frame, then waits for the
    /// socket to end; returns `close-<code>+<end>` or just `<end>`.
    async fn until_close(&mut self, deadline: Instant) -> (String, bool) {
        let mut close: Option<Option<u16>> = None;
        loop {
            if close.is_none() {
                match parse_server_frame(&self.buffer) {
                    FrameParse::Incomplete => {}
                    FrameParse::Frame {
                        len,
                        opcode,
                        payload,
                    } => {
                        if opcode == 0x8 {
                            close = Some(
                                (payload.len() >= 2)
                                    .then(|| u16::from_be_bytes([payload[0], payload[1]])),
                            );
                        }
                        self.buffer.drain(..len);
                        continue;
                    }
                    FrameParse::Invalid => {
                        let end = self.drain_until_end(deadline).await;
                        return (format!("bad-frame+{end}"), matches!(end, End::Timeout));
                    }
                }
            } else {
                self.buffer.clear();
            }
            if let Read::End(end) = self.read_more(deadline).await {
                let timed_out = matches!(end, End::Timeout);
                return match close {
                    Some(Some(code)) => (format!("close-{code}+{end}"), timed_out),
                    Some(None) => (format!("close-none+{end}"), timed_out),
                    None => (end.to_string(), timed_out),
                };
            }
        }
    }

    async fn drain_until_end(&mut self, deadline: Instant) -> End {
        loop {
            self.buffer.clear();
            if let Read::End(end) = self.read_more(deadline).await {
                return end;
            }
        }
    }
}

enum FrameParse<'a> {
    Incomplete,
    Frame {
        len: usize,
        opcode: u8,
        payload: &'a [u8],
    },
    Invalid,
}

/// One server frame at the start of `buf` (servers do not mask, but a mask is tolerated).
fn parse_server_frame(buf: &[u8]) -> FrameParse<'_> {
    if buf.len() < 2 {
        return FrameParse::Incomplete;
    }
    let opcode = buf[0] & 0x0f;
    let masked = buf[1] & 0x80 != 0;
    let (len, mut at) = match buf[1] & 0x7f {
        126 if buf.len() >= 4 => (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
        127 if buf.len() >= 10 => {
            let mut n = [0; 8];
            n.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(n), 10)
        }
        126 | 127 => return FrameParse::Incomplete,
        n => (u64::from(n), 2),
    };
    if len > 16 * 1024 * 1024 {
        return FrameParse::Invalid;
    }
    if masked {
        at += 4;
    }
    let end = at + len as usize;
    if buf.len() < end {
        return FrameParse::Incomplete;
    }
    FrameParse::Frame {
        len: end,
        opcode,
        payload: &buf[at..end],
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The request head of an upgrade; `key`/`version` `None` leave the header out, `extra` is
/// appended verbatim (each line ending in CRLF).
fn upgrade_request(
    plan: &Plan,
    user: &str,
    key: Option<&str>,
    version: &str,
    extra: &str,
) -> String {
    let mut head = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: {version}\r\n",
        plan.target.path(user),
        plan.target.authority,
    );
    if let Some(key) = key {
        head.push_str(&format!("Sec-WebSocket-Key: {key}\r\n"));
    }
    head.push_str(extra);
    head.push_str("\r\n");
    head
}

fn valid_key(rng: &mut Rng) -> String {
    let mut raw = [0u8; 16];
    rng.fill(&mut raw);
    base64(&raw)
}

/// Opens a socket and completes a valid handshake; the error is the outcome to report.
async fn handshake(plan: &Plan, user: &str, rng: &mut Rng) -> Result<Conn, Outcome> {
    let started = Instant::now();
    let mut conn = Conn::open(plan)
        .await
        .ok_or_else(|| Outcome::new("connect-error", false, started))?;
    let key = valid_key(rng);
    let request = upgrade_request(plan, user, Some(&key), "13", "");
    let deadline = plan.deadline(plan.answer);
    conn.send(request.as_bytes(), deadline).await;
    match conn.response_status(deadline).await {
        Ok(101) => {
            let head = conn
                .last_head
                .take()
                .unwrap_or_default()
                .to_ascii_lowercase();
            let accept = derive_accept_key(key.as_bytes()).to_ascii_lowercase();
            if !head.contains(&format!("sec-websocket-accept: {accept}")) {
                return Err(Outcome::new("handshake-bad-accept", false, started));
            }
            Ok(conn)
        }
        Ok(status) => Err(Outcome::new(
            format!("handshake-http-{status}"),
            false,
            started,
        )),
        Err(end) => Err(Outcome::new(
            format!("handshake-{end}"),
            matches!(end, End::Timeout),
            started,
        )),
    }
}

/// Sends a request head (and whatever follows it) on a fresh socket and reports the status;
/// after a 101, also what came next.
async fn http_probe(plan: &Plan, bytes: &[u8]) -> Outcome {
    let Some(mut conn) = Conn::open(plan).await else {
        return Outcome::new("connect-error", false, Instant::now());
    };
    let started = Instant::now();
    let deadline = plan.deadline(plan.answer);
    conn.send(bytes, deadline).await;
    match conn.response_status(deadline).await {
        Ok(101) => {
            let (after, timed_out) = conn.until_close(plan.deadline(plan.answer)).await;
            Outcome::new(format!("http-101+{after}"), timed_out, started)
        }
        Ok(status) => Outcome::new(format!("http-{status}"), false, started),
        Err(end) => Outcome::new(end.to_string(), matches!(end, End::Timeout), started),
    }
}

/// After a valid handshake, sends `bytes` and reports the close and end that follow.
async fn after_handshake(plan: &Plan, user: &str, rng: &mut Rng, bytes: &[u8]) -> Outcome {
    let mut conn = match handshake(plan, user, rng).await {
        Ok(conn) => conn,
        Err(outcome) => return outcome,
    };
    let started = Instant::now();
    conn.send(bytes, plan.deadline(plan.answer)).await;
    let (answer, timed_out) = conn.until_close(plan.deadline(plan.answer)).await;
    Outcome::new(answer, timed_out, started)
}

async fn run_one(plan: Arc<Plan>, kind: KindArg, index: usize, seed: u64) -> Outcome {
    let mut rng = Rng::new(seed);
    let user = format!("hostile-{}-{index}", kind.name());
    let plan = &*plan;
    match kind {
        KindArg::All => unreachable!("expanded before the run"),
        KindArg::PartialHead => {
            let Some(mut conn) = Conn::open(plan).await else {
                return Outcome::new("connect-error", false, Instant::now());
            };
            let started = Instant::now();
            let head = format!(
                "GET {} HTTP/1.1\r\nHost: {}\r\n",
                plan.target.path(&user),
                plan.target.authority
            );
            let deadline = plan.deadline(plan.answer);
            conn.send(head.as_bytes(), deadline).await;
            match conn.response_status(deadline).await {
                Ok(status) => Outcome::new(format!("http-{status}"), false, started),
                Err(end) => Outcome::new(end.to_string(), matches!(end, End::Timeout), started),
            }
        }
        KindArg::ParkedMidMessage => {
            let mut conn = match handshake(plan, &user, &mut rng).await {
                Ok(conn) => conn,
                Err(outcome) => return outcome,
            };
            let started = Instant::now();
            let bytes = frame(0x01, b"parked", Some(rng.mask()), None);
            conn.send(&bytes, plan.deadline(plan.answer)).await;
            let (answer, _) = conn.until_close(plan.deadline(plan.hold)).await;
            // Quiet for the whole hold is what this kind expects: it then just leaves.
            if answer == "timeout" {
                Outcome::new("held", false, started)
            } else {
                let timed_out = answer.ends_with("timeout");
                Outcome::new(answer, timed_out, started)
            }
        }
        KindArg::ReservedOpcode => {
            let bytes = frame(0x83, b"reserved", Some(rng.mask()), None);
            after_handshake(plan, &user, &mut rng, &bytes).await
        }
        KindArg::LongPing => {
            let bytes = frame(0x89, &[b'p'; 126], Some(rng.mask()), None);
            after_handshake(plan, &user, &mut rng, &bytes).await
        }
        KindArg::FragmentedPing => {
            let bytes = frame(0x09, b"ping", Some(rng.mask()), None);
            after_handshake(plan, &user, &mut rng, &bytes).await
        }
        KindArg::Unmasked => {
            let bytes = frame(0x81, b"unmasked", None, None);
            after_handshake(plan, &user, &mut rng, &bytes).await
        }
        KindArg::Garbage => {
            // Random bytes, but the first has RSV bits set, so that every seed is a
            // protocol error at once rather than, now and then, a header announcing a
            // long valid frame.
            let mut bytes = vec![0u8; 256];
            rng.fill(&mut bytes);
            bytes[0] |= 0x70;
            after_handshake(plan, &user, &mut rng, &bytes).await
        }
        KindArg::HalfClose => {
            let mut conn = match handshake(plan, &user, &mut rng).await {
                Ok(conn) => conn,
                Err(outcome) => return outcome,
            };
            let started = Instant::now();
            let _ = conn.stream.shutdown().await;
            let (answer, timed_out) = conn.until_close(plan.deadline(plan.answer)).await;
            Outcome::new(answer, timed_out, started)
        }
        KindArg::BadKey => {
            // Valid base64, but of 12 bytes instead of 16.
            let request = upgrade_request(plan, &user, Some("c2hvcnQta2V5LTEw"), "13", "");
            http_probe(plan, request.as_bytes()).await
        }
        KindArg::MissingKey => {
            let request = upgrade_request(plan, &user, None, "13", "");
            http_probe(plan, request.as_bytes()).await
        }
        KindArg::BadVersion => {
            let request = upgrade_request(plan, &user, Some(&valid_key(&mut rng)), "8", "");
            http_probe(plan, request.as_bytes()).await
        }
        KindArg::UpgradeWithBody => {
            let key = valid_key(&mut rng);
            let mut request =
                upgrade_request(plan, &user, Some(&key), "13", "Content-Length: 5\r\n");
            request.push_str("hello");
            http_probe(plan, request.as_bytes()).await
        }
        KindArg::OversizedHead => {
            let filler = "a".repeat(1000);
            let extra: String = (0..100)
                .map(|i| format!("X-Filler-{i:03}: {filler}\r\n"))
                .collect();
            let key = valid_key(&mut rng);
            let request = upgrade_request(plan, &user, Some(&key), "13", &extra);
            http_probe(plan, request.as_bytes()).await
        }
        KindArg::BigMessage => {
            let mut bytes = frame(0x82, &[], Some(rng.mask()), Some(100 * 1024 * 1024));
            let mask: [u8; 4] = bytes[bytes.len() - 4..].try_into().unwrap_or([0; 4]);
            bytes.extend((0..64 * 1024).map(|i| mask[i % 4]));
            after_handshake(plan, &user, &mut rng, &bytes).await
        }
    }
}

/// The outcomes of one kind.
#[derive(Debug)]
struct Summary {
    kind: String,
    n: usize,
    answered: BTreeMap<String, usize>,
    timeouts: usize,
    median_ms: u64,
    max_ms: u64,
}

impl Summary {
    fn of(kind: KindArg, outcomes: &[Outcome]) -> Self {
        let mut answered = BTreeMap::new();
        for outcome in outcomes {
            *answered.entry(outcome.answer.clone()).or_insert(0) += 1;
        }
        let mut ms: Vec<u64> = outcomes
            .iter()
            .map(|o| o.elapsed.as_millis() as u64)
            .collect();
        ms.sort_unstable();
        Self {
            kind: kind.name(),
            n: outcomes.len(),
            answered,
            timeouts: outcomes.iter().filter(|o| o.timed_out).count(),
            median_ms: ms.get(ms.len() / 2).copied().unwrap_or(0),
            max_ms: ms.last().copied().unwrap_or(0),
        }
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let answered: Vec<String> = self
            .answered
            .iter()
            .map(|(answer, count)| format!("{answer}:{count}"))
            .collect();
        write!(
            f,
            "kind={} n={} answered={} timeouts={} median_ms={} max_ms={}",
            self.kind,
            self.n,
            answered.join(","),
            self.timeouts,
            self.median_ms,
            self.max_ms
        )
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    if let Err(error) = check_loopback(&args.url) {
        eprintln!("error: {error}");
        return ExitCode::from(2);
    }
    let target = match Target::parse(&args.url) {
        Ok(target) => target,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    let mut kinds: Vec<KindArg> = if args.kinds.contains(&KindArg::All) {
        KindArg::EVERY.to_vec()
    } else {
        args.kinds.clone()
    };
    kinds.dedup();
    let run = Duration::from_secs(args.seconds);
    let plan = Arc::new(Plan {
        target,
        answer: Duration::from_millis(args.answer_ms),
        hold: Duration::from_millis(args.hold_ms),
        run_end: Instant::now() + run,
    });
    let seed = args.seed.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let tasks: Vec<(KindArg, Vec<_>)> = kinds
        .iter()
        .enumerate()
        .map(|(k, &kind)| {
            let handles = (0..args.connections)
                .map(|i| {
                    let seed = seed ^ ((k as u64) << 40) ^ (i as u64).wrapping_mul(0x9e37_79b9);
                    tokio::spawn(run_one(plan.clone(), kind, i, seed))
                })
                .collect();
            (kind, handles)
        })
        .collect();
    // Every wait already ends by the end of the run; this is a backstop past it.
    let backstop = tokio::time::Instant::from(plan.run_end) + Duration::from_secs(2);
    for (kind, handles) in tasks {
        let mut outcomes = Vec::with_capacity(handles.len());
        for handle in handles {
            let abort = handle.abort_handle();
            let outcome = match tokio::time::timeout_at(backstop, handle).await {
                Ok(Ok(outcome)) => outcome,
                Ok(Err(_)) => Outcome::new("tool-error", false, Instant::now()),
                Err(_) => {
                    abort.abort();
                    Outcome {
                        answer: "timeout".into(),
                        timed_out: true,
                        elapsed: run,
                    }
                }
            };
            outcomes.push(outcome);
        }
        let summary = Summary::of(kind, &outcomes);
        if args.json {
            println!(
                "{}",
                json!({
                    "kind": summary.kind,
                    "n": summary.n,
                    "answered": summary.answered,
                    "timeouts": summary.timeouts,
                    "median_ms": summary.median_ms,
                    "max_ms": summary.max_ms,
                })
            );
        } else {
            println!("{summary}");
        }
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64(&[0u8; 16]).len(), 24);
    }

    #[test]
    fn frames_have_the_announced_lengths() {
        assert_eq!(frame(0x81, b"hi", None, None), [0x81, 0x02, b'h', b'i']);
        let masked = frame(0x89, &[0; 126], Some([1, 2, 3, 4]), None);
        assert_eq!(&masked[..8], &[0x89, 0xfe, 0x00, 0x7e, 1, 2, 3, 4]);
        assert_eq!(masked.len(), 8 + 126);
        let big = frame(0x82, &[], Some([0; 4]), Some(100 << 20));
        assert_eq!(big[1], 0xff);
        assert_eq!(&big[2..10], &(100u64 << 20).to_be_bytes());
    }

    #[test]
    fn server_close_frames_parse() {
        match parse_server_frame(&[0x88, 0x02, 0x03, 0xea, 0x81]) {
            FrameParse::Frame {
                len,
                opcode,
                payload,
            } => {
                assert_eq!((len, opcode, payload), (4, 8, &[0x03, 0xea][..]));
            }
            _ => panic!("a whole close frame"),
        }
        assert!(matches!(
            parse_server_frame(&[0x81, 0x7e, 0x01]),
            FrameParse::Incomplete
        ));
    }
}
