//! What the root network namespace does to test traffic: bridge netfilter and the firewall.
//!
//! With `br_netfilter` loaded and `bridge-nf-call-iptables=1`, frames bridged between two pods
//! traverse the root namespace's iptables/nft FORWARD hooks, and traffic between the root
//! namespace and a pod always traverses INPUT/OUTPUT. A dropping policy there makes test traffic
//! silently disappear, so a cluster refuses to start on such a host and says why.

use std::{fmt, fs, path::Path, process::Command, sync::OnceLock, time::Duration};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::process::run;

/// Set to `1` to create clusters even when the root firewall looks like it could drop test traffic.
pub const IGNORE_FIREWALL_ENV: &str = "PODMETER_TESTS_IGNORE_FIREWALL";

/// Hooks whose chains see traffic between pods and between the root namespace and pods.
const RELEVANT_HOOKS: [&str; 5] = ["prerouting", "input", "forward", "output", "postrouting"];
/// Families whose chains see that IPv4 traffic (bridge/arp for the bridged frames themselves).
const RELEVANT_FAMILIES: [&str; 4] = ["ip", "inet", "bridge", "arp"];

/// What the host's network configuration does to test traffic, found once per process.
#[derive(Debug, Clone, Default)]
pub struct HostNetworkReport {
    /// `/proc/sys/net/bridge/bridge-nf-call-iptables`; `None` when br_netfilter is not loaded.
    pub bridge_nf_call_iptables: Option<bool>,
    pub bridge_nf_call_arptables: Option<bool>,
    /// Base chains with a drop policy on a relevant hook (`family table chain hook`).
    pub dropping_policies: Vec<String>,
    /// Rules that drop or reject in relevant base chains or chains they jump to (worth a look,
    /// but usually scoped to other interfaces, so they only produce a warning).
    pub dropping_rules: Vec<String>,
    /// Tables of the legacy (non-nft) iptables backend, which `nft` cannot show.
    pub legacy_iptables_tables: Vec<String>,
}

impl HostNetworkReport {
    /// True when nothing in the root namespace drops by policy.
    pub fn is_permissive(&self) -> bool {
        self.dropping_policies.is_empty()
    }
}

impl fmt::Display for HostNetworkReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let flag = |value: Option<bool>| match value {
            None => "absent (br_netfilter not loaded)",
            Some(true) => "1",
            Some(false) => "0",
        };
        write!(
            f,
            "bridge-nf-call-iptables={} bridge-nf-call-arptables={}; ",
            flag(self.bridge_nf_call_iptables),
            flag(self.bridge_nf_call_arptables)
        )?;
        if self.dropping_policies.is_empty() && self.dropping_rules.is_empty() {
            write!(f, "root firewall has no dropping policy or rule")?;
        } else {
            write!(
                f,
                "dropping policies {:?}, dropping rules {:?}",
                self.dropping_policies, self.dropping_rules
            )?;
        }
        if !self.legacy_iptables_tables.is_empty() {
            write!(
                f,
                "; legacy iptables tables {:?}",
                self.legacy_iptables_tables
            )?;
        }
        Ok(())
    }
}

static REPORT: OnceLock<HostNetworkReport> = OnceLock::new();

/// Inspects the host once per process and fails when the root firewall would drop test traffic.
pub fn check_host_network() -> Result<&'static HostNetworkReport> {
    let report = match REPORT.get() {
        Some(report) => report,
        None => {
            let report = inspect()?;
            eprintln!("podmeter-tests: host network: {report}");
            REPORT.get_or_init(|| report)
        }
    };
    let ignore = std::env::var(IGNORE_FIREWALL_ENV).is_ok_and(|value| value == "1");
    if !report.is_permissive() && !ignore {
        bail!(
            "the root network namespace's firewall drops by policy ({:?}); with \
             bridge-nf-call-iptables={:?} this can silently drop traffic between test pods and \
             between the root namespace and pods. Allow 198.18.0.0/15 on the podmeter test bridges \
             (names starting with pmb), or set {IGNORE_FIREWALL_ENV}=1 if you know it does not apply.",
            report.dropping_policies,
            report.bridge_nf_call_iptables
        );
    }
    Ok(report)
}

