//! Several "hosts" on one machine: one Linux network namespace per host,
//! each with its own address on a shared bridge, so that what crosses the
//! network between nodes crosses a real (virtual) network. Faults are made
//! with iptables inside the namespaces: blocked UDP, random packet loss
//! (the `statistic` match), partitions. Everything is removed on drop.
//!
//! Needs root, `ip` (iproute2) and `iptables`.

use anyhow::{bail, Context, Result};
use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// iptables chain (in every namespace) holding blocks and partitions;
/// jumped to from INPUT and OUTPUT.
const FAULTS: &str = "AM-FAULTS";
/// iptables chain holding packet loss; jumped to from INPUT only, so each
/// packet passes one loss rule on its way.
const LOSS: &str = "AM-LOSS";

#[derive(Debug)]
pub struct Host {
    pub ns: String,
    pub addr: Ipv4Addr,
}

#[derive(Debug)]
pub struct Hosts {
    bridge: String,
    bridge_addr: Ipv4Addr,
    /// Host-side ends of the veth pairs (gone with their namespace, unless
    /// creation failed half-way).
    veths: Vec<String>,
    pub hosts: Vec<Host>,
}

fn run(args: &[&str]) -> Result<()> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("cannot run {}", args[0]))?;
    if !out.status.success() {
        bail!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Why namespaced hosts cannot be used here, if they cannot.
pub fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("network namespaces need root".into());
    }
    for tool in ["ip", "iptables"] {
        if Command::new(tool).arg("--version").output().is_err() {
            return Some(format!("`{tool}` is not installed"));
        }
    }
    None
}

impl Hosts {
    /// Creates `n` hosts. Names and the subnet include this process id, so
    /// concurrent test processes do not collide; leftovers of dead
    /// processes are removed first.
    pub fn create(n: usize) -> Result<Hosts> {
        anyhow::ensure!((1..=200).contains(&n), "between 1 and 200 hosts");
        if let Some(why) = unavailable() {
            bail!("cannot create hosts: {why}");
        }
        remove_stale();
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let seq = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        // Fixed width (interface names are limited to 15 bytes), and the
        // owner's pid can be read back by `remove_stale`.
        let tag = format!("{pid:06x}{:x}", seq % 16);
        // 10.<128..255>.<0..255>.0/24 picked from pid and sequence.
        let (b, c) = (
            128 + (pid % 128) as u8,
            ((pid / 128) as u8).wrapping_add(seq as u8 * 17),
        );
        let mut hosts = Hosts {
            bridge: format!("amb{tag}"),
            bridge_addr: Ipv4Addr::new(10, b, c, 254),
            veths: Vec::new(),
            hosts: Vec::new(),
        };
        anyhow::ensure!(
            hosts.bridge.len() <= 15,
            "interface name {} too long",
            hosts.bridge
        );
        let br = hosts.bridge.clone();
        run(&["ip", "link", "add", &br, "type", "bridge"])?;
        run(&[
            "ip",
            "addr",
            "add",
            &format!("{}/24", hosts.bridge_addr),
            "dev",
            &br,
        ])?;
        run(&["ip", "link", "set", &br, "up"])?;
        // Bridged traffic may pass the host's FORWARD chain.
        run(&[
            "iptables", "-I", "FORWARD", "-i", &br, "-o", &br, "-j", "ACCEPT",
        ])?;
        for i in 0..n {
            let ns = format!("am{tag}h{i}");
            let addr = Ipv4Addr::new(10, b, c, i as u8 + 1);
            let (outer, inner) = (format!("amv{tag}o{i}"), format!("amv{tag}i{i}"));
            anyhow::ensure!(outer.len() <= 15, "interface name {outer} too long");
            run(&["ip", "netns", "add", &ns])?;
            hosts.hosts.push(Host {
                ns: ns.clone(),
                addr,
            });
            run(&[
                "ip", "link", "add", &outer, "type", "veth", "peer", "name", &inner,
            ])?;
            run(&["ip", "link", "set", &inner, "netns", &ns])?;
            run(&["ip", "link", "set", &outer, "master", &br])?;
            run(&["ip", "link", "set", &outer, "up"])?;
            let exec = ["ip", "netns", "exec", ns.as_str()];
            let in_ns = |args: &[&str]| run(&[&exec[..], args].concat());
            in_ns(&["ip", "addr", "add", &format!("{addr}/24"), "dev", &inner])?;
            in_ns(&["ip", "link", "set", &inner, "up"])?;
            in_ns(&["ip", "link", "set", "lo", "up"])?;
            in_ns(&["iptables", "-N", FAULTS])?;
            in_ns(&["iptables", "-N", LOSS])?;
            in_ns(&["iptables", "-A", "INPUT", "-j", FAULTS])?;
            in_ns(&["iptables", "-A", "OUTPUT", "-j", FAULTS])?;
            in_ns(&["iptables", "-A", "INPUT", "-j", LOSS])?;
        }
        Ok(hosts)
    }

    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    pub fn addr(&self, i: usize) -> Ipv4Addr {
        self.hosts[i].addr
    }

