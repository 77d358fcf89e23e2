//! Arbitrary bytes into both decoders: never a panic, and whatever decodes re-encodes to a
//! frame that decodes to the same value.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use outpost_protocol::{AgentFrame, Frame, RelayFrame};

fuzz_target!(|data: &[u8]| {
    check::<AgentFrame>(data);
    check::<RelayFrame>(data);
});

fn check<F: Frame + PartialEq + std::fmt::Debug>(data: &[u8]) {
    // As one WebSocket message: one frame exactly, or an error.
    if let Ok(frame) = F::decode_message(Bytes::copy_from_slice(data)) {
        assert_eq!(F::decode_message(frame.to_bytes()), Ok(frame));
    }
    let mut buf = BytesMut::from(data);
    while let Ok(Some(frame)) = F::decode(&mut buf) {
        let again = F::decode_message(frame.to_bytes()).expect("an encoded frame decodes");
        assert_eq!(again, frame);
    }
}
