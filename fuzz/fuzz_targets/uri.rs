//! Request targets as the metrics API reads them: `METHOD target`, the target parsed as
//! `http::Uri` (what hyper hands over), its path percent-decoded and split, its query's
//! parameters, and the authorisation attributes of the whole.
#![no_main]

use http::{Method, Uri};
use libfuzzer_sys::fuzz_target;
use podmeter_metrics_api::fuzzing::{attributes, decode_path, query_param, segments};

fuzz_target!(|data: &[u8]| {
    let (method, target) = match data.iter().position(|b| *b == b' ') {
        Some(space) => (&data[..space], &data[space + 1..]),
        None => (&b"GET"[..], data),
    };
    let Ok(method) = Method::from_bytes(method) else {
        return;
    };
    let Ok(uri) = Uri::try_from(target) else {
        return;
    };
    for name in ["labelSelector", "metricLabelSelector", "watch"] {
        let _ = query_param(uri.query(), name);
    }
    let Ok(path) = decode_path(uri.path()) else {
        return;
    };
    let _ = segments(&path);
    let _ = attributes(&method, &path, uri.query());
});
