//! Several "hosts" on one machine: one Linux network namespace per host,
//! each with its own address on a shared bridge, so that what crosses the
//! network between nodes crosses a real (virtual) network. Faults are made
//! with iptables inside the namespaces: blocked UDP, random packet loss
//! (the `statistic` match), partitions. Everything is removed on drop.
//!
//! A host can sit behind a NAT router instead (see [`NatKind`]): the router
//! is a namespace of its own with one end on the bridge (the address the
//! other hosts see) and one on the host's private network, and it
//! translates with iptables MASQUERADE and drops what nobody inside asked
//! for, as home and office routers do.
//!
//! A router can also run a UPnP gateway (miniupnpd, [`Placement::BehindUpnp`])
//! that maps ports for the host behind it, as many home routers do.
//!
//! Needs root, `ip` (iproute2) and `iptables`; UPnP gateways also need
//! `miniupnpd` (its nftables build) and `nft`.

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
    /// The host's own address: on the bridge, or on its private network
    /// behind its router.
    pub addr: Ipv4Addr,
    /// Its NAT router, if it has one.
    pub router: Option<Router>,
}

#[derive(Debug)]
pub struct Router {
    pub ns: String,
    /// The router's address on the bridge: what other hosts see the host at.
    pub public_addr: Ipv4Addr,
    pub kind: NatKind,
    /// The UPnP gateway it runs, if any.
    gateway: Option<Gateway>,
}

/// A miniupnpd process in a router's namespace, and its log.
#[derive(Debug)]
struct Gateway {
    process: std::process::Child,
    log: std::path::PathBuf,
    pid_file: std::path::PathBuf,
}

/// How a NAT router maps a host's outgoing flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatKind {
    /// Endpoint-independent mapping (a socket keeps its port, whoever it
    /// talks to: Linux MASQUERADE preserves source ports) with
    /// address-and-port-dependent filtering (only replies to flows the
    /// host started get in): a "port-restricted cone". Hole punching works
    /// through it.
    PortRestricted,
    /// A new random port for every flow (`MASQUERADE --random-fully`), so
    /// the port a peer sees is of no use to anyone else; same filtering.
    /// Hole punching fails; peers stay relayed.
    Symmetric,
}

/// Where a host sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// On the bridge, reachable by every other host.
    Public,
    Behind(NatKind),
    /// Behind a NAT router that also runs a UPnP gateway. libp2p's UPnP
    /// client and miniupnpd both refuse to map ports on a gateway whose
    /// own address is private (it would be behind another NAT), so this
    /// router's bridge side also has a global address, 11.b.c.i+1 beside
    /// 10.b.c.i+1, which it uses for everything it sends to the bridge.
    /// That address is routed only inside the testbed's namespaces, never
    /// in the root namespace: nothing else on the machine is affected.
    BehindUpnp(NatKind),
}

impl Placement {
    /// The NAT a host sits behind, if any.
    pub fn nat(&self) -> Option<NatKind> {
        match self {
            Placement::Public => None,
            Placement::Behind(kind) | Placement::BehindUpnp(kind) => Some(*kind),
        }
    }
}

/// The demo's hosts: all public, or (`nat`) the first public and the rest
/// behind NAT, alternately port-restricted and symmetric.
pub fn demo_placements(n: usize, nat: bool) -> Vec<Placement> {
    (0..n)
        .map(|i| match (nat, i) {
            (false, _) | (true, 0) => Placement::Public,
            (true, i) if i % 2 == 1 => Placement::Behind(NatKind::PortRestricted),
            (true, _) => Placement::Behind(NatKind::Symmetric),
        })
        .collect()
}

/// The API port of nodes on hosts; the only port a NAT router lets the
/// test driver (the bridge's own address) reach inside.
pub const API_PORT: u16 = 7700;

#[derive(Debug)]
pub struct Hosts {
    bridge: String,
    bridge_addr: Ipv4Addr,
    /// Host-side ends of the veth pairs (gone with their namespace, unless
    /// creation failed half-way).
    veths: Vec<String>,
    /// Routes added to the root namespace (to hosts behind NAT).
    routes: Vec<String>,
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
    missing(&["ip", "iptables"])
}

