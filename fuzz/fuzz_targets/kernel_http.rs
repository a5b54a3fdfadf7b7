//! The kernel's HTTP/1.x prefix detector (`agent-ebpf/src/http.rs`, compiled for the host as it
//! is): any payload's prefix, loaded as `load_prefix` loads it, gives a known method or none and a
//! status in 100..=999 or none.
#![no_main]

use libfuzzer_sys::fuzz_target;

// The file belongs to the eBPF crate, which formats it: rustfmt here leaves it alone.
#[path = "../../agent-ebpf/src/http.rs"]
#[allow(dead_code, reason = "load_prefix needs a socket buffer; only the pure parsers run here")]
#[rustfmt::skip]
mod http;

fuzz_target!(|data: &[u8]| {
    let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
    // load_prefix: 16 bytes of a longer payload, 8 of an 8-15 byte one, 4 of a 4-7 byte one.
    let loaded = match data.len() {
        16.. => 16,
        8..=15 => 8,
        4..=7 => 4,
        _ => return,
    };
    let mut prefix = [0u8; http::PREFIX];
    prefix[..loaded].copy_from_slice(&data[..loaded]);
    let method = http::request_method(&prefix, len);
    if method != 0 {
        assert!(
            podmeter_common::method::name(method).is_some(),
            "method id {method}"
        );
    }
    if let Some(status) = http::response_status(&prefix, len) {
        assert!((100..=999).contains(&status), "status {status}");
    }
});
