//! Packet loss injected inside a pod's network namespace with nftables.
//!
//! The kernel has no netem, so loss comes from an nft rule: a `prerouting` chain at priority -300
//! (before conntrack and everything else) that drops `numgen random mod 100 < percent` of the
//! packets arriving on the pod's `eth0`. Loopback traffic inside the pod is not affected. Set it
//! on both pods of a conversation to lose packets in both directions.

use std::time::Duration;

use anyhow::{Result, ensure};

use crate::{
    netns::{POD_INTERFACE, Pod},
    process::run_with_input,
};

/// The table that holds the loss rule in the pod's namespace.
pub const LOSS_TABLE: &str = "podmeter_loss";

impl Pod<'_> {
    /// Drops `percent`% of the packets arriving on the pod's `eth0` (replacing any earlier rate).
    pub fn set_ingress_loss(&self, percent: u8) -> Result<()> {
        ensure!(percent <= 100, "loss must be a percentage, got {percent}");
        // Declaring the table before deleting it makes the delete succeed when it did not exist.
        let script = format!(
            "table ip {LOSS_TABLE}\n\
             delete table ip {LOSS_TABLE}\n\
             table ip {LOSS_TABLE} {{\n\
               chain prerouting {{\n\
                 type filter hook prerouting priority -300; policy accept;\n\
                 iifname \"{POD_INTERFACE}\" numgen random mod 100 < {percent} drop\n\
               }}\n\
             }}\n"
        );
        self.nft(&script)
    }

    /// Removes the loss rule; harmless when none is set.
    pub fn clear_ingress_loss(&self) -> Result<()> {
        self.nft(&format!(
            "table ip {LOSS_TABLE}\ndelete table ip {LOSS_TABLE}\n"
        ))
    }

    /// The pod's nftables ruleset as `nft list ruleset` prints it.
    pub fn nft_ruleset(&self) -> Result<String> {
        let mut command = self.admin_command("nft")?;
        command.args(["list", "ruleset"]);
        Ok(crate::process::run(command, Duration::from_secs(10))?
            .check("nft list ruleset")?
            .stdout)
    }

    fn nft(&self, script: &str) -> Result<()> {
        let mut command = self.admin_command("nft")?;
        command.args(["-f", "-"]);
        run_with_input(command, script.as_bytes(), Duration::from_secs(10))?
            .check(&format!("nft -f -:\n{script}"))?;
        Ok(())
    }
}
