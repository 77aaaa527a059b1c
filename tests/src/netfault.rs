//! Network faults between brokers that listen on their own loopback
//! addresses (`Cluster::start_on_own_ips`): iptables `DROP` rules per
//! (source, destination) pair, in a chain of this process's own, so
//! healing flushes exactly our rules and nothing else on the machine.
//!
//! One rule cuts one direction at the IP level. TCP needs both directions,
//! so a one-way cut still breaks connections between the pair either way
//! (as in Jepsen's one-way partitions); what stays asymmetric is who can
//! open a connection and which packets already sent get through.
//!
//! Needs root and `iptables`; [`NetFaults::new`] says why not otherwise, and
//! callers skip network faults with that message.

use std::process::Command;

use anyhow::Context;
use anyhow::bail;

/// Our iptables chain, jumped to from `INPUT` (loopback packets pass
/// `INPUT` on delivery). Removed on drop.
#[derive(Debug)]
pub struct NetFaults {
    chain: String,
    /// Rules in force: (source ip, destination ip).
    cuts: Vec<(String, String)>,
}

fn iptables(args: &[&str]) -> anyhow::Result<()> {
    // -w: wait for the xtables lock instead of failing when another
    // iptables command (another test run) holds it.
    let out = Command::new("iptables").arg("-w").args(args).output().context("run iptables")?;
    if !out.status.success() {
        bail!("iptables {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

impl NetFaults {
    /// Creates the chain, or says why network faults cannot run here.
    pub fn new() -> anyhow::Result<Self> {
        // iptables itself reports a missing privilege or binary.
        remove_stale_chains();
        let chain = format!("FLCHAOS-{}", std::process::id());
        iptables(&["-N", &chain]).context("network faults need root and iptables")?;
        if let Err(e) = iptables(&["-I", "INPUT", "-j", &chain]) {
            let _ = iptables(&["-X", &chain]);
            return Err(e);
        }
        Ok(NetFaults { chain, cuts: Vec::new() })
    }

    /// Drops every packet from `from` to `to` (one direction).
    pub fn cut(&mut self, from: &str, to: &str) -> anyhow::Result<()> {
        iptables(&["-A", &self.chain, "-s", from, "-d", to, "-j", "DROP"])?;
        self.cuts.push((from.to_string(), to.to_string()));
        Ok(())
    }

    /// Cuts both directions between every address of `a` and every one of `b`.
    pub fn partition(&mut self, a: &[String], b: &[String]) -> anyhow::Result<()> {
        for x in a {
            for y in b {
                self.cut(x, y)?;
                self.cut(y, x)?;
            }
        }
        Ok(())
    }

    /// The cuts in force.
    pub fn cuts(&self) -> &[(String, String)] {
        &self.cuts
    }

    /// Removes every cut.
    pub fn heal(&mut self) -> anyhow::Result<()> {
        iptables(&["-F", &self.chain])?;
        self.cuts.clear();
        Ok(())
    }
}

/// Removes the chains of runs whose process is gone (killed before their
/// `Drop` ran), so their rules cannot cut a later run's addresses.
fn remove_stale_chains() {
    let Ok(out) = Command::new("iptables").args(["-w", "-S"]).output() else { return };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(chain) = line.strip_prefix("-N ").filter(|c| c.starts_with("FLCHAOS-")) else { continue };
        let pid = chain.trim_start_matches("FLCHAOS-");
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let _ = iptables(&["-F", chain]);
        let _ = iptables(&["-D", "INPUT", "-j", chain]);
        let _ = iptables(&["-X", chain]);
    }
}

impl Drop for NetFaults {
    fn drop(&mut self) {
        let _ = iptables(&["-F", &self.chain]);
        let _ = iptables(&["-D", "INPUT", "-j", &self.chain]);
        let _ = iptables(&["-X", &self.chain]);
    }
}
