//! Route labels of request targets: any target normalises without panicking, to a label of at
//! most 96 bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use podmeter_agent::fuzzing::normalise;

/// `books::routes::MAX_ROUTE_BYTES`.
const MAX_ROUTE_BYTES: usize = 96;

fuzz_target!(|data: &[u8]| {
    let Ok(target) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(route) = normalise(target) {
        assert!(route.len() <= MAX_ROUTE_BYTES, "{target:?} -> {route:?}");
    }
});
