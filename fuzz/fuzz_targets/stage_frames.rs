//! What the host decodes: the stage runner's frames (Started, Stdout, Stderr, Exit, Error)
//! through the incremental `FrameDecoder`, fed in the splits the first byte chooses (as TCP
//! delivers them). Properties: never panics or loops; the events (data concatenated per
//! stream) are the same whatever the split; it consumes all input or stops at an error.
#![no_main]

use ecs_executor_stage_runner::protocol::{Event, FrameDecoder};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Out(Vec<u8>),
    Err(Vec<u8>),
    Other(String),
}

fn push(seen: &mut Vec<Seen>, event: Event<'_>) {
    match (event, seen.last_mut()) {
        (Event::Stdout(d), Some(Seen::Out(v))) => v.extend_from_slice(d),
        (Event::Stderr(d), Some(Seen::Err(v))) => v.extend_from_slice(d),
        (Event::Stdout(d), _) => seen.push(Seen::Out(d.to_vec())),
        (Event::Stderr(d), _) => seen.push(Seen::Err(d.to_vec())),
        (other, _) => seen.push(Seen::Other(format!("{other:?}"))),
    }
}

/// Decode `data` fed in chunks of `chunk` bytes: the events and whether it ended in an error.
fn decode(data: &[u8], chunk: usize) -> (Vec<Seen>, bool) {
    let mut decoder = FrameDecoder::new();
    let mut seen = Vec::new();
    for piece in data.chunks(chunk.max(1)) {
        let mut input = piece;
        loop {
            let before = input.len();
            match decoder.next(&mut input) {
                Ok(Some(event)) => push(&mut seen, event),
                Ok(None) => {
                    assert!(input.is_empty(), "None before the input is used up");
                    break;
                }
                Err(_) => return (seen, true),
            }
            assert!(input.len() <= before);
        }
    }
    (seen, false)
}

fuzz_target!(|data: &[u8]| {
    let Some((&split, data)) = data.split_first() else {
        return;
    };
    let whole = decode(data, data.len());
    let pieces = decode(data, usize::from(split % 17) + 1);
    assert_eq!(whole, pieces, "the split changed what was decoded");
});
