//! Quantity strings (`1500m`, `2Ki`, `1e3`): one that parses prints as one that parses back to
//! the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use podmeter_metrics_api::Quantity;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(quantity) = Quantity::parse(text) else {
        return;
    };
    let printed = quantity.to_string();
    assert_eq!(
        Quantity::parse(&printed).ok(),
        Some(quantity),
        "{text:?} printed as {printed:?}"
    );
    let _ = Quantity::from_f64(quantity.as_f64());
    let _ = quantity.checked_add(quantity);
});
