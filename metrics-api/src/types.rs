//! The wire types of the metrics APIs, serialising exactly as the Go types do: field names and
//! order from the `json:"..."` tags, `omitempty` as `skip_serializing_if`, pointers without
//! `omitempty` (`selector`) as `null`, embedded `ListMeta` as `"metadata":{}`, `metav1.Time` as
//! RFC 3339 in UTC to the second; and [`encode`] escapes strings as Go's `encoding/json` does.
//!
//! Sources (tags quoted on each field): k8s.io/metrics `pkg/apis/custom_metrics/v1beta1|v1beta2/
//! types.go`, `pkg/apis/external_metrics/v1beta1/types.go`; k8s.io/apimachinery
//! `pkg/apis/meta/v1/types.go` (Status, ListMeta, APIGroup, APIResource, LabelSelector);
//! k8s.io/api `core/v1/types.go` (ObjectReference).

use std::{
    collections::BTreeMap,
    io,
    time::{SystemTime, UNIX_EPOCH},
};

use serde::{Serialize, Serializer};

use super::quantity::Quantity;

/// `metav1.ListMeta` with every field empty: all its fields are `omitempty`, and it is embedded
/// as `json:"metadata,omitempty"`, which never omits a struct, so it is written as `{}`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ListMeta {}

/// `metav1.Time`: `t.UTC().Format(time.RFC3339)`, whole seconds (the fraction is truncated).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Time(pub SystemTime);

impl Time {
    /// RFC 3339 in UTC, e.g. `2024-01-29T18:21:27Z`.
    pub fn rfc3339(&self) -> String {
        let seconds = match self.0.duration_since(UNIX_EPOCH) {
            Ok(after) => i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
            Err(before) => {
                let before = before.duration();
                let whole = i64::try_from(before.as_secs()).unwrap_or(i64::MAX);
                // Floor, as a wall clock reads it: 0.5 s before the epoch is 23:59:59.
                -whole - i64::from(before.subsec_nanos() > 0)
            }
        };
        let days = seconds.div_euclid(86_400);
        let of_day = seconds.rem_euclid(86_400);
        let (year, month, day) = civil_from_days(days);
        format!(
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
            of_day / 3600,
            of_day % 3600 / 60,
            of_day % 60
        )
    }
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

impl Serialize for Time {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.rfc3339())
    }
}

#[expect(
    clippy::trivially_copy_pass_by_ref,
    reason = "serde's skip_serializing_if passes a reference"
)]
fn is_zero(value: &i32) -> bool {
    *value == 0
}

/// `v1.ObjectReference` (k8s.io/api core/v1); every field is `omitempty`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ObjectReference {
    /// `json:"kind,omitempty"`
    #[serde(skip_serializing_if = "String::is_empty")]
    pub kind: String,
    /// `json:"namespace,omitempty"`
    #[serde(skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// `json:"name,omitempty"`
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// `json:"uid,omitempty"`
    #[serde(skip_serializing_if = "String::is_empty")]
    pub uid: String,
    /// `json:"apiVersion,omitempty"`
    #[serde(rename = "apiVersion", skip_serializing_if = "String::is_empty")]
    pub api_version: String,
    /// `json:"resourceVersion,omitempty"`
    #[serde(rename = "resourceVersion", skip_serializing_if = "String::is_empty")]
    pub resource_version: String,
    /// `json:"fieldPath,omitempty"`
    #[serde(rename = "fieldPath", skip_serializing_if = "String::is_empty")]
    pub field_path: String,
}

/// `metav1.LabelSelectorOperator`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum LabelSelectorOperator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

/// `metav1.LabelSelectorRequirement`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LabelSelectorRequirement {
    /// `json:"key"`
    pub key: String,
    /// `json:"operator"`
    pub operator: LabelSelectorOperator,
    /// `json:"values,omitempty"`
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

/// `metav1.LabelSelector`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct LabelSelector {
    /// `json:"matchLabels,omitempty"`
    #[serde(rename = "matchLabels", skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    /// `json:"matchExpressions,omitempty"`
    #[serde(rename = "matchExpressions", skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

/// A `kind`/`apiVersion`/`metadata`/`items` list: `MetricValueList` (both versions) and
/// `ExternalMetricValueList` share this shape (`metav1.TypeMeta` inline, `metav1.ListMeta`
/// as `json:"metadata,omitempty"`, `Items json:"items"`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct List<T> {
    pub kind: &'static str,
    #[serde(rename = "apiVersion")]
    pub api_version: &'static str,
    pub metadata: ListMeta,
    /// `json:"items"`: written as `[]` when empty (Go's slice is non-nil here).
    pub items: Vec<T>,
}

