//! What kube-proxy leaves in the machine's iptables (Debian's iptables, nf_tables backend): chains
//! named `KUBE-*` in the nat, filter and mangle tables of both families, the jumps to them from
//! the built-in chains, and the nf_tables tables iptables-nft created to hold them. Removal
//! ([`remove_kube_rules`]) declares (and so flushes) every `KUBE-*` chain, deletes every jump to
//! one, and deletes the chains, in one `iptables-restore --noflush` per table, the way kube-proxy
//! itself writes its rules; then it deletes the tables that did not exist before and are left
//! empty.
//!
//! A `KUBE-*` chain on this machine is always ours: the node refuses to start when one exists
//! ([`kube_chains`]).

use std::{process::Command, time::Duration};

use anyhow::{Result, bail};

use crate::process::{run, run_ok, run_with_input};

/// The tables kube-proxy (and a kubelet's utility chains) write to.
pub const TABLES: [&str; 3] = ["nat", "filter", "mangle"];
const IPTABLES_TIMEOUT: Duration = Duration::from_secs(30);

/// One address family's tools and its nf_tables family.
#[derive(Debug, Clone, Copy)]
pub struct Family {
    pub save: &'static str,
    pub restore: &'static str,
    pub nft_family: &'static str,
}

pub const FAMILIES: [Family; 2] = [
    Family {
        save: "iptables-save",
        restore: "iptables-restore",
        nft_family: "ip",
    },
    Family {
        save: "ip6tables-save",
        restore: "ip6tables-restore",
        nft_family: "ip6",
    },
];

/// `<save> -t <table>` without its comment lines.
pub fn save(family: Family, table: &str) -> Result<Vec<String>> {
    let mut command = Command::new(family.save);
    command.args(["-t", table]);
    let output = run_ok(command, IPTABLES_TIMEOUT)?;
    Ok(output
        .stdout
        .lines()
        .filter(|line| !line.starts_with('#'))
        .map(str::to_owned)
        .collect())
}

/// Every `KUBE-*` chain, as `<save tool> <table> <chain>`.
pub fn kube_chains() -> Result<Vec<String>> {
    let mut chains = Vec::new();
    for family in FAMILIES {
        for table in TABLES {
            chains.extend(
                kube_chains_in(&save(family, table)?)
                    .into_iter()
                    .map(|chain| format!("{} {table} {chain}", family.save)),
            );
        }
    }
    Ok(chains)
}

fn kube_chains_in(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .filter_map(|line| line.strip_prefix(':'))
        .filter_map(|declaration| declaration.split(' ').next())
        .filter(|chain| chain.starts_with("KUBE-"))
        .map(str::to_owned)
        .collect()
}

/// `nft list tables`: lines like `table ip nat`.
pub fn nft_tables() -> Result<Vec<String>> {
    let mut command = Command::new("nft");
    command.args(["list", "tables"]);
    let output = run_ok(command, IPTABLES_TIMEOUT)?;
    Ok(output.stdout.lines().map(str::to_owned).collect())
}

/// Removes every `KUBE-*` chain and every jump to one from every table of both families, then
/// deletes the nf_tables tables of [`TABLES`] that are not in `tables_before` (as listed by
/// [`nft_tables`]) and hold no rule and no chain of their own any more. Every step runs; the
/// failures are reported together.
pub fn remove_kube_rules(tables_before: &[String]) -> Result<()> {
    let mut errors = Vec::new();
    for family in FAMILIES {
        for table in TABLES {
            if let Err(error) = remove_in_table(family, table) {
                errors.push(format!("{} -t {table}: {error:#}", family.restore));
            }
        }
    }
    match nft_tables() {
        Ok(tables) => {
            for family in FAMILIES {
                for table in TABLES {
                    let line = format!("table {} {table}", family.nft_family);
                    if !tables.contains(&line) || tables_before.contains(&line) {
                        continue;
                    }
                    if let Err(error) = delete_if_empty(family, table) {
                        errors.push(format!("{line}: {error:#}"));
                    }
                }
            }
        }
        Err(error) => errors.push(format!("{error:#}")),
    }
    if !errors.is_empty() {
        bail!("{}", errors.join("; "));
    }
    Ok(())
}

fn remove_in_table(family: Family, table: &str) -> Result<()> {
    let lines = save(family, table)?;
    let chains = kube_chains_in(&lines);
    // Jumps from chains that are not ours (ours are flushed anyway), e.g.
    // `-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES`.
    let jumps: Vec<&str> = lines
        .iter()
        .filter_map(|line| line.strip_prefix("-A "))
        .filter(|rule| !rule.starts_with("KUBE-") && rule.contains(" -j KUBE-"))
        .collect();
    if chains.is_empty() && jumps.is_empty() {
        return Ok(());
    }
    let mut script = format!("*{table}\n");
    for chain in &chains {
        script.push_str(&format!(":{chain} - [0:0]\n"));
    }
    for rule in &jumps {
        script.push_str(&format!("-D {rule}\n"));
    }
    for chain in &chains {
        script.push_str(&format!("-X {chain}\n"));
    }
    script.push_str("COMMIT\n");
    let mut command = Command::new(family.restore);
    command.args(["--noflush", "-w"]);
    run_with_input(command, script.as_bytes(), IPTABLES_TIMEOUT)?
        .check(&format!("{} --noflush of:\n{script}", family.restore))?;
    Ok(())
}

/// Deletes nf_tables table `<family> <table>` when `<save> -t <table>` shows nothing but the
/// built-in chains with policy ACCEPT.
fn delete_if_empty(family: Family, table: &str) -> Result<()> {
    let lines = save(family, table)?;
    let leftovers: Vec<&String> = lines
        .iter()
        .filter(|line| {
            let declaration = line.strip_prefix(':');
            let builtin_accept = declaration
                .is_some_and(|declaration| declaration.split(' ').nth(1) == Some("ACCEPT"));
            !(builtin_accept || line.starts_with('*') || line.as_str() == "COMMIT")
        })
        .collect();
    if !leftovers.is_empty() {
        bail!("not deleted: it still holds {leftovers:?}");
    }
    let mut command = Command::new("nft");
    command.args(["delete", "table", family.nft_family, table]);
    let output = run(command, IPTABLES_TIMEOUT)?;
    output.check(&format!("nft delete table {} {table}", family.nft_family))?;
    Ok(())
}
