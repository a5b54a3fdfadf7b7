//! The agent's userspace pipeline on one core, fed with synthetic but realistic ring records:
//! event decode -> request/response pairing -> attribution (pod and flow) -> each pod's book
//! (`drain_events` in `run.rs`, minus the ring buffer read itself), and one counter read
//! attributed and booked into the books' totals, rates and gauges (`book_counts`).
//!
//! `cargo xtask bench` runs these and reports the throughput of `pipeline/decode_pair_book` as the
//! pipeline ceiling. Run alone: `cargo bench -p podmeter-agent --bench pipeline`.

use std::{
    hint::black_box,
    time::{Duration, Instant},
};

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use podmeter_agent::{
    DEFAULT_ROUTE_CAP, RateWindow,
    pipeline::{
        AgentInfo, Books, Deltas, Drain, FastMap, Flows, Health, Metrics, NodeState, PodId, Shared,
        by_pod, decode,
    },
};
use podmeter_common::{CountKey, HEAD_LEN, HttpEvent, counter, event_kind, method, peer, role};
use prometheus_client::registry::Registry;

/// Ring records per iteration: a few drains' worth at high load.
const EVENTS_PER_BATCH: usize = 8192;
/// Pods on the node, each with its own cgroup.
const PODS: u64 = 64;
/// Connections with a request in flight at once (keep-alive, interleaved in the ring).
const CONCURRENT_CONNECTIONS: u64 = 512;
/// The first cgroup id; pod `i` is cgroup `FIRST_CGROUP + i`.
const FIRST_CGROUP: u64 = 4_000;

/// Request heads as the kernel copies them: the first `HEAD_LEN` bytes of the request.
const HEADS: [&str; 6] = [
    "GET /api/v1/users/12345 HTTP/1.1\r\nHost: users.shop.svc.cluster.local\r\nUser-Agent: Go-http-client/1.1\r\nAccept: */*\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: 198.18.0.2\r\nUser-Agent: hey/0.0.1\r\nAccept-Encoding: gzip\r\n\r\n",
    "POST /api/v1/orders HTTP/1.1\r\nHost: orders.shop.svc.cluster.local\r\nContent-Type: application/json\r\nContent-Length: 182\r\n\r\n",
    "GET /static/js/app.9fceb02d.js HTTP/1.1\r\nHost: web.shop.svc.cluster.local\r\nAccept: */*\r\n\r\n",
    "PUT /api/v1/carts/8a1f2c3d-1111-2222-3333-444455556666/items HTTP/1.1\r\nHost: carts\r\n\r\n",
    "GET /healthz HTTP/1.1\r\nHost: 10.244.1.17:8080\r\nUser-Agent: kube-probe/1.33\r\n\r\n",
];

/// Response statuses, most of them 200.
const STATUSES: [u32; 8] = [200, 200, 200, 200, 200, 201, 404, 503];

fn record(event: &HttpEvent) -> Vec<u8> {
    // SAFETY: HttpEvent is #[repr(C)] plain old data without padding; its bytes are what the
    // kernel writes into the ring buffer.
    let bytes = unsafe {
        std::slice::from_raw_parts(
            std::ptr::from_ref(event).cast::<u8>(),
            size_of::<HttpEvent>(),
        )
    };
    bytes.to_vec()
}

fn base_event(kind: u32, connection: u64, ts_ns: u64) -> HttpEvent {
    let pod = connection % PODS;
    // One connection in eight is the client side of a same-node request; the rest are served.
    let client = connection % 8 == 7;
    HttpEvent {
        ts_ns,
        cookie: 1_000_000 + connection,
        cgroup_id: FIRST_CGROUP + pod,
        kind,
        role: if client { role::CLIENT } else { role::SERVER },
        peer: peer::REMOTE,
        status_class: 0,
        status: 0,
        head_len: 0,
        _reserved: 0,
        head: [0; HEAD_LEN],
    }
}

/// `EVENTS_PER_BATCH` records: rounds in which every concurrent connection sends a request, then
/// the responses come back in a scrambled order, as they interleave in the ring.
fn batch() -> Vec<Vec<u8>> {
    let mut records = Vec::with_capacity(EVENTS_PER_BATCH);
    let mut ts_ns = 1_000_000_000u64;
    let mut n = 0u64;
    while records.len() < EVENTS_PER_BATCH {
        for connection in 0..CONCURRENT_CONNECTIONS {
            let mut event = base_event(event_kind::REQUEST, connection, ts_ns);
            let head = HEADS[((connection + n) % HEADS.len() as u64) as usize].as_bytes();
            let len = head.len().min(HEAD_LEN);
            event.head[..len].copy_from_slice(&head[..len]);
            event.head_len = len as u32;
            records.push(record(&event));
            ts_ns += 1_500;
        }
        for i in 0..CONCURRENT_CONNECTIONS {
            // A fixed odd stride visits every connection once, in a scrambled order.
            let connection = (i * 167 + n) % CONCURRENT_CONNECTIONS;
            let mut event = base_event(event_kind::RESPONSE, connection, ts_ns);
            event.status = STATUSES[((connection + n) % STATUSES.len() as u64) as usize];
            event.status_class = podmeter_common::status_class::of(event.status);
            records.push(record(&event));
            ts_ns += 1_500;
        }
        n += 1;
    }
    records.truncate(EVENTS_PER_BATCH);
    records
}