/// `custom_metrics/v1beta1.MetricValue`. Its `metav1.TypeMeta` is empty inside a list and
/// therefore omitted, as the apiserver writes list items.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MetricValueV1Beta1 {
    /// `json:"describedObject"`
    #[serde(rename = "describedObject")]
    pub described_object: ObjectReference,
    /// `json:"metricName"`
    #[serde(rename = "metricName")]
    pub metric_name: String,
    /// `json:"timestamp"`
    pub timestamp: Time,
    /// `WindowSeconds *int64 json:"window,omitempty"`: the key is `window` in v1beta1.
    #[serde(rename = "window", skip_serializing_if = "Option::is_none")]
    pub window_seconds: Option<i64>,
    /// `json:"value"`
    pub value: Quantity,
    /// `Selector *metav1.LabelSelector json:"selector"`: no `omitempty`, so `null` when unset.
    pub selector: Option<LabelSelector>,
}

/// `custom_metrics/v1beta2.MetricIdentifier`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MetricIdentifier {
    /// `json:"name"`
    pub name: String,
    /// `Selector *metav1.LabelSelector json:"selector"`: `null` when unset.
    pub selector: Option<LabelSelector>,
}

/// `custom_metrics/v1beta2.MetricValue`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MetricValueV1Beta2 {
    /// `json:"describedObject"`
    #[serde(rename = "describedObject")]
    pub described_object: ObjectReference,
    /// `json:"metric"`
    pub metric: MetricIdentifier,
    /// `json:"timestamp"`
    pub timestamp: Time,
    /// `WindowSeconds *int64 json:"windowSeconds,omitempty"`: the key is `windowSeconds` in
    /// v1beta2.
    #[serde(rename = "windowSeconds", skip_serializing_if = "Option::is_none")]
    pub window_seconds: Option<i64>,
    /// `json:"value"`
    pub value: Quantity,
}

/// `external_metrics/v1beta1.ExternalMetricValue`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ExternalMetricValue {
    /// `json:"metricName"`
    #[serde(rename = "metricName")]
    pub metric_name: String,
    /// `MetricLabels map[string]string json:"metricLabels"`: no `omitempty` (we always send a
    /// map, so `{}` rather than Go's `null` for a nil map).
    #[serde(rename = "metricLabels")]
    pub metric_labels: BTreeMap<String, String>,
    /// `json:"timestamp"`
    pub timestamp: Time,
    /// `WindowSeconds *int64 json:"window,omitempty"`
    #[serde(rename = "window", skip_serializing_if = "Option::is_none")]
    pub window_seconds: Option<i64>,
    /// `json:"value"`
    pub value: Quantity,
}

/// `metav1.StatusCause`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StatusCause {
    /// `json:"reason,omitempty"`
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// `json:"message,omitempty"`
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// `json:"field,omitempty"`
    #[serde(skip_serializing_if = "String::is_empty")]
    pub field: String,
}

/// `metav1.StatusDetails`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StatusDetails {
    /// `json:"name,omitempty"`
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// `json:"group,omitempty"`
    #[serde(skip_serializing_if = "String::is_empty")]
    pub group: String,
    /// `json:"kind,omitempty"`
    #[serde(skip_serializing_if = "String::is_empty")]
    pub kind: String,
    /// `json:"uid,omitempty"`
    #[serde(skip_serializing_if = "String::is_empty")]
    pub uid: String,
    /// `json:"causes,omitempty"`
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub causes: Vec<StatusCause>,
    /// `json:"retryAfterSeconds,omitempty"`
    #[serde(rename = "retryAfterSeconds", skip_serializing_if = "is_zero")]
    pub retry_after_seconds: i32,
}

/// `metav1.Status`, the body of every error reply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Status {
    pub kind: &'static str,
    #[serde(rename = "apiVersion")]
    pub api_version: &'static str,
    /// `json:"metadata,omitempty"` (a struct: always `{}`).
    pub metadata: ListMeta,
    /// `json:"status,omitempty"`: `"Failure"` for errors.
    #[serde(skip_serializing_if = "str::is_empty")]
    pub status: &'static str,
    /// `json:"message,omitempty"`
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// `json:"reason,omitempty"` (`metav1.StatusReason`).
    #[serde(skip_serializing_if = "str::is_empty")]
    pub reason: &'static str,
    /// `Details *StatusDetails json:"details,omitempty"`
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<StatusDetails>,
    /// `json:"code,omitempty"`
    #[serde(skip_serializing_if = "is_zero")]
    pub code: i32,
}

impl Status {
    /// A `Failure` Status with the given HTTP code, reason and message.
    pub fn failure(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            kind: "Status",
            api_version: "v1",
            metadata: ListMeta {},
            status: "Failure",
            message: message.into(),
            reason,
            details: None,
            code: i32::from(code),
        }
    }
}

