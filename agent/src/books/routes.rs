//! Route labels: request paths normalised, and at most a fixed number of them per pod and
//! direction, the rest under `other`.
//!
//! Normalisation of a request target:
//! - the query (`?...`) and fragment (`#...`) are dropped; an absolute-form target
//!   (`http://host/path`) keeps its path; `*` (as in `OPTIONS *`) stays `*`; any other form
//!   (e.g. `CONNECT host:443`) is `other`;
//! - every path segment that is an id becomes `{id}`: all decimal digits (`/items/42`), a
//!   UUID, or at least 8 hex digits with at least one decimal digit among them (`/commits/9fceb02d`);
//! - the result is cut to [`MAX_ROUTE_BYTES`].
//!
//! The first `cap` distinct routes a pod uses in a direction get their own label, for as long as
//! the pod lives; later ones are counted under `other`. First come, first kept: series never churn.

use std::sync::Arc;

use crate::{attribution::flow::Flow, fast_map::FastMap};

/// The route of everything over the cap, and of targets that are not paths.
pub const OTHER: &str = "other";
/// What an id segment becomes.
pub const ID: &str = "{id}";
/// Longest route label; longer paths are cut (at a character boundary).
pub const MAX_ROUTE_BYTES: usize = 96;
/// Default of `--max-routes-per-pod`.
pub const DEFAULT_CAP: u16 = 50;

/// A route label of one pod and direction; `id` is stable for the pod's lifetime.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub id: u16,
    pub name: Arc<str>,
}

/// The normalised route of a request target; `None` when the target is not a path.
pub fn normalise(target: &str) -> Option<String> {
    let end = target.find(['?', '#']).unwrap_or(target.len());
    let mut path = &target[..end];
    if path == "*" {
        return Some("*".to_owned());
    }
    if !path.starts_with('/') {
        // Absolute form: scheme "://" authority [path].
        let (_, rest) = path.split_once("://")?;
        path = rest.find('/').map_or("/", |i| &rest[i..]);
    }
    let mut route = String::with_capacity(path.len());
    for (i, segment) in path.split('/').enumerate() {
        if i > 0 {
            route.push('/');
        }
        route.push_str(if is_id(segment) { ID } else { segment });
        if route.len() >= MAX_ROUTE_BYTES {
            break;
        }
    }
    if route.len() > MAX_ROUTE_BYTES {
        let mut cut = MAX_ROUTE_BYTES;
        while !route.is_char_boundary(cut) {
            cut -= 1;
        }
        route.truncate(cut);
    }
    Some(route)
}

fn is_id(segment: &str) -> bool {
    let bytes = segment.as_bytes();
    if bytes.is_empty() {
        return false;
    }
    if bytes.iter().all(u8::is_ascii_digit) {
        return true;
    }
    let is_uuid = bytes.len() == 36
        && bytes.iter().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => *b == b'-',
            _ => b.is_ascii_hexdigit(),
        });
    let is_hex = bytes.len() >= 8
        && bytes.iter().all(u8::is_ascii_hexdigit)
        && bytes.iter().any(u8::is_ascii_digit);
    is_uuid || is_hex
}

fn other() -> Route {
    Route {
        id: 0,
        name: Arc::from(OTHER),
    }
}

/// The routes one pod uses in one direction.
#[derive(Default)]
struct Table {
    ids: FastMap<String, u16>,
    names: Vec<Arc<str>>,
}

/// What every pod's routes share: at most `cap` (+ `other`) per pod and direction, and how many
/// requests that folded.
pub struct RouteCap {
    cap: usize,
    /// Requests whose route was folded into `other` because the pod was at its cap.
    folded: u64,
}

impl RouteCap {
    /// `cap` is clamped to `1..=u16::MAX - 1` (ids must fit the label cache's keys).
    pub fn new(cap: usize) -> Self {
        Self {
            cap: cap.clamp(1, usize::from(u16::MAX - 1)),
            folded: 0,
        }
    }

    /// Requests whose route was folded into `other` because their pod was at its cap.
    pub fn folded(&self) -> u64 {
        self.folded
    }
}

/// The route labels of one pod: a table per direction.
#[derive(Default)]
pub struct PodRoutes([Table; 2]);

impl PodRoutes {
    /// The table of a flow's direction: loopback and node flows share their direction's.
    fn direction(flow: Flow) -> usize {
        match flow {
            Flow::Inbound | Flow::LoopbackInbound | Flow::NodeInbound => 0,
            Flow::Outbound | Flow::LoopbackOutbound => 1,
        }
    }

