//! `cargo xtask demo` (the README's main command): pods built from network namespaces and cgroups,
//! real nginx servers, hey clients at fixed rates, and the agent counting every request once.
//! A live table shows per-pod counts and rates; the summary compares them with what the clients
//! report and with what counting at every socket (both ends, plus the sidecar hop) would say.
//! Everything it creates is removed on exit, on Ctrl-C too.

use std::{
    collections::BTreeMap,
    io::Read as _,
    process::Stdio,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use podmeter_tests::{AgentProcess, ChildGuard, Cluster, Nginx, Pod, clients::parse_hey};
use serde_json::Value;

/// Demo options; every default is the embedded scenario.
#[derive(clap::Args)]
pub struct Args {
    /// How long the load runs, in seconds.
    #[arg(long, default_value_t = 20)]
    duration: u64,
    /// Requests per second from the client pod to `web`.
    #[arg(long, default_value_t = 50)]
    web_rate: u32,
    /// Requests per second from the client pod to `api` (which hands each to its app over loopback).
    #[arg(long, default_value_t = 20)]
    api_rate: u32,
    /// Requests per second to `web` from outside the pods (the node's root network namespace).
    #[arg(long, default_value_t = 10)]
    external_rate: u32,
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// One hey process at a fixed rate; `-q` is per worker, so the rate is split over `workers`.
struct Load {
    name: &'static str,
    target: String,
    rate: u32,
    process: ChildGuard,
}

fn start_load(
    name: &'static str,
    from: Option<&Pod<'_>>,
    url: String,
    rate: u32,
    secs: u64,
) -> anyhow::Result<Load> {
    let workers = rate.clamp(1, 5);
    let per_worker = (rate / workers).max(1);
    let mut command = match from {
        Some(pod) => pod.command("hey")?,
        None => std::process::Command::new("hey"),
    };
    command
        .args([
            "-z",
            &format!("{secs}s"),
            "-c",
            &workers.to_string(),
            "-q",
            &per_worker.to_string(),
            &url,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    podmeter_tests::process::die_with_parent(&mut command);
    let child = command
        .spawn()
        .with_context(|| format!("starting hey for {name}"))?;
    Ok(Load {
        name,
        target: url,
        rate: per_worker * workers,
        process: ChildGuard::from_child(child, name),
    })
}

fn flow(p: &Value, key: &str) -> u64 {
    p[key]["requests"].as_u64().unwrap_or(0)
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    // SAFETY: installs a handler that only stores to an atomic.
    unsafe { libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t) };
    // The agent's own logs would drown the table.
    // SAFETY: single-threaded at this point.
    unsafe { std::env::set_var("PODMETER_LOG", "warn") };
    if !AgentProcess::binary().exists() {
        crate::test::cargo(&["build", "--package", "podmeter", "--bin", "podmeter"])?;
    }

    println!("podmeter demo: building pods (network namespaces + cgroups) and starting nginx ...");
    let cluster = Cluster::new()?;
    let client = cluster.pod("demo", "client")?;
    let web = cluster.pod("demo", "web")?;
    let api = cluster.pod("demo", "api")?;
    let web_server = Nginx::start(&web)?;
    let api_server = Nginx::start(&api)?;
    let agent = AgentProcess::start(cluster.cgroup_root(), &[])?;
    println!(
        "agent attached to {} and serving {}\n",
        cluster.cgroup_root().display(),
        agent.base_url()
    );
    println!(
        "load for {}s: client -> web {} req/s, client -> api {} req/s (api's nginx hands each to its app on \
         127.0.0.1), outside -> web {} req/s\n",
        args.duration, args.web_rate, args.api_rate, args.external_rate
    );

    let mut loads = vec![
        start_load(
            "client -> web",
            Some(&client),
            web_server.url("/"),
            args.web_rate,
            args.duration,
        )?,
        start_load(
            "client -> api",
            Some(&client),
            api_server.url("/proxy/items"),
            args.api_rate,
            args.duration,
        )?,
        start_load(
            "outside -> web",
            None,
            web_server.url("/"),
            args.external_rate,
            args.duration,
        )?,
    ];

    let started = Instant::now();
    let mut last: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut last_at = Instant::now();
    while started.elapsed() < Duration::from_secs(args.duration + 2)
        && !INTERRUPTED.load(Ordering::SeqCst)
    {
        std::thread::sleep(Duration::from_secs(1));
        let pods = agent.get("/v1/pods")?;
        let dt = last_at.elapsed().as_secs_f64();
        last_at = Instant::now();
        println!(
            "t={:>3}s {:<14} {:>8} {:>8} {:>8} {:>8} {:>10}",
            started.elapsed().as_secs(),
            "POD",
            "IN",
            "IN/s",
            "OUT",
            "OUT/s",
            "LOOPBACK"
        );
        for p in pods["pods"].as_array().into_iter().flatten() {
            let name = format!(
                "{}/{}",
                p["namespace"].as_str().unwrap_or(""),
                p["name"].as_str().unwrap_or("")
            );
            let (inb, out) = (flow(p, "inbound"), flow(p, "outbound"));
            let (pin, pout) = last.insert(name.clone(), (inb, out)).unwrap_or((inb, out));
            println!(
                "       {:<14} {:>8} {:>8.1} {:>8} {:>8.1} {:>10}",
                name,
                inb,
                (inb - pin.min(inb)) as f64 / dt,
                out,
                (out - pout.min(out)) as f64 / dt,
                flow(p, "loopback_inbound")
            );
        }
        println!();
    }
    if INTERRUPTED.load(Ordering::SeqCst) {
        println!("interrupted: cleaning up");
        return Ok(());
    }

    // What the clients saw.
    let mut sent = 0;
    println!("clients:");
    for load in &mut loads {
        load.process.wait_timeout(Duration::from_secs(30))?;
        let mut out = String::new();
        if let Some(stdout) = load.process.child_mut().stdout.as_mut() {
            stdout.read_to_string(&mut out)?;
        }
        let report = parse_hey(&out)?;
        sent += report.completed();
        println!(
            "  {:<15} {:>6} requests answered at ~{} req/s ({})",
            load.name,
            report.completed(),
            load.rate,
            load.target
        );
    }
    // Let the last counter read land.
    std::thread::sleep(Duration::from_millis(600));
    let pods = agent.get("/v1/pods")?;
    let pod = |name: &str| {
        pods["pods"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == name)
            .cloned()
            .unwrap_or(Value::Null)
    };
    let (web_in, api_in, client_out) = (
        flow(&pod("web"), "inbound"),
        flow(&pod("api"), "inbound"),
        flow(&pod("client"), "outbound"),
    );
    let every_socket: u64 = pods["pods"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            flow(p, "inbound")
                + flow(p, "outbound")
                + flow(p, "loopback_inbound")
                + flow(p, "loopback_outbound")
        })
        .sum();
    println!("\npodmeter counted:");
    println!("  web inbound     {web_in:>6}   (client -> web plus outside -> web)");
    println!(
        "  api inbound     {api_in:>6}   (its loopback hop to the app is kept apart: {} more)",
        flow(&pod("api"), "loopback_inbound")
    );
    println!("  client outbound {client_out:>6}");
    println!(
        "\nrequests answered {sent}; podmeter's inbound total {}; counting every socket would say {every_socket}.",
        web_in + api_in
    );
    if web_in + api_in != sent {
        bail!(
            "podmeter's inbound total {} differs from the {sent} requests the clients saw answered",
            web_in + api_in
        );
    }
    println!("each request counted exactly once. Cleaning up.");
    Ok(())
}
