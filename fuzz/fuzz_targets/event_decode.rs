//! Ring buffer records as the kernel writes them (`podmeter_common::HttpEvent`, any bytes), and
//! the request head they carry, through request line parsing and route normalisation as the
//! agent books them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use podmeter_agent::fuzzing::{Event, decode, normalise, parse_request_line};

fuzz_target!(|data: &[u8]| {
    if let Some(Event::Request { line, .. }) = decode(data)
        && let Some(target) = &line.target
    {
        let _ = normalise(target);
    }
    // The head alone, whatever its length (the kernel copies at most HEAD_LEN bytes).
    let line = parse_request_line(data);
    if let Some(target) = &line.target {
        let _ = normalise(target);
    }
});