    /// The route label of a request `target` the pod sent (outbound) or served (inbound).
    pub fn route(&mut self, cap: &mut RouteCap, flow: Flow, target: Option<&str>) -> Route {
        // Normalised routes start with `/` (or are `*`), so none can be mistaken for `other`.
        let Some(name) = target.and_then(normalise) else {
            return other();
        };
        let table = &mut self.0[Self::direction(flow)];
        if let Some(id) = table.ids.get(&name) {
            return Route {
                id: *id,
                name: table.names[usize::from(*id) - 1].clone(),
            };
        }
        if table.names.len() >= cap.cap {
            cap.folded += 1;
            return other();
        }
        let name: Arc<str> = Arc::from(name);
        table.names.push(name.clone());
        // Id 0 is `other`; the cap keeps ids within u16.
        let id = u16::try_from(table.names.len()).unwrap_or(u16::MAX);
        table.ids.insert(name.to_string(), id);
        Route { id, name }
    }

    /// Distinct routes (without `other`) in a direction.
    #[cfg(test)]
    pub fn len(&self, flow: Flow) -> usize {
        self.0[Self::direction(flow)].names.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(target: &str) -> Option<String> {
        normalise(target)
    }

    #[test]
    fn queries_and_fragments_are_dropped() {
        assert_eq!(norm("/search?q=shoes&page=2").as_deref(), Some("/search"));
        assert_eq!(norm("/docs#intro").as_deref(), Some("/docs"));
        assert_eq!(norm("/").as_deref(), Some("/"));
    }

    #[test]
    fn numeric_hex_and_uuid_segments_collapse() {
        assert_eq!(
            norm("/api/v1/users/12345/orders/7").as_deref(),
            Some("/api/v1/users/{id}/orders/{id}")
        );
        assert_eq!(
            norm("/commits/9fceb02d0ae598e95dc970b74767f19372d61af8").as_deref(),
            Some("/commits/{id}")
        );
        assert_eq!(
            norm("/objects/123e4567-e89b-12d3-a456-426614174000/meta").as_deref(),
            Some("/objects/{id}/meta")
        );
        // Words made of hex letters, short hex and versions stay.
        assert_eq!(
            norm("/cafe/deadbeef/v2/ab12").as_deref(),
            Some("/cafe/deadbeef/v2/ab12")
        );
    }

    #[test]
    fn absolute_and_asterisk_forms() {
        assert_eq!(
            norm("http://example.com:8080/items/9?x=1").as_deref(),
            Some("/items/{id}")
        );
        assert_eq!(norm("http://example.com").as_deref(), Some("/"));
        assert_eq!(norm("*").as_deref(), Some("*"));
        assert_eq!(norm("example.com:443"), None);
    }

    #[test]
    fn long_paths_are_cut_at_a_character_boundary() {
        let long = format!("/{}", "é".repeat(200));
        let route = norm(&long).expect("a path");
        assert!(route.len() <= MAX_ROUTE_BYTES);
        assert!(route.starts_with("/é"));
    }

    #[test]
    fn the_cap_folds_new_routes_into_other_per_pod_and_direction() {
        let mut cap = RouteCap::new(3);
        let mut web = PodRoutes::default();
        let mut api = PodRoutes::default();
        let names: Vec<_> = (0..10)
            .map(|i| {
                let target = format!("/page-{}", char::from(b'a' + i));
                web.route(&mut cap, Flow::Inbound, Some(&target)).name
            })
            .collect();
        assert_eq!(
            names.iter().map(|n| &**n).collect::<Vec<_>>(),
            [
                "/page-a", "/page-b", "/page-c", "other", "other", "other", "other", "other",
                "other", "other"
            ]
        );
        assert_eq!(cap.folded(), 7);
        // Known routes keep their id after the cap is reached.
        let b = web.route(&mut cap, Flow::Inbound, Some("/page-b?x=1"));
        assert_eq!((b.id, &*b.name), (2, "/page-b"));
        // Ids collapse before the cap is applied: one route for any number of ids.
        assert_eq!(
            &*api.route(&mut cap, Flow::Inbound, Some("/items/1")).name,
            "/items/{id}"
        );
        for i in 0..1_000 {
            let target = format!("/items/{i}");
            assert_eq!(api.route(&mut cap, Flow::Inbound, Some(&target)).id, 1);
        }
        // The other direction and other pods have their own tables.
        assert_eq!(&*web.route(&mut cap, Flow::Outbound, Some("/x")).name, "/x");
        assert_eq!(web.len(Flow::Inbound), 3);
        assert_eq!(web.len(Flow::Outbound), 1);
        assert_eq!(api.len(Flow::Inbound), 1);
        // Targets that are not paths, and a missing target, are `other` without using the cap.
        assert_eq!(api.route(&mut cap, Flow::Inbound, Some("h:443")).id, 0);
        assert_eq!(api.route(&mut cap, Flow::Inbound, None).id, 0);
        // A pod removed and seen again starts with an empty table (see `Books::remove`).
        web = PodRoutes::default();
        assert_eq!(web.len(Flow::Inbound), 0);
        assert_eq!(
            &*web.route(&mut cap, Flow::Inbound, Some("/page-z")).name,
            "/page-z"
        );
    }
}
