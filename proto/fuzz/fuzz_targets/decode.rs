//! Fuzzes the peer-protocol decoder: any bytes must decode, ask for more, or fail with
//! an error, never panic; whatever decodes must re-encode to the same frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_proto::wire::Message;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok(Some((msg, used))) = Message::decode(rest) {
        assert_eq!(msg.to_bytes(), rest[..used], "re-encoding differs");
        rest = &rest[used..];
    }
});