fn inspect() -> Result<HostNetworkReport> {
    let mut report = HostNetworkReport {
        bridge_nf_call_iptables: read_flag("/proc/sys/net/bridge/bridge-nf-call-iptables")?,
        bridge_nf_call_arptables: read_flag("/proc/sys/net/bridge/bridge-nf-call-arptables")?,
        ..HostNetworkReport::default()
    };
    inspect_nft(&mut report)?;
    inspect_legacy_iptables(&mut report)?;
    Ok(report)
}

fn read_flag(path: &str) -> Result<Option<bool>> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text.trim() != "0")),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error).with_context(|| format!("reading {path}")),
    }
}

/// Reads the nftables ruleset, which also holds the rules of `iptables` with the nf_tables backend.
fn inspect_nft(report: &mut HostNetworkReport) -> Result<()> {
    let mut command = Command::new("nft");
    command.args(["-j", "list", "ruleset"]);
    let output = run(command, Duration::from_secs(10))?.check("nft -j list ruleset")?;
    let ruleset: Value =
        serde_json::from_str(&output.stdout).context("parsing `nft -j list ruleset`")?;
    let items = ruleset["nftables"].as_array().cloned().unwrap_or_default();
    for item in &items {
        let chain = &item["chain"];
        if chain.is_object() {
            let family = chain["family"].as_str().unwrap_or_default();
            let hook = chain["hook"].as_str().unwrap_or_default();
            if RELEVANT_FAMILIES.contains(&family)
                && RELEVANT_HOOKS.contains(&hook)
                && chain["policy"].as_str() == Some("drop")
            {
                report.dropping_policies.push(format!(
                    "{family} {} {} hook {hook}",
                    chain["table"].as_str().unwrap_or_default(),
                    chain["name"].as_str().unwrap_or_default()
                ));
            }
        }
        let rule = &item["rule"];
        if rule.is_object() {
            let family = rule["family"].as_str().unwrap_or_default();
            let expressions = rule["expr"].to_string();
            if RELEVANT_FAMILIES.contains(&family)
                && (expressions.contains("\"drop\"") || expressions.contains("\"reject\""))
            {
                report.dropping_rules.push(format!(
                    "{family} {} {} handle {}",
                    rule["table"].as_str().unwrap_or_default(),
                    rule["chain"].as_str().unwrap_or_default(),
                    rule["handle"]
                ));
            }
        }
    }
    Ok(())
}

/// The legacy backend keeps its tables outside nftables; /proc lists the ones in use.
fn inspect_legacy_iptables(report: &mut HostNetworkReport) -> Result<()> {
    let names = match fs::read_to_string("/proc/net/ip_tables_names") {
        Ok(names) => names,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(error).context("reading /proc/net/ip_tables_names"),
    };
    report.legacy_iptables_tables = names.split_whitespace().map(str::to_owned).collect();
    if report.legacy_iptables_tables.is_empty() || !Path::new("/usr/sbin/iptables-legacy").exists()
    {
        return Ok(());
    }
    for table in report.legacy_iptables_tables.clone() {
        let mut command = Command::new("iptables-legacy");
        command.args(["-t", &table, "-S"]);
        let output = run(command, Duration::from_secs(10))?.check("iptables-legacy -S")?;
        for line in output.stdout.lines() {
            if line.starts_with("-P ") && line.ends_with(" DROP") {
                report
                    .dropping_policies
                    .push(format!("legacy {table}: {line}"));
            } else if line.contains("-j DROP") || line.contains("-j REJECT") {
                report
                    .dropping_rules
                    .push(format!("legacy {table}: {line}"));
            }
        }
    }
    Ok(())
}
