//! The agent API's `Authorization` header: any value yields a bearer token or none, and a token is
//! never empty.
#![no_main]

use http::{HeaderMap, HeaderValue, header::AUTHORIZATION};
use libfuzzer_sys::fuzz_target;
use podmeter_agent::fuzzing::bearer_token;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = HeaderValue::from_bytes(data) else {
        return;
    };
    let mut headers = HeaderMap::new();
    headers.insert(AUTHORIZATION, value);
    if let Some(token) = bearer_token(&headers) {
        assert!(!token.is_empty());
    }
});
