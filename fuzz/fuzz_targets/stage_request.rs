//! What the stage runner decodes: the request a client sends after the TLS handshake
//! (`protocol::read_request`), then Cancel frames (`FrameDecoder`, as the server reads them).
//! Properties: never panics; a request it accepts re-encodes to bytes it decodes to the same
//! request (`encode_request` is what the host sends).
#![no_main]

use ecs_executor_stage_runner::protocol::{FrameDecoder, encode_request, read_request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut reader = data;
    if let Ok(request) = read_request(&mut reader) {
        let bytes = encode_request(&request);
        let again = read_request(&mut &bytes[..]).expect("an encoded request decodes");
        assert_eq!(again, request, "round trip");
        // What follows the request on the connection: frames (the server acts on Cancel).
        let mut decoder = FrameDecoder::new();
        let mut rest = reader;
        while let Ok(Some(_)) = decoder.next(&mut rest) {}
    }
});
