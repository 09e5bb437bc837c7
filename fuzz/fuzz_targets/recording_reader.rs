//! Any bytes given to the recording reader: an error or frames, never a panic,
//! never unbounded memory.
#![no_main]

use kvscope::{event::Event, recording::{Frame, Reader}};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(mut r) = Reader::new(data) {
        while let Some(f) = r.next_frame() {
            if let Frame::Event(rec) = f {
                let _ = Event::decode(&rec);
            }
        }
    }
});
