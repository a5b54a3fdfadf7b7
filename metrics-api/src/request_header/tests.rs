//! Request-header authentication as `headerrequest` and `x509.Verifier` do it: which
//! certificates make the headers trusted, how the headers become a user, and reloading.

use std::collections::BTreeMap;

use axum::http::{HeaderMap, HeaderValue};

use super::*;
use crate::tests::pki::{Ca, Leaf};

fn peer(leaf: &Leaf) -> PeerCertificates {
    PeerCertificates(Arc::from(vec![leaf.der.clone()]))
}

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(
            HeaderName::from_bytes(name.as_bytes()).expect("name"),
            HeaderValue::from_str(value).expect("value"),
        );
    }
    map
}

fn auth(ca: &Ca, allowed: &[&str]) -> RequestHeaderAuth {
    let allowed = allowed.iter().map(|n| (*n).to_owned()).collect();
    RequestHeaderAuth::new(RequestHeaderConfig::from_pem(ca.pem.as_bytes(), allowed).expect("PEM"))
        .expect("config")
}

#[test]
fn a_verified_front_proxy_passes_the_user_its_groups_and_extras() {
    let ca = Ca::new("front-proxy-ca");
    let proxy = ca.client("front-proxy-client");
    let authenticator = auth(&ca, &["front-proxy-client"]).authenticator();
    let user = authenticator
        .authenticate(
            Some(&peer(&proxy)),
            &headers(&[
                (
                    "X-Remote-User",
                    "system:serviceaccount:kube-system:horizontal-pod-autoscaler",
                ),
                ("X-Remote-Group", "system:serviceaccounts"),
                ("x-remote-group", "system:serviceaccounts:kube-system"),
                ("X-Remote-Extra-Scopes", "a"),
                ("X-Remote-Extra-Scopes", "b"),
                ("X-Remote-Extra-Acme.com%2Fproject", "p"),
                ("X-Other", "ignored"),
            ]),
        )
        .expect("authenticated");
    assert_eq!(
        user,
        UserInfo {
            name: "system:serviceaccount:kube-system:horizontal-pod-autoscaler".into(),
            uid: String::new(),
            groups: vec![
                "system:serviceaccounts".into(),
                "system:serviceaccounts:kube-system".into(),
                ALL_AUTHENTICATED.into(),
            ],
            extra: BTreeMap::from([
                ("acme.com/project".to_owned(), vec!["p".to_owned()]),
                ("scopes".to_owned(), vec!["a".to_owned(), "b".to_owned()]),
            ]),
        }
    );
}

#[test]
fn headers_without_a_trusted_certificate_are_ignored() {
    let ca = Ca::new("front-proxy-ca");
    let rogue = Ca::new("front-proxy-ca");
    let authenticator = auth(&ca, &[]).authenticator();
    let claims = headers(&[
        ("X-Remote-User", "admin"),
        ("X-Remote-Group", "system:masters"),
    ]);
    assert!(matches!(
        authenticator.authenticate(None, &claims),
        Err(AuthenticationError::NoClientCertificate)
    ));
    assert!(matches!(
        authenticator.authenticate(Some(&PeerCertificates(Arc::from(Vec::new()))), &claims),
        Err(AuthenticationError::NoClientCertificate)
    ));
    // Same subject, different key: the chain does not verify.
    assert!(matches!(
        authenticator.authenticate(Some(&peer(&rogue.client("front-proxy-client"))), &claims),
        Err(AuthenticationError::Certificate(_))
    ));
    // Signed by the right CA but only for serving: not a client certificate.
    assert!(matches!(
        authenticator.authenticate(Some(&peer(&ca.server("front-proxy-client"))), &claims),
        Err(AuthenticationError::Certificate(_))
    ));
}

#[test]
fn allowed_names_restrict_the_common_name_and_empty_allows_any() {
    let ca = Ca::new("front-proxy-ca");
    let other = ca.client("someone-else");
    let claims = headers(&[("X-Remote-User", "alice")]);
    let error = auth(&ca, &["front-proxy-client"])
        .authenticator()
        .authenticate(Some(&peer(&other)), &claims)
        .expect_err("CN not allowed");
    assert_eq!(
        error.to_string(),
        "x509: subject with cn=someone-else is not in the allowed list [\"front-proxy-client\"]"
    );
    let user = auth(&ca, &[])
        .authenticator()
        .authenticate(Some(&peer(&other)), &claims)
        .expect("any CN");
    assert_eq!(user.name, "alice");
}

