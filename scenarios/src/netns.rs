//! Real network partitions: network namespaces made (and removed) by a run, one per
//! `branch-node` process, each wired by a veth pair to a bridge in a hub namespace.
//! Taking a node's link to the bridge down cuts it off from everyone, both ways, as a
//! pulled cable would. Needs root (`ip netns`); nothing leaves the namespaces made here.

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, bail};

/// Runs `ip ARGS`; an error names the command and what `ip` said.
fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("cannot run ip")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Refuses a subnet this process's namespace already has an address in: another run
/// using it (two runs on one bridge subnet would cut each other's routes), or one that
/// was killed before it could remove its namespaces.
fn subnet_free(net: u8) -> anyhow::Result<()> {
    let subnet = format!("10.{net}.0.0/24");
    let out = Command::new("ip")
        .args(["-o", "addr", "show", "to", &subnet])
        .output()
        .context("cannot run ip")?;
    let used = String::from_utf8_lossy(&out.stdout);
    if let Some(line) = used.lines().next() {
        bail!(
            "{subnet} is in use here ({}): another run is using it, or one was killed before \
             it removed its namespaces (`ip netns list`, then `ip netns del NAME`)",
            line.split_whitespace().nth(1).unwrap_or("?")
        );
    }
    Ok(())
}

/// The namespaces of one run: a hub with a bridge, and `count` namespaces on it, the
/// `k`th with address `10.<net>.0.(k+1)`. With `host`, this process's own namespace is
/// on the bridge too (as `10.<net>.0.254`), so in-process tellers reach the nodes.
/// Everything is removed when dropped.
#[derive(Debug)]
pub struct Namespaces {
    prefix: String,
    count: usize,
    net: u8,
    host: bool,
}

impl Namespaces {
    fn hub(&self) -> String {
        format!("{}h", self.prefix)
    }

    /// The name of namespace `k`.
    pub fn node(&self, k: usize) -> String {
        format!("{}n{k}", self.prefix)
    }

    /// The address of namespace `k`.
    pub fn addr(&self, k: usize) -> String {
        format!("10.{}.0.{}", self.net, k + 1)
    }

    /// Makes the hub and `count` namespaces on its bridge, in subnet `10.<net>.0.0/24`
    /// (each run its own `net`: two runs at once must not share one), and with `host`
    /// puts this process's namespace on the bridge too. Half-made namespaces are removed
    /// on error.
    pub fn make(count: usize, net: u8, host: bool) -> anyhow::Result<Namespaces> {
        if host {
            subnet_free(net)?;
        }
        // Unique per run within this process too: tests make several at once.
        static RUNS: AtomicUsize = AtomicUsize::new(0);
        let run = RUNS.fetch_add(1, Ordering::Relaxed);
        let ns = Namespaces {
            prefix: format!("bm{}x{run}", std::process::id()),
            count,
            net,
            host,
        };
        ns.wire()?;
        Ok(ns)
    }

    fn wire(&self) -> anyhow::Result<()> {
        let hub = self.hub();
        ip(&["netns", "add", &hub])?;
        ip(&["-n", &hub, "link", "set", "lo", "up"])?;
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &hub, "link", "set", "br0", "up"])?;
        for k in 0..self.count {
            let node = self.node(k);
            ip(&["netns", "add", &node])?;
            ip(&["-n", &node, "link", "set", "lo", "up"])?;
            self.plug(
                Some(&node),
                &format!("bv{k}"),
                &format!("hv{k}"),
                &self.addr(k),
            )?;
        }
        if self.host {
            let near = format!("{}r", self.prefix);
            self.plug(None, &near, "hvr", &format!("10.{}.0.254", self.net))?;
        }
        Ok(())
    }

    /// A veth pair from namespace `node` (`None`: this process's) to the bridge, the
    /// near end named `near` with address `addr`, the far end `far` on the bridge.
    fn plug(&self, node: Option<&str>, near: &str, far: &str, addr: &str) -> anyhow::Result<()> {
        let hub = self.hub();
        let mut add = vec!["link", "add", near];
        if let Some(n) = node {
            add.extend(["netns", n]);
        }
        add.extend(["type", "veth", "peer", "name", far, "netns", &hub]);
        ip(&add)?;
        let cidr = format!("{addr}/24");
        let near_cmd = |rest: &[&str]| -> anyhow::Result<()> {
            let mut args: Vec<&str> = node.map(|n| vec!["-n", n]).unwrap_or_default();
            args.extend_from_slice(rest);
            ip(&args)
        };
        near_cmd(&["addr", "add", &cidr, "dev", near])?;
        near_cmd(&["link", "set", near, "up"])?;
        ip(&["-n", &hub, "link", "set", far, "master", "br0"])?;
        ip(&["-n", &hub, "link", "set", far, "up"])
    }

    /// Takes namespace `k`'s link to the bridge down (`up`: back up).
    pub fn link(&self, k: usize, up: bool) -> anyhow::Result<()> {
        let far = format!("hv{k}");
        let state = if up { "up" } else { "down" };
        ip(&["-n", &self.hub(), "link", "set", &far, state])
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        let del = |name: &str| {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        };
        for k in 0..self.count {
            del(&self.node(k));
        }
        // Deleting the hub removes its veth ends, and with them their peers here.
        del(&self.hub());
        if self.host {
            let _ = Command::new("ip")
                .args(["link", "del", &format!("{}r", self.prefix)])
                .status();
        }
    }
}
