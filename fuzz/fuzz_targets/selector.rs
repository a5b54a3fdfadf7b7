//! Label selectors as the HPA sends them (`labelSelector=`, `metricLabelSelector=`): a selector
//! that parses prints as one that parses back to the same text.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use podmeter_metrics_api::fuzzing::Selector;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(selector) = Selector::parse(text) else {
        return;
    };
    let printed = selector.to_string();
    let again = Selector::parse(&printed)
        .unwrap_or_else(|e| panic!("{text:?} printed as {printed:?}: {e}"));
    assert_eq!(again.to_string(), printed, "{text:?}");
    let _ = selector.to_label_selector();
    let labels: BTreeMap<String, String> = selector
        .requirements()
        .iter()
        .map(|r| {
            (
                r.key().to_owned(),
                r.exact_value().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let _ = selector.matches(&labels);
    let _ = selector.matches(&BTreeMap::new());
});