#[test]
fn the_first_non_empty_user_header_wins_and_none_is_unauthenticated() {
    let ca = Ca::new("front-proxy-ca");
    let proxy = ca.client("front-proxy-client");
    let mut config = RequestHeaderConfig::from_pem(ca.pem.as_bytes(), Vec::new()).expect("PEM");
    config.username_headers = vec!["X-Remote-User".into(), "X-Forwarded-User".into()];
    config.uid_headers = vec!["X-Remote-Uid".into()];
    let authenticator = RequestHeaderAuth::new(config)
        .expect("config")
        .authenticator();
    let user = authenticator
        .authenticate(
            Some(&peer(&proxy)),
            &headers(&[
                ("X-Remote-User", ""),
                ("X-Forwarded-User", "bob"),
                ("X-Remote-Uid", "1234"),
                ("X-Remote-Group", ""),
                ("X-Remote-Group", ALL_AUTHENTICATED),
            ]),
        )
        .expect("authenticated");
    assert_eq!(user.name, "bob");
    assert_eq!(user.uid, "1234");
    assert_eq!(
        user.groups,
        [ALL_AUTHENTICATED],
        "not added twice, empty dropped"
    );
    assert!(matches!(
        authenticator.authenticate(Some(&peer(&proxy)), &headers(&[("X-Remote-Group", "g")])),
        Err(AuthenticationError::NoUser { .. })
    ));
}

#[test]
fn the_ca_reloads_for_every_authenticator() {
    let old = Ca::new("front-proxy-ca");
    let new = Ca::new("front-proxy-ca-2");
    let holder = auth(&old, &["front-proxy-client"]);
    let authenticator = holder.authenticator();
    let claims = headers(&[("X-Remote-User", "alice")]);
    let old_proxy = peer(&old.client("front-proxy-client"));
    let new_proxy = peer(&new.client("front-proxy-client"));
    assert!(
        authenticator
            .authenticate(Some(&old_proxy), &claims)
            .is_ok()
    );
    assert!(
        authenticator
            .authenticate(Some(&new_proxy), &claims)
            .is_err()
    );

    holder
        .update(
            RequestHeaderConfig::from_pem(new.pem.as_bytes(), vec!["front-proxy-client".into()])
                .expect("PEM"),
        )
        .expect("valid");
    assert!(
        authenticator
            .authenticate(Some(&old_proxy), &claims)
            .is_err()
    );
    assert!(
        authenticator
            .authenticate(Some(&new_proxy), &claims)
            .is_ok()
    );

    // A broken update is refused and the current settings stay.
    let mut broken = RequestHeaderConfig::from_pem(old.pem.as_bytes(), Vec::new()).expect("PEM");
    broken.username_headers = vec!["not a header".into()];
    assert!(matches!(
        holder.update(broken),
        Err(Error::HeaderName { .. })
    ));
    assert!(
        authenticator
            .authenticate(Some(&new_proxy), &claims)
            .is_ok()
    );

    // No CA: nobody authenticates.
    holder
        .update(RequestHeaderConfig::default())
        .expect("empty is valid");
    assert!(matches!(
        authenticator.authenticate(Some(&new_proxy), &claims),
        Err(AuthenticationError::NoClientCa)
    ));
}

#[test]
fn the_extension_apiserver_authentication_configmap_is_read_as_kube_apiserver_writes_it() {
    let ca = Ca::new("front-proxy-ca");
    let data = BTreeMap::from([
        (
            "client-ca-file".to_owned(),
            "ignored: the cluster CA".to_owned(),
        ),
        ("requestheader-client-ca-file".to_owned(), ca.pem.clone()),
        (
            "requestheader-allowed-names".to_owned(),
            "[\"front-proxy-client\"]".to_owned(),
        ),
        (
            "requestheader-username-headers".to_owned(),
            "[\"X-Remote-User\"]".to_owned(),
        ),
        (
            "requestheader-uid-headers".to_owned(),
            "[\"X-Remote-Uid\"]".to_owned(),
        ),
        (
            "requestheader-group-headers".to_owned(),
            "[\"X-Remote-Group\"]".to_owned(),
        ),
        (
            "requestheader-extra-headers-prefix".to_owned(),
            "[\"X-Remote-Extra-\"]".to_owned(),
        ),
    ]);
    let config = RequestHeaderConfig::from_configmap_data(&data).expect("valid");
    assert_eq!(
        config,
        RequestHeaderConfig {
            client_ca: vec![ca.der.clone()],
            allowed_names: vec!["front-proxy-client".into()],
            username_headers: vec!["X-Remote-User".into()],
            uid_headers: vec!["X-Remote-Uid".into()],
            group_headers: vec!["X-Remote-Group".into()],
            extra_header_prefixes: vec!["X-Remote-Extra-".into()],
        }
    );

    let sparse = BTreeMap::from([
        ("requestheader-allowed-names".to_owned(), "null".to_owned()),
        ("requestheader-group-headers".to_owned(), String::new()),
    ]);
    assert_eq!(
        RequestHeaderConfig::from_configmap_data(&sparse).expect("valid"),
        RequestHeaderConfig::default()
    );

    let bad = BTreeMap::from([(
        "requestheader-allowed-names".to_owned(),
        "front-proxy-client".to_owned(),
    )]);
    assert!(matches!(
        RequestHeaderConfig::from_configmap_data(&bad),
        Err(Error::ConfigMapList {
            key: "requestheader-allowed-names",
            ..
        })
    ));
    let not_pem = BTreeMap::from([(
        "requestheader-client-ca-file".to_owned(),
        "not a certificate".to_owned(),
    )]);
    assert!(matches!(
        RequestHeaderConfig::from_configmap_data(&not_pem),
        Err(Error::NoCertificate { .. })
    ));
}
