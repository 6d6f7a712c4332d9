//! The frame tracker finds exactly the frame ends of any stream, however it is split.

use proptest::prelude::*;
use tower_ws_proxy::frame::{FrameTracker, OpCode};

#[derive(Clone, Debug)]
struct TestFrame {
    opcode: u8,
    fin: bool,
    len: usize,
    mask: Option<[u8; 4]>,
}

fn encode(frame: &TestFrame) -> Vec<u8> {
    let mut out = vec![(u8::from(frame.fin) << 7) | frame.opcode];
    let mask_bit = if frame.mask.is_some() { 0x80 } else { 0 };
    match frame.len {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= 0xffff => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if let Some(mask) = frame.mask {
        out.extend_from_slice(&mask);
    }
    out.extend((0..frame.len).map(|i| i as u8));
    out
}

/// Valid sequences: messages of 1..4 fragments with pings between fragments.
fn messages() -> impl Strategy<Value = Vec<TestFrame>> {
    let sizes = prop_oneof![8 => 0usize..130, 2 => 126usize..70_000];
    let message = (
        prop::collection::vec(sizes, 1..4),
        any::<bool>(),
        any::<Option<[u8; 4]>>(),
        any::<bool>(),
    )
        .prop_map(|(lengths, text, mask, ping_between)| {
            let last = lengths.len() - 1;
            let mut frames = vec![];
            for (i, len) in lengths.into_iter().enumerate() {
                let opcode = if i > 0 {
                    0x0
                } else if text {
                    0x1
                } else {
                    0x2
                };
                frames.push(TestFrame {
                    opcode,
                    fin: i == last,
                    len,
                    mask,
                });
                if ping_between && i < last {
                    frames.push(TestFrame {
                        opcode: 0x9,
                        fin: true,
                        len: 3,
                        mask,
                    });
                }
            }
            frames
        });
    prop::collection::vec(message, 1..6).prop_map(|m| m.concat())
}

proptest! {
    #[test]
    fn reports_every_frame_end_at_its_offset(frames in messages(), cuts in prop::collection::vec(1usize..5000, 0..20)) {
        let mut stream = vec![];
        let mut ends = vec![];
        for frame in &frames {
            stream.extend(encode(frame));
            ends.push(stream.len());
        }
        // Feed the stream in arbitrary pieces.
        let mut tracker = FrameTracker::default();
        let mut seen = vec![];
        let mut boundaries = vec![];
        let mut offset = 0;
        let mut cuts = cuts.into_iter().cycle();
        while offset < stream.len() {
            let piece = cuts.next().unwrap_or(usize::MAX).min(stream.len() - offset);
            let mut pos = 0;
            while let Some((consumed, end)) = tracker.feed(&stream[offset + pos..offset + piece]).unwrap() {
                pos += consumed;
                seen.push(offset + pos);
                boundaries.push(end.message_boundary);
                if pos == piece { break; }
            }
            offset += piece;
        }
        prop_assert_eq!(&seen, &ends);
        let expected: Vec<bool> = frames.iter().scan(false, |in_message, f| {
            if f.opcode < 0x8 { *in_message = !f.fin; }
            Some(!*in_message)
        }).collect();
        prop_assert_eq!(boundaries, expected);
        prop_assert!(tracker.at_message_boundary());
    }
}

#[test]
fn reads_masked_close_codes_and_rejects_bad_framing() {
    let close = encode(&TestFrame {
        opcode: 0x8,
        fin: true,
        len: 0,
        mask: None,
    });
    let (_, end) = FrameTracker::default().feed(&close).unwrap().unwrap();
    assert_eq!((end.opcode, end.close_code), (OpCode::Close, None));

    let masked = tower_ws_proxy::frame::close_frame(4001, "bye", true);
    let (_, end) = FrameTracker::default().feed(&masked).unwrap().unwrap();
    assert_eq!(end.close_code, Some(4001));

    for (bytes, why) in [
        (vec![0x83, 0x00], "reserved opcode"),
        (vec![0x80, 0x00], "continuation frame outside a message"),
        (
            vec![0x89, 126, 0, 200],
            "control frame longer than 125 bytes",
        ),
        (
            vec![0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 0],
            "payload length has its top bit set",
        ),
    ] {
        let err = FrameTracker::default().feed(&bytes).unwrap_err();
        assert!(err.to_string().ends_with(why), "{err}");
    }
    let mut tracker = FrameTracker::default();
    tracker.feed(&[0x01, 0x00]).unwrap();
    let err = tracker.feed(&[0x81, 0x00]).unwrap_err();
    assert!(err
        .to_string()
        .ends_with("new message inside a fragmented message"));
}
