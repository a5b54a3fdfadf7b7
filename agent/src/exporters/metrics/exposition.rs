//! Writing the registry for a scraper: OpenMetrics text for scrapers that ask for it (Prometheus
//! does), the Prometheus text format 0.0.4 for everything else (curl, `promtool check metrics`).
//!
//! prometheus-client writes OpenMetrics only. The two formats share their sample lines; they
//! differ in the metadata: an OpenMetrics counter family `x` has samples `x_total` while the
//! Prometheus format names the family `x_total`; an `info` family `x` is a gauge `x_info` there;
//! `# UNIT` and `# EOF` do not exist there. [`to_prometheus_text`] rewrites exactly those.

use prometheus_client::{encoding::text::encode, registry::Registry};

/// An exposition format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    OpenMetrics,
    Prometheus,
}

impl Format {
    /// OpenMetrics when the `Accept` header lists it, else the Prometheus text format.
    pub fn negotiate(accept: Option<&str>) -> Self {
        match accept {
            Some(accept) if accept.contains("application/openmetrics-text") => Self::OpenMetrics,
            _ => Self::Prometheus,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Self::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

/// The whole registry in `format`.
pub fn render(registry: &Registry, format: Format) -> Result<String, std::fmt::Error> {
    let mut text = String::with_capacity(64 * 1024);
    encode(&mut text, registry)?;
    Ok(match format {
        Format::OpenMetrics => text,
        Format::Prometheus => to_prometheus_text(&text),
    })
}

/// Rewrites OpenMetrics text (as prometheus-client writes it: `# HELP`, then `# TYPE`, then
/// `# UNIT`, then the samples of each family) into the Prometheus text format 0.0.4.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut help: Option<(&str, &str)> = None;
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, text) = rest.split_once(' ').unwrap_or((rest, ""));
            help = Some((name, text));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "unknown"));
            let (name, kind) = match kind {
                "counter" => (format!("{name}_total"), "counter"),
                "info" => (format!("{name}_info"), "gauge"),
                "gauge" | "histogram" | "summary" => (name.to_owned(), kind),
                _ => (name.to_owned(), "untyped"),
            };
            if let Some((_, text)) = help.take().filter(|(n, _)| name.starts_with(n)) {
                out.push_str("# HELP ");
                out.push_str(&name);
                out.push(' ');
                out.push_str(text);
                out.push('\n');
            }
            out.push_str("# TYPE ");
            out.push_str(&name);
            out.push(' ');
            out.push_str(kind);
            out.push('\n');
            continue;
        }
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPENMETRICS: &str = "\
# HELP podmeter_http_server_requests HTTP requests.
# TYPE podmeter_http_server_requests counter
podmeter_http_server_requests_total{namespace=\"shop\",pod=\"web\",status_class=\"2xx\"} 5
# HELP podmeter_build The agent's version.
# TYPE podmeter_build info
podmeter_build_info{version=\"0.1.0\"} 1
# HELP podmeter_http_server_request_duration_seconds Durations.
# TYPE podmeter_http_server_request_duration_seconds histogram
# UNIT podmeter_http_server_request_duration_seconds seconds
podmeter_http_server_request_duration_seconds_sum{namespace=\"shop\",pod=\"web\"} 0.5
podmeter_http_server_request_duration_seconds_count{namespace=\"shop\",pod=\"web\"} 2
podmeter_http_server_request_duration_seconds_bucket{le=\"0.5\",namespace=\"shop\",pod=\"web\"} 2
podmeter_http_server_request_duration_seconds_bucket{le=\"+Inf\",namespace=\"shop\",pod=\"web\"} 2
# HELP podmeter_pods Pods with series.
# TYPE podmeter_pods gauge
podmeter_pods 1
# EOF
";

    #[test]
    fn openmetrics_is_rewritten_into_the_prometheus_text_format() {
        let text = to_prometheus_text(OPENMETRICS);
        let expected = "\
# HELP podmeter_http_server_requests_total HTTP requests.
# TYPE podmeter_http_server_requests_total counter
podmeter_http_server_requests_total{namespace=\"shop\",pod=\"web\",status_class=\"2xx\"} 5
# HELP podmeter_build_info The agent's version.
# TYPE podmeter_build_info gauge
podmeter_build_info{version=\"0.1.0\"} 1
# HELP podmeter_http_server_request_duration_seconds Durations.
# TYPE podmeter_http_server_request_duration_seconds histogram
podmeter_http_server_request_duration_seconds_sum{namespace=\"shop\",pod=\"web\"} 0.5
podmeter_http_server_request_duration_seconds_count{namespace=\"shop\",pod=\"web\"} 2
podmeter_http_server_request_duration_seconds_bucket{le=\"0.5\",namespace=\"shop\",pod=\"web\"} 2
podmeter_http_server_request_duration_seconds_bucket{le=\"+Inf\",namespace=\"shop\",pod=\"web\"} 2
# HELP podmeter_pods Pods with series.
# TYPE podmeter_pods gauge
podmeter_pods 1
";
        assert_eq!(text, expected);
    }

    #[test]
    fn the_accept_header_picks_the_format() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::negotiate(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(Format::negotiate(Some("*/*")), Format::Prometheus);
        assert_eq!(Format::negotiate(None), Format::Prometheus);
    }
}
