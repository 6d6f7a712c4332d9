//! Random and mutated input for the parsers that face the network: the frame tracker (every
//! byte a client or backend sends) and the upgrade check (every handshake head). Neither
//! may panic, loop or report offsets outside its input.
//!
//! The test run uses a few thousand cases; the long run is
//! `FUZZ_CASES=1000000 cargo test --release -p tower-ws-proxy --test fuzz` (see
//! `bench/README.md`). The upstream response parser is fuzzed the same way in
//! `src/handshake.rs`.

use proptest::prelude::*;
use tower_ws_proxy::{
    check_upgrade,
    frame::{FrameError, FrameLimits, FrameTracker},
};

fn cases() -> u32 {
    std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3_000)
}

/// A plausible frame header (any opcode and flags, every length form, masked or not),
/// then bytes: a start that reaches deep into the tracker, mutated afterwards.
fn frame_like() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<u8>(),
        prop_oneof![Just(0u8), 1u8..126, Just(126), Just(127)],
        any::<bool>(),
        any::<[u8; 12]>(),
        prop::collection::vec(any::<u8>(), 0..300),
    )
        .prop_map(|(first, length, masked, extended, payload)| {
            let mut bytes = vec![first, length | if masked { 0x80 } else { 0 }];
            bytes.extend_from_slice(&extended);
            bytes.extend(payload);
            bytes
        })
}

/// Several frame-like pieces or plain noise, with some bytes overwritten.
fn stream() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![frame_like(), prop::collection::vec(any::<u8>(), 0..64)];
    (
        prop::collection::vec(piece, 1..6),
        prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
    )
        .prop_map(|(pieces, mutations)| {
            let mut bytes = pieces.concat();
            if !bytes.is_empty() {
                for (at, value) in mutations {
                    let at = at.index(bytes.len());
                    bytes[at] = value;
                }
            }
            bytes
        })
}

fn limits() -> impl Strategy<Value = FrameLimits> {
    let limit = prop_oneof![Just(None), (0u64..4096).prop_map(Some)];
    (limit.clone(), limit).prop_map(|(max_frame, max_message)| FrameLimits {
        max_frame,
        max_message,
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn the_frame_tracker_survives_any_stream(
        bytes in stream(),
        cuts in prop::collection::vec(1usize..64, 0..16),
        limits in limits(),
    ) {
        let mut tracker = FrameTracker::with_limits(limits);
        let mut pieces = Vec::new();
        let mut rest: &[u8] = &bytes;
        for cut in cuts {
            let (piece, tail) = rest.split_at(cut.min(rest.len()));
            pieces.push(piece);
            rest = tail;
        }
        pieces.push(rest);
        'stream: for piece in pieces {
            let mut pos = 0;
            while pos < piece.len() {
                match tracker.feed(&piece[pos..]) {
                    Ok(Some((consumed, _))) => {
                        prop_assert!(consumed > 0 && pos + consumed <= piece.len());
                        pos += consumed;
                    }
                    Ok(None) => break,
                    Err(FrameError::TooBig { resume_at, .. }) => {
                        prop_assert!(pos + resume_at <= piece.len());
                        pos += resume_at;
                    }
                    Err(FrameError::Protocol(_)) => break 'stream,
                    Err(other) => prop_assert!(false, "unexpected {other:?}"),
                }
            }
        }
    }

    #[test]
    fn the_upgrade_check_survives_any_head(
        headers in prop::collection::vec(
            (
                prop::sample::select(vec![
                    "sec-websocket-key",
                    "sec-websocket-version",
                    "content-length",
                    "transfer-encoding",
                    "upgrade",
                    "connection",
                    "x-other",
                ]),
                prop::collection::vec(any::<u8>(), 0..40),
            ),
            0..8,
        ),
    ) {
        let mut request = http::Request::get("/connect/1");
        for (name, value) in &headers {
            if let Ok(value) = http::HeaderValue::from_bytes(value) {
                request = request.header(*name, value);
            }
        }
        let request = request.body(()).unwrap();
        if check_upgrade(&request).is_ok() {
            let key = request.headers()["sec-websocket-key"].as_bytes();
            prop_assert_eq!(key.len(), 24);
            prop_assert_eq!(request.headers()["sec-websocket-version"].as_bytes(), b"13");
        }
    }
}
