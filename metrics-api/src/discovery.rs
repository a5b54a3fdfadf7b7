//! Discovery documents: `/apis` (APIGroupList), `/apis/{group}` (APIGroup) and
//! `/apis/{group}/{version}` (APIResourceList, one entry per metric and resource, as
//! custom-metrics-apiserver's `resource_lister.go` lists them). kube-aggregator's availability
//! check GETs `/apis/{group}/{version}` and needs a 2xx; the HPA reads `preferredVersion`.

use super::{
    source::MetricInfo,
    types::{ApiGroup, ApiGroupList, ApiResource, ApiResourceList, GroupVersionForDiscovery},
};

pub const CUSTOM_METRICS_GROUP: &str = "custom.metrics.k8s.io";
pub const EXTERNAL_METRICS_GROUP: &str = "external.metrics.k8s.io";

/// A served version of the custom metrics API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CustomVersion {
    V1Beta1,
    V1Beta2,
}

impl CustomVersion {
    pub fn parse(version: &str) -> Option<Self> {
        match version {
            "v1beta1" => Some(Self::V1Beta1),
            "v1beta2" => Some(Self::V1Beta2),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::V1Beta1 => "v1beta1",
            Self::V1Beta2 => "v1beta2",
        }
    }

    pub fn api_version(self) -> &'static str {
        match self {
            Self::V1Beta1 => "custom.metrics.k8s.io/v1beta1",
            Self::V1Beta2 => "custom.metrics.k8s.io/v1beta2",
        }
    }
}

pub const EXTERNAL_VERSION: &str = "v1beta1";
pub const EXTERNAL_API_VERSION: &str = "external.metrics.k8s.io/v1beta1";

fn group_version(group: &str, version: &str) -> GroupVersionForDiscovery {
    GroupVersionForDiscovery {
        group_version: format!("{group}/{version}"),
        version: version.to_owned(),
    }
}

/// A group serving `preferred` first, then `others`.
fn group(name: &str, preferred: &str, others: &[&str]) -> ApiGroup {
    let preferred_version = group_version(name, preferred);
    let mut versions = vec![preferred_version.clone()];
    versions.extend(others.iter().map(|v| group_version(name, v)));
    ApiGroup {
        kind: "",
        api_version: "",
        name: name.to_owned(),
        versions,
        preferred_version,
        server_address_by_client_cidrs: Vec::new(),
    }
}

/// `custom.metrics.k8s.io`: v1beta2 preferred, v1beta1 still served.
pub fn custom_group() -> ApiGroup {
    group(
        CUSTOM_METRICS_GROUP,
        CustomVersion::V1Beta2.as_str(),
        &[CustomVersion::V1Beta1.as_str()],
    )
}

pub fn external_group() -> ApiGroup {
    group(EXTERNAL_METRICS_GROUP, EXTERNAL_VERSION, &[])
}

/// The `/apis/{group}` document: the group with its `kind` and `apiVersion`.
pub fn standalone(mut group: ApiGroup) -> ApiGroup {
    group.kind = "APIGroup";
    group.api_version = "v1";
    group
}

/// `/apis`: every group this server serves.
pub fn group_list(serve_external: bool) -> ApiGroupList {
    let mut groups = vec![custom_group()];
    if serve_external {
        groups.push(external_group());
    }
    ApiGroupList {
        kind: "APIGroupList",
        api_version: "v1",
        groups,
    }
}

fn resource(name: String, namespaced: bool, kind: &str) -> ApiResource {
    ApiResource {
        name,
        singular_name: String::new(),
        namespaced,
        group: String::new(),
        version: String::new(),
        kind: kind.to_owned(),
        verbs: vec!["get".to_owned()],
        short_names: Vec::new(),
        categories: Vec::new(),
        storage_version_hash: String::new(),
    }
}

/// `/apis/custom.metrics.k8s.io/{version}`: `pods/<metric>` (namespaced) for every metric and
/// `namespaces/<metric>` (cluster-scoped, describing a namespace) for summable ones.
pub fn custom_resources(version: CustomVersion, metrics: &[MetricInfo]) -> ApiResourceList {
    let mut resources = Vec::new();
    for metric in metrics {
        resources.push(resource(
            format!("pods/{}", metric.name),
            true,
            "MetricValueList",
        ));
        if metric.summable {
            resources.push(resource(
                format!("namespaces/{}", metric.name),
                false,
                "MetricValueList",
            ));
        }
    }
    ApiResourceList {
        kind: "APIResourceList",
        api_version: "v1",
        group_version: version.api_version().to_owned(),
        resources,
    }
}

/// `/apis/external.metrics.k8s.io/v1beta1`: every summable metric, namespaced
/// (`resource_lister.go`'s `externalMetricsResourceLister`).
pub fn external_resources(metrics: &[MetricInfo]) -> ApiResourceList {
    ApiResourceList {
        kind: "APIResourceList",
        api_version: "v1",
        group_version: EXTERNAL_API_VERSION.to_owned(),
        resources: metrics
            .iter()
            .filter(|m| m.summable)
            .map(|m| resource(m.name.clone(), true, "ExternalMetricValueList"))
            .collect(),
    }
}