/// `metav1.GroupVersionForDiscovery`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GroupVersionForDiscovery {
    /// `json:"groupVersion"`
    #[serde(rename = "groupVersion")]
    pub group_version: String,
    /// `json:"version"`
    pub version: String,
}

/// `metav1.ServerAddressByClientCIDR`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServerAddressByClientCidr {
    /// `json:"clientCIDR"`
    #[serde(rename = "clientCIDR")]
    pub client_cidr: String,
    /// `json:"serverAddress"`
    #[serde(rename = "serverAddress")]
    pub server_address: String,
}

/// `metav1.APIGroup`. Inside an `APIGroupList` its `TypeMeta` is empty and omitted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ApiGroup {
    /// `json:"kind,omitempty"` (inline `TypeMeta`)
    #[serde(skip_serializing_if = "str::is_empty")]
    pub kind: &'static str,
    /// `json:"apiVersion,omitempty"` (inline `TypeMeta`)
    #[serde(rename = "apiVersion", skip_serializing_if = "str::is_empty")]
    pub api_version: &'static str,
    /// `json:"name"`
    pub name: String,
    /// `json:"versions"`
    pub versions: Vec<GroupVersionForDiscovery>,
    /// `json:"preferredVersion,omitempty"` (a struct: always written)
    #[serde(rename = "preferredVersion")]
    pub preferred_version: GroupVersionForDiscovery,
    /// `json:"serverAddressByClientCIDRs,omitempty"`
    #[serde(
        rename = "serverAddressByClientCIDRs",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub server_address_by_client_cidrs: Vec<ServerAddressByClientCidr>,
}

/// `metav1.APIGroupList`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ApiGroupList {
    pub kind: &'static str,
    #[serde(rename = "apiVersion")]
    pub api_version: &'static str,
    /// `json:"groups"`
    pub groups: Vec<ApiGroup>,
}

/// `metav1.APIResource`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ApiResource {
    /// `json:"name"`
    pub name: String,
    /// `json:"singularName"`: no `omitempty`, so `""` is written.
    #[serde(rename = "singularName")]
    pub singular_name: String,
    /// `json:"namespaced"`: always written, `false` included.
    pub namespaced: bool,
    /// `json:"group,omitempty"`
    #[serde(skip_serializing_if = "String::is_empty")]
    pub group: String,
    /// `json:"version,omitempty"`
    #[serde(skip_serializing_if = "String::is_empty")]
    pub version: String,
    /// `json:"kind"`
    pub kind: String,
    /// `Verbs Verbs json:"verbs"`
    pub verbs: Vec<String>,
    /// `json:"shortNames,omitempty"`
    #[serde(rename = "shortNames", skip_serializing_if = "Vec::is_empty")]
    pub short_names: Vec<String>,
    /// `json:"categories,omitempty"`
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub categories: Vec<String>,
    /// `json:"storageVersionHash,omitempty"`
    #[serde(
        rename = "storageVersionHash",
        skip_serializing_if = "String::is_empty"
    )]
    pub storage_version_hash: String,
}

/// `metav1.APIResourceList`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ApiResourceList {
    pub kind: &'static str,
    #[serde(rename = "apiVersion")]
    pub api_version: &'static str,
    /// `json:"groupVersion"`
    #[serde(rename = "groupVersion")]
    pub group_version: String,
    /// `json:"resources"`
    pub resources: Vec<ApiResource>,
}

/// JSON as the apiserver writes it: compact, strings escaped like Go's `encoding/json` (`<`,
/// `>`, `&`, U+2028 and U+2029 as `\u` escapes), and a trailing newline (`json.Encoder`).
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, serde_json::Error> {
    let mut out = Vec::with_capacity(512);
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, GoJson);
    value.serialize(&mut serializer)?;
    out.push(b'\n');
    Ok(out)
}

/// serde_json's compact formatter plus Go's HTML-safe string escaping.
struct GoJson;

impl serde_json::ser::Formatter for GoJson {
    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        let mut start = 0;
        for (i, ch) in fragment.char_indices() {
            let escape = match ch {
                '<' => "\\u003c",
                '>' => "\\u003e",
                '&' => "\\u0026",
                '\u{2028}' => "\\u2028",
                '\u{2029}' => "\\u2029",
                _ => continue,
            };
            writer.write_all(&fragment.as_bytes()[start..i])?;
            writer.write_all(escape.as_bytes())?;
            start = i + ch.len_utf8();
        }
        writer.write_all(&fragment.as_bytes()[start..])
    }
}

#[cfg(test)]
mod tests;
