//! What a request asks to do, in authorisation terms: the apiserver's `RequestInfoFactory`
//! (`k8s.io/apiserver/pkg/endpoints/request/requestinfo.go`) reduced to what a metrics server
//! sees. `GET .../namespaces/default/pods/*/http_requests_per_second` is verb `get` on resource
//! `pods`, subresource `http_requests_per_second`, name `*` in namespace `default` of group
//! `custom.metrics.k8s.io`; discovery paths such as `/apis` are non-resource requests.

use axum::http::Method;

use super::uri;

/// The resource a request acts on (`authorizationv1.ResourceAttributes`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ResourceAttributes {
    pub verb: String,
    pub namespace: String,
    pub group: String,
    pub version: String,
    pub resource: String,
    pub subresource: String,
    pub name: String,
}

/// A request for a path that names no resource (`authorizationv1.NonResourceAttributes`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct NonResourceAttributes {
    pub verb: String,
    pub path: String,
}

/// What the authoriser is asked about.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Attributes {
    Resource(ResourceAttributes),
    NonResource(NonResourceAttributes),
}

impl Attributes {
    #[cfg(test)]
    pub fn verb(&self) -> &str {
        match self {
            Attributes::Resource(r) => &r.verb,
            Attributes::NonResource(n) => &n.verb,
        }
    }
}

/// The verb Go derives from an HTTP method for resource requests.
fn resource_verb(method: &Method) -> &'static str {
    match *method {
        Method::POST => "create",
        Method::GET | Method::HEAD => "get",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        _ => "",
    }
}

/// `NewRequestInfo` for a decoded `path` (see [`uri::decode_path`]) and the raw `query`.
///
/// Not modelled: `fieldSelector=metadata.name=...` naming the object of a list, which no
/// metrics client sends.
pub fn attributes(method: &Method, path: &str, query: Option<&str>) -> Attributes {
    let non_resource = || {
        Attributes::NonResource(NonResourceAttributes {
            verb: method.as_str().to_ascii_lowercase(),
            path: path.to_owned(),
        })
    };
    let parts = uri::segments(path);
    // /apis/{group}/{version}/{resource...} and the legacy /api/{version}/{resource...}:
    // anything shorter names no resource.
    let (group, version, rest) = match parts.as_slice() {
        ["apis", group, version, rest @ ..] if !rest.is_empty() => (*group, *version, rest),
        ["api", version, rest @ ..] if !rest.is_empty() => ("", *version, rest),
        _ => return non_resource(),
    };
    let (verb, rest) = match rest {
        [special @ ("watch" | "proxy"), tail @ ..] if !tail.is_empty() => (*special, tail),
        _ => (resource_verb(method), rest),
    };
    // /namespaces/{ns}/{resource}/...; `status` and `finalize` are subresources of the
    // namespace itself.
    let (namespace, rest) = match rest {
        ["namespaces", namespace, tail @ ..] => {
            let namespaced = tail
                .first()
                .is_some_and(|first| !matches!(*first, "status" | "finalize"));
            (*namespace, if namespaced { tail } else { rest })
        }
        _ => ("", rest),
    };
    let part = |i: usize| rest.get(i).copied().unwrap_or_default();
    let (resource, name) = (part(0), part(1));
    let subresource = if verb == "proxy" { "" } else { part(2) };
    let verb = match verb {
        "get" if name.is_empty() => {
            let watch = uri::query_param(query, "watch")
                .is_some_and(|w| !matches!(w.to_ascii_lowercase().as_str(), "false" | "0" | ""));
            if watch { "watch" } else { "list" }
        }
        "delete" if name.is_empty() => "deletecollection",
        verb => verb,
    };
    Attributes::Resource(ResourceAttributes {
        verb: verb.to_owned(),
        namespace: namespace.to_owned(),
        group: group.to_owned(),
        version: version.to_owned(),
        resource: resource.to_owned(),
        subresource: subresource.to_owned(),
        name: name.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resource(method: Method, path: &str) -> ResourceAttributes {
        match attributes(&method, path, None) {
            Attributes::Resource(r) => r,
            other => panic!("{path}: {other:?}"),
        }
    }

    #[test]
    fn the_hpa_pods_query_is_get_on_a_pods_subresource_named_star() {
        let r = resource(
            Method::GET,
            "/apis/custom.metrics.k8s.io/v1beta1/namespaces/default/pods/*/http_requests_per_second",
        );
        assert_eq!(
            r,
            ResourceAttributes {
                verb: "get".into(),
                namespace: "default".into(),
                group: "custom.metrics.k8s.io".into(),
                version: "v1beta1".into(),
                resource: "pods".into(),
                subresource: "http_requests_per_second".into(),
                name: "*".into(),
            }
        );
    }

    #[test]
    fn namespace_metrics_are_the_metrics_resource() {
        let r = resource(
            Method::GET,
            "/apis/custom.metrics.k8s.io/v1beta2/namespaces/default/metrics/m",
        );
        assert_eq!(
            (r.namespace.as_str(), r.resource.as_str(), r.name.as_str()),
            ("default", "metrics", "m")
        );
        assert_eq!(r.subresource, "");
    }

    #[test]
    fn external_metrics_are_listed() {
        let r = resource(
            Method::GET,
            "/apis/external.metrics.k8s.io/v1beta1/namespaces/default/http_requests_per_second",
        );
        assert_eq!(
            (r.verb.as_str(), r.resource.as_str(), r.name.as_str()),
            ("list", "http_requests_per_second", "")
        );
        let watch = attributes(
            &Method::GET,
            "/apis/external.metrics.k8s.io/v1beta1/namespaces/default/m",
            Some("watch=true"),
        );
        assert_eq!(watch.verb(), "watch");
    }

    #[test]
    fn other_methods_map_to_their_verbs() {
        let path = "/apis/custom.metrics.k8s.io/v1beta1/namespaces/default/pods/p/m";
        assert_eq!(resource(Method::POST, path).verb, "create");
        assert_eq!(resource(Method::PUT, path).verb, "update");
        assert_eq!(resource(Method::PATCH, path).verb, "patch");
        assert_eq!(resource(Method::DELETE, path).verb, "delete");
        assert_eq!(resource(Method::HEAD, path).verb, "get");
        let collection = "/apis/custom.metrics.k8s.io/v1beta1/namespaces/default/pods";
        assert_eq!(
            resource(Method::DELETE, collection).verb,
            "deletecollection"
        );
        let namespace = resource(
            Method::GET,
            "/apis/custom.metrics.k8s.io/v1beta1/namespaces/default",
        );
        assert_eq!(
            (namespace.resource.as_str(), namespace.name.as_str()),
            ("namespaces", "default")
        );
        let legacy = resource(Method::GET, "/api/v1/namespaces/default/pods");
        assert_eq!(
            (
                legacy.group.as_str(),
                legacy.version.as_str(),
                legacy.verb.as_str(),
                legacy.resource.as_str()
            ),
            ("", "v1", "list", "pods")
        );
    }

    #[test]
    fn discovery_and_health_are_non_resource_requests() {
        for path in [
            "/apis",
            "/apis/custom.metrics.k8s.io",
            "/apis/custom.metrics.k8s.io/v1beta1",
            "/apis/custom.metrics.k8s.io/v1beta1/",
            "/healthz",
            "/api/v1",
        ] {
            assert_eq!(
                attributes(&Method::GET, path, None),
                Attributes::NonResource(NonResourceAttributes {
                    verb: "get".into(),
                    path: path.into()
                }),
                "{path}"
            );
        }
    }
}
