//! Front-proxy authentication: with an even first byte, the rest is NUL-separated parts, the six
//! `extension-apiserver-authentication` ConfigMap values (CA PEM, then the JSON lists) and then
//! `name: value` headers, read into a user; with an odd one, the rest is a PEM bundle, each of its
//! certificates and the bytes themselves read as DER for the subject CN.
#![no_main]

use std::collections::BTreeMap;

use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use podmeter_metrics_api::fuzzing::{common_name, parse_certificates, user_from_headers};
use rustls_pki_types::CertificateDer;

const CONFIGMAP_KEYS: [&str; 6] = [
    "requestheader-client-ca-file",
    "requestheader-allowed-names",
    "requestheader-username-headers",
    "requestheader-uid-headers",
    "requestheader-group-headers",
    "requestheader-extra-headers-prefix",
];

fuzz_target!(|data: &[u8]| {
    let Some((mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        let mut parts = rest.split(|b| *b == 0);
        let configmap: BTreeMap<String, String> = CONFIGMAP_KEYS
            .iter()
            .zip(parts.by_ref())
            .filter_map(|(key, value)| {
                Some((
                    (*key).to_owned(),
                    std::str::from_utf8(value).ok()?.to_owned(),
                ))
            })
            .collect();
        let mut headers = HeaderMap::new();
        for part in parts {
            let Some(colon) = part.iter().position(|b| *b == b':') else {
                continue;
            };
            let value = part[colon + 1..].trim_ascii_start();
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(&part[..colon]),
                HeaderValue::from_bytes(value),
            ) {
                headers.append(name, value);
            }
        }
        if let Ok(Ok(user)) = user_from_headers(&configmap, &headers) {
            assert!(!user.name.is_empty());
        }
    } else {
        if let Ok(certificates) = parse_certificates(rest, "fuzz input") {
            for certificate in &certificates {
                let _ = common_name(certificate);
            }
        }
        let _ = common_name(&CertificateDer::from(rest));
    }
});