fn node_state(route_labels: bool) -> Shared {
    let mut registry = Registry::default();
    let metrics = Metrics::register(
        &mut registry,
        &AgentInfo {
            version: "bench".to_owned(),
            programs: "cgroup_skb/ingress,cgroup_skb/egress,sock_ops".to_owned(),
            link: "bpf_link".to_owned(),
            cgroup_root: "/sys/fs/cgroup/kubepods".to_owned(),
            rate_window_secs: RateWindow::DEFAULT.secs(),
            ring_capacity_bytes: 4 << 20,
            ring_positions: true,
        },
    );
    let started = Instant::now();
    Shared::new(
        NodeState {
            books: Books::new(
                RateWindow::DEFAULT,
                started,
                route_labels.then_some(usize::from(DEFAULT_ROUTE_CAP)),
                metrics.http.clone(),
            ),
            metrics,
            health: Health::default(),
            started,
        },
        registry,
        true,
    )
}

/// What the agent's resolver cache holds once warm: every cgroup id is one pod.
fn pod_cache() -> FastMap<u64, Option<PodId>> {
    (0..PODS)
        .map(|i| {
            (
                FIRST_CGROUP + i,
                Some(PodId::new("shop", format!("web-{i}"))),
            )
        })
        .collect()
}

/// The agent's `drain_events` minus reading the ring: returns the exchanges booked.
fn drain(
    records: &[Vec<u8>],
    flows: &mut Flows,
    pods: &FastMap<u64, Option<PodId>>,
    shared: &Shared,
) -> usize {
    let mut drain = Drain::default();
    for record in records {
        drain.add(record, flows);
    }
    let drained = drain.finish(|cgroup_id| pods.get(&cgroup_id).cloned().flatten());
    drained.book(flows, &mut shared.lock());
    drained.booked.len()
}

fn events_path(c: &mut Criterion) {
    let records = batch();
    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::Elements(records.len() as u64));

    group.bench_function("decode", |b| {
        b.iter(|| {
            for item in &records {
                black_box(decode(black_box(item)));
            }
        });
    });

    group.bench_function("decode_pair", |b| {
        let mut flows = Flows::new(131_072);
        b.iter(|| {
            let mut paired = 0usize;
            for item in &records {
                if let Some(event) = decode(item)
                    && flows.on_event(event).is_some()
                {
                    paired += 1;
                }
            }
            black_box(paired)
        });
    });

    for (name, route_labels) in [
        ("decode_pair_book", false),
        ("decode_pair_book_routes", true),
    ] {
        group.bench_function(name, |b| {
            let mut flows = Flows::new(131_072);
            let pods = pod_cache();
            let shared = node_state(route_labels);
            b.iter(|| black_box(drain(&records, &mut flows, &pods, &shared)));
        });
    }
    group.finish();
}

/// One read of the exact counters (every 250 ms): deltas of every pod's counters booked into
/// totals, the rate windows and the rate gauges.
fn counter_read(c: &mut Criterion) {
    let mut group = c.benchmark_group("rates");
    group.throughput(Throughput::Elements(1));
    group.bench_function("book_counter_read_64_pods", |b| {
        let pods = pod_cache();
        let shared = node_state(false);
        let mut deltas = Deltas::default();
        let origin = Instant::now();
        let mut reads = 0u64;
        let mut total = 0u64;
        b.iter_batched(
            || {
                // Every pod served more requests since the previous read, on both sides.
                reads += 1;
                total += 25;
                let mut current = Vec::new();
                for pod in 0..PODS {
                    for socket_role in [role::SERVER, role::CLIENT] {
                        for kind in [
                            counter::requests(method::GET),
                            counter::responses(method::GET, 2),
                        ] {
                            current.push((
                                CountKey {
                                    cgroup_id: FIRST_CGROUP + pod,
                                    role: socket_role,
                                    peer: peer::REMOTE,
                                    counter: kind,
                                },
                                total,
                            ));
                        }
                    }
                }
                (current, origin + Duration::from_millis(250 * reads))
            },
            |(current, now)| {
                let booked = by_pod(deltas.update(&current), |cgroup_id| {
                    pods.get(&cgroup_id).cloned().flatten()
                });
                shared.lock().book_counts(now, &booked, &[]);
            },
            BatchSize::SmallInput,
        );
    });
    group.finish();
}

criterion_group! {
    name = benches;
    // Short enough for `cargo xtask bench`'s time budget; stable to a few percent on a quiet core.
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20);
    targets = events_path, counter_read
}
criterion_main!(benches);