/// Why a UPnP gateway cannot be run here, if it cannot.
pub fn upnp_unavailable() -> Option<String> {
    unavailable()
        .or_else(|| missing(&["miniupnpd", "nft"]))
        .or_else(|| {
            // The gateway's mappings go into nftables chains made for it.
            let version = Command::new("miniupnpd").arg("--version").output().ok()?;
            let said = String::from_utf8_lossy(&version.stdout).to_string()
                + &String::from_utf8_lossy(&version.stderr);
            (!said.contains("nftables")).then(|| {
                format!(
                    "miniupnpd is not the nftables build (miniupnpd-nftables): {}",
                    said.trim()
                )
            })
        })
}

fn missing(tools: &[&str]) -> Option<String> {
    tools
        .iter()
        .find(|tool| Command::new(tool).arg("--version").output().is_err())
        .map(|tool| format!("`{tool}` is not installed"))
}

impl Hosts {
    /// Creates `n` hosts on the bridge.
    pub fn create(n: usize) -> Result<Hosts> {
        Hosts::create_placed(&vec![Placement::Public; n])
    }

    /// Creates one host per placement. Names and subnets include this
    /// process id, so concurrent test processes do not collide; leftovers
    /// of dead processes are removed first.
    pub fn create_placed(placements: &[Placement]) -> Result<Hosts> {
        let n = placements.len();
        anyhow::ensure!((1..=200).contains(&n), "between 1 and 200 hosts");
        anyhow::ensure!(
            placements.iter().filter(|p| p.nat().is_some()).count() <= 15,
            "at most 15 hosts behind NAT"
        );
        let upnp = placements
            .iter()
            .any(|p| matches!(p, Placement::BehindUpnp(_)));
        if let Some(why) = if upnp {
            upnp_unavailable()
        } else {
            unavailable()
        } {
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
            routes: Vec::new(),
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
        for (i, placement) in placements.iter().enumerate() {
            let ns = format!("am{tag}h{i}");
            // The address on the bridge: the host's own, or its router's.
            let bridge_side = Ipv4Addr::new(10, b, c, i as u8 + 1);
            let (outer, inner) = (format!("amv{tag}o{i}"), format!("amv{tag}i{i}"));
            anyhow::ensure!(outer.len() <= 15, "interface name {outer} too long");
            run(&["ip", "netns", "add", &ns])?;
            let exec = ["ip", "netns", "exec", ns.as_str()];
            let in_ns = |args: &[&str]| run(&[&exec[..], args].concat());
            match placement {
                Placement::Public => {
                    hosts.hosts.push(Host {
                        ns: ns.clone(),
                        addr: bridge_side,
                        router: None,
                    });
                    run(&[
                        "ip", "link", "add", &outer, "type", "veth", "peer", "name", &inner,
                    ])?;
                    run(&["ip", "link", "set", &inner, "netns", &ns])?;
                    run(&["ip", "link", "set", &outer, "master", &br])?;
                    run(&["ip", "link", "set", &outer, "up"])?;
                    in_ns(&[
                        "ip",
                        "addr",
                        "add",
                        &format!("{bridge_side}/24"),
                        "dev",
                        &inner,
                    ])?;
                    in_ns(&["ip", "link", "set", &inner, "up"])?;
                    if upnp {
                        add_global_route(in_ns, (b, c), &inner)?;
                    }
                }
                Placement::Behind(kind) => {
                    hosts.add_behind_nat(i, &tag, (b, c), *kind, (false, upnp))?;
                }
                Placement::BehindUpnp(kind) => {
                    hosts.add_behind_nat(i, &tag, (b, c), *kind, (true, upnp))?;
                }
            }
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

    /// Puts host `i` (its namespace already made) behind a NAT router:
    ///
    /// ```text
    /// bridge 10.b.c.0/24 ── router (10.b.c.i+1 | 172.x.c.16k+1) ── host 172.x.c.16k+2
    /// ```
    ///
    /// Private networks are /28s of one /24 per process. The test driver
    /// (the bridge's address, in the root namespace) gets a route to the
    /// host and may open its API port; nothing else gets in unasked.
    ///
    /// With `gateway`, the router also runs a UPnP gateway on its global
    /// address (see [`Placement::BehindUpnp`]); with `global_routes`
    /// (some router of the testbed does), it routes to those addresses.
    fn add_behind_nat(
        &mut self,
        i: usize,
        tag: &str,
        (b, c): (u8, u8),
        kind: NatKind,
        (gateway, global_routes): (bool, bool),
    ) -> Result<Ipv4Addr> {
        let behind = self.hosts.iter().filter(|h| h.router.is_some()).count() as u8;
        let ns = format!("am{tag}h{i}");
        let router = format!("am{tag}r{i}");
        let bridge_side = Ipv4Addr::new(10, b, c, i as u8 + 1);
        let public_addr = if gateway {
            Ipv4Addr::new(11, b, c, i as u8 + 1)
        } else {
            bridge_side
        };
        let lan_base = Ipv4Addr::new(172, 16 + b % 16, c, behind * 16);
        let router_lan = Ipv4Addr::from(u32::from(lan_base) + 1);
        let addr = Ipv4Addr::from(u32::from(lan_base) + 2);
        let (outer, wan) = (format!("amv{tag}o{i}"), format!("amv{tag}w{i}"));
        let (lan, inner) = (format!("amv{tag}l{i}"), format!("amv{tag}i{i}"));
        run(&["ip", "netns", "add", &router])?;
        self.hosts.push(Host {
            ns: ns.clone(),
            addr,
            router: Some(Router {
                ns: router.clone(),
                public_addr,
                kind,
                gateway: None,
            }),
        });
        let in_router =
            |args: &[&str]| run(&[&["ip", "netns", "exec", router.as_str()][..], args].concat());
        let in_host =
            |args: &[&str]| run(&[&["ip", "netns", "exec", ns.as_str()][..], args].concat());
        // Router to bridge.
        run(&[
            "ip", "link", "add", &outer, "type", "veth", "peer", "name", &wan,
        ])?;
        run(&["ip", "link", "set", &wan, "netns", &router])?;
        run(&["ip", "link", "set", &outer, "master", &self.bridge])?;
        run(&["ip", "link", "set", &outer, "up"])?;
        in_router(&[
            "ip",
            "addr",
            "add",
            &format!("{bridge_side}/24"),
            "dev",
            &wan,
        ])?;
        in_router(&["ip", "link", "set", &wan, "up"])?;
        if global_routes {
            add_global_route(in_router, (b, c), &wan)?;
        }
        if gateway {
            in_router(&[
                "ip",
                "addr",
                "add",
                &format!("{public_addr}/32"),
                "dev",
                &wan,
            ])?;
        }
        // Router to host.
        run(&[
            "ip", "link", "add", &lan, "type", "veth", "peer", "name", &inner,
        ])?;
        run(&["ip", "link", "set", &lan, "netns", &router])?;
        run(&["ip", "link", "set", &inner, "netns", &ns])?;
        in_router(&[
            "ip",
            "addr",
            "add",
            &format!("{router_lan}/28"),
            "dev",
            &lan,
        ])?;
        in_router(&["ip", "link", "set", &lan, "up"])?;
        in_router(&["ip", "link", "set", "lo", "up"])?;
        in_host(&["ip", "addr", "add", &format!("{addr}/28"), "dev", &inner])?;
        in_host(&["ip", "link", "set", &inner, "up"])?;
        in_host(&[
            "ip",
            "route",
            "add",
            "default",
            "via",
            &router_lan.to_string(),
        ])?;
        // Translation and filtering.
        // Forwarding on, for the router's namespace only (`ip netns exec`
        // shows each namespace its own /proc/sys/net); no sysctl binary
        // needed.
        in_router(&["sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"])?;
        // A gateway's flows leave from its global address (MASQUERADE
        // would pick the interface's address on the peer's subnet, 10.x).
        let source = public_addr.to_string();
        let mut masquerade = vec![
            "iptables",
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-o",
            &wan,
            "-j",
        ];
        if gateway {
            masquerade.extend(["SNAT", "--to-source", &source]);
        } else {
            masquerade.push("MASQUERADE");
        }
        if kind == NatKind::Symmetric {
            masquerade.push("--random-fully");
        }
        in_router(&masquerade)?;
        // What belongs to a flow already let through (conntrack's state).
        let accept_from_wan = |chain: &str, state: &str| {
            in_router(&[
                "iptables",
                "-A",
                chain,
                "-i",
                &wan,
                "-m",
                "conntrack",
                "--ctstate",
                state,
                "-j",
                "ACCEPT",
            ])
        };
        accept_from_wan("FORWARD", "ESTABLISHED,RELATED")?;
        let driver = self.bridge_addr.to_string();
        let api_port = API_PORT.to_string();
        in_router(&[
            "iptables", "-A", "FORWARD", "-i", &wan, "-s", &driver, "-p", "tcp", "--dport",
            &api_port, "-j", "ACCEPT",
        ])?;
        if gateway {
            // What the gateway's mappings translate (DNAT) is let in; the
            // mappings themselves are miniupnpd's nftables rules.
            accept_from_wan("FORWARD", "DNAT")?;
        }
        in_router(&["iptables", "-A", "FORWARD", "-i", &wan, "-j", "DROP"])?;
        accept_from_wan("INPUT", "ESTABLISHED,RELATED")?;
        in_router(&["iptables", "-A", "INPUT", "-i", &wan, "-j", "DROP"])?;
        // The driver reaches the host's API through the router.
        run(&[
            "ip",
            "route",
            "add",
            &format!("{lan_base}/28"),
            "via",
            &bridge_side.to_string(),
        ])?;
        self.routes.push(format!("{lan_base}/28"));
        if gateway {
            let started = start_gateway(&router, &wan, &lan, public_addr, lan_base)?;
            if let Some(r) = self.hosts.last_mut().and_then(|h| h.router.as_mut()) {
                r.gateway = Some(started);
            }
        }
        Ok(addr)
    }

    /// The address other hosts see host `i` at: its own, or its router's.
    pub fn public_addr(&self, i: usize) -> Ipv4Addr {
        self.hosts[i]
            .router
            .as_ref()
            .map_or(self.hosts[i].addr, |r| r.public_addr)
    }

    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    pub fn addr(&self, i: usize) -> Ipv4Addr {
        self.hosts[i].addr
    }

    /// `--external-address` for the node on public host `i`: its QUIC and
    /// TCP addresses on the node's port, or (`tcp_only`) TCP alone. A node
    /// that only ever receives connections has nobody to ask for a
    /// dial-back (AutoNAT asks over connections it dialled itself), so a
    /// bootstrap host's operator names its address.
    pub fn external_address_args(&self, i: usize, tcp_only: bool) -> Vec<String> {
        let a = self.addr(i);
        let addrs = if tcp_only {
            format!("/ip4/{a}/tcp/4001")
        } else {
            format!("/ip4/{a}/udp/4001/quic-v1,/ip4/{a}/tcp/4001")
        };
        vec!["--external-address".into(), addrs]
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

/// Starts miniupnpd in `router`: UPnP IGD for the hosts on `lan` (which
/// may map ports of their own address only, 1024 and up), mapping on
/// `wan` at `public_addr`. Its nftables chains (where it puts the
/// mappings) are made first; returns once it answers.
fn start_gateway(
    router: &str,
    wan: &str,
    lan: &str,
    public_addr: Ipv4Addr,
    lan_base: Ipv4Addr,
) -> Result<Gateway> {
    let nft = |args: &[&str]| run(&[&["ip", "netns", "exec", router, "nft"][..], args].concat());
    nft(&["add", "table", "inet", "filter"])?;
    for (chain, hook) in [
        ("forward", Some("{ type filter hook forward priority 0 ; }")),
        ("miniupnpd", None),
        (
            "prerouting",
            Some("{ type nat hook prerouting priority -100 ; }"),
        ),
        ("prerouting_miniupnpd", None),
        (
            "postrouting",
            Some("{ type nat hook postrouting priority 100 ; }"),
        ),
        ("postrouting_miniupnpd", None),
    ] {
        let mut args = vec!["add", "chain", "inet", "filter", chain];
        args.extend(hook);
        nft(&args)?;
    }
    for (from, to) in [
        ("forward", "miniupnpd"),
        ("prerouting", "prerouting_miniupnpd"),
        ("postrouting", "postrouting_miniupnpd"),
    ] {
        nft(&["add", "rule", "inet", "filter", from, "jump", to])?;
    }
    let (log, pid_file) = gateway_files(router);
    let mut command = Command::new("ip");
    // `ip netns exec` becomes miniupnpd: it dies with this process.
    // SAFETY: prctl is async-signal-safe and touches no memory of ours.
    unsafe {
        use std::os::unix::process::CommandExt;
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let process = command
        .args([
            "netns",
            "exec",
            router,
            "miniupnpd",
            "-d",
            "-f",
            "/dev/null",
        ])
        .args(["-i", wan, "-o", &public_addr.to_string(), "-a", lan])
        .args(["-S", "-U", "-P"])
        .arg(&pid_file)
        .args(["-A", &format!("allow 1024-65535 {lan_base}/28 1024-65535")])
        .args(["-A", "deny 0-65535 0.0.0.0/0 0-65535"])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).context("creating miniupnpd's log")?)
        .spawn()
        .context("cannot start miniupnpd")?;
    let mut gateway = Gateway {
        process,
        log,
        pid_file,
    };
    // Nodes search for the gateway once, at start-up: it must be up first.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let said = std::fs::read_to_string(&gateway.log).unwrap_or_default();
        if said.contains("HTTP listening") {
            return Ok(gateway);
        }
        if gateway.process.try_wait()?.is_some() || std::time::Instant::now() > deadline {
            bail!("miniupnpd did not start in {router}:\n{said}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// miniupnpd's log and pid file for `router`.
fn gateway_files(router: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let files = std::env::temp_dir().join(format!("{router}-miniupnpd"));
    (files.with_extension("log"), files.with_extension("pid"))
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
        let _ = std::fs::remove_file(&self.log);
        let _ = std::fs::remove_file(&self.pid_file);
    }
}

/// Routes the testbed's global addresses (UPnP routers' bridge side,
/// 11.b.c.0/24) over the bridge-side interface `dev` of a namespace, with
/// `in_ns` running commands there.
fn add_global_route(
    in_ns: impl Fn(&[&str]) -> Result<()>,
    (b, c): (u8, u8),
    dev: &str,
) -> Result<()> {
    in_ns(&[
        "ip",
        "route",
        "add",
        &format!("11.{b}.{c}.0/24"),
        "dev",
        dev,
    ])
}
impl Drop for Hosts {
    fn drop(&mut self) {
        for route in &self.routes {
            let _ = run(&["ip", "route", "del", route]);
        }
        for host in &mut self.hosts {
            let _ = run(&["ip", "netns", "del", &host.ns]);
            if let Some(router) = &mut host.router {
                // Stopped before its namespace goes.
                drop(router.gateway.take());
                let _ = run(&["ip", "netns", "del", &router.ns]);
            }
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
            // Hosts (`am<tag>h<i>`) and routers (`am<tag>r<i>`); tags are hex.
            if name.starts_with("am")
                && (name.contains('h') || name.contains('r'))
                && !owner_alive(name, "am")
            {
                // A UPnP gateway can outlive its owner (if the death
                // signal was missed): stop it, and remove its files.
                if let Ok(pids) = Command::new("ip").args(["netns", "pids", name]).output() {
                    for pid in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
                        if let Ok(pid) = pid.parse::<libc::pid_t>() {
                            // SAFETY: kill has no memory preconditions.
                            unsafe { libc::kill(pid, libc::SIGKILL) };
                        }
                    }
                }
                let (log, pid_file) = gateway_files(name);
                let _ = std::fs::remove_file(log);
                let _ = std::fs::remove_file(pid_file);
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