    /// Command prefix that runs a program on host `i`.
    pub fn exec_prefix(&self, i: usize) -> Vec<String> {
        vec![
            "ip".into(),
            "netns".into(),
            "exec".into(),
            self.hosts[i].ns.clone(),
        ]
    }

    fn iptables(&self, i: usize, args: &[&str]) -> Result<()> {
        let ns = self.hosts[i].ns.as_str();
        run(&[&["ip", "netns", "exec", ns, "iptables"][..], args].concat())
    }

    /// Drops UDP between hosts `a` and `b` (both directions).
    pub fn block_udp(&self, a: usize, b: usize) -> Result<()> {
        for (x, y) in [(a, b), (b, a)] {
            let peer = self.addr(y).to_string();
            self.iptables(x, &["-A", FAULTS, "-p", "udp", "-s", &peer, "-j", "DROP"])?;
            self.iptables(x, &["-A", FAULTS, "-p", "udp", "-d", &peer, "-j", "DROP"])?;
        }
        Ok(())
    }

    /// Drops all traffic between every host of `left` and every host of `right`.
    pub fn partition(&self, left: &[usize], right: &[usize]) -> Result<()> {
        for &x in left {
            for &y in right {
                for (p, q) in [(x, y), (y, x)] {
                    let peer = self.addr(q).to_string();
                    self.iptables(p, &["-A", FAULTS, "-s", &peer, "-j", "DROP"])?;
                    self.iptables(p, &["-A", FAULTS, "-d", &peer, "-j", "DROP"])?;
                }
            }
        }
        Ok(())
    }

    /// Drops each packet arriving at every host with probability `p`.
    pub fn packet_loss(&self, p: f64) -> Result<()> {
        anyhow::ensure!(
            (0.0..1.0).contains(&p),
            "loss probability {p} not in [0, 1)"
        );
        let p = format!("{p}");
        for i in 0..self.len() {
            self.iptables(i, &["-F", LOSS])?;
            self.iptables(
                i,
                &[
                    "-A",
                    LOSS,
                    "-m",
                    "statistic",
                    "--mode",
                    "random",
                    "--probability",
                    &p,
                    "-j",
                    "DROP",
                ],
            )?;
        }
        Ok(())
    }

    /// Removes every fault: blocks, partitions and loss.
    pub fn heal(&self) -> Result<()> {
        for i in 0..self.len() {
            self.iptables(i, &["-F", FAULTS])?;
            self.iptables(i, &["-F", LOSS])?;
        }
        Ok(())
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for host in &self.hosts {
            let _ = run(&["ip", "netns", "del", &host.ns]);
        }
        for veth in &self.veths {
            // Usually gone already with its namespace.
            let _ = Command::new("ip").args(["link", "del", veth]).output();
        }
        let br = self.bridge.clone();
        let _ = run(&[
            "iptables", "-D", "FORWARD", "-i", &br, "-o", &br, "-j", "ACCEPT",
        ]);
        let _ = run(&["ip", "link", "del", &br]);
    }
}

/// Removes namespaces and bridges left by processes that died without
/// cleaning up (killed with SIGKILL, say).
fn remove_stale() {
    let owner_alive = |name: &str, prefix: &str| -> bool {
        let Some(pid) = name.strip_prefix(prefix).and_then(|rest| rest.get(..6)) else {
            return true;
        };
        match u32::from_str_radix(pid, 16) {
            Ok(pid) => std::path::Path::new(&format!("/proc/{pid}")).exists(),
            Err(_) => true,
        }
    };
    if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            if name.starts_with("am") && name.contains('h') && !owner_alive(name, "am") {
                let _ = run(&["ip", "netns", "del", name]);
            }
        }
    }
    if let Ok(out) = Command::new("ip")
        .args(["-o", "link", "show", "type", "bridge"])
        .output()
    {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split(':').nth(1).unwrap_or("").trim();
            if name.starts_with("amb") && !owner_alive(name, "amb") {
                let _ = run(&[
                    "iptables", "-D", "FORWARD", "-i", name, "-o", name, "-j", "ACCEPT",
                ]);
                let _ = run(&["ip", "link", "del", name]);
            }
        }
    }
}
