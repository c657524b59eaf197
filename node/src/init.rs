//! `agentmesh init`: sets up a host. Creates the node's identity, writes a
//! commented configuration file for a public host or one behind NAT, checks
//! it as `run` would, and prints the peer id and, for a public host, the
//! bootstrap addresses other hosts start with.

use crate::config::{Config, Settings};
use crate::identity;
use anyhow::{bail, Context, Result};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

#[derive(clap::Args, Debug)]
pub struct InitArgs {
    /// Directory for the node's identity and data.
    #[arg(long, default_value = "/var/lib/agentmesh")]
    pub data_dir: PathBuf,
    /// Network id (the same on every host of the mesh).
    #[arg(long, default_value = "agentmesh")]
    pub network: String,
    /// The address (IP or DNS name) other hosts reach this host on: the
    /// host is public, a bootstrap and relay candidate. Leave it out for a
    /// host behind NAT.
    #[arg(long)]
    pub public_address: Option<String>,
    /// Port for QUIC (UDP) and TCP.
    #[arg(long, default_value_t = 4001)]
    pub port: u16,
    /// Bootstrap peers (full multiaddrs ending in `/p2p/<peer id>`, as
    /// `init` printed on the bootstrap host).
    #[arg(long, value_delimiter = ',')]
    pub bootstrap: Vec<String>,
    /// Where to write the configuration (default: `<data dir>/agentmesh.toml`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Replace an existing configuration file.
    #[arg(long)]
    pub force: bool,
}

/// `/ip4/..`, `/ip6/..` or `/dns/..` for a host address.
fn host_protocol(address: &str) -> Result<String> {
    match address.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => Ok(format!("/ip4/{ip}")),
        Ok(IpAddr::V6(ip)) => Ok(format!("/ip6/{ip}")),
        Err(_) => {
            let valid = !address.is_empty()
                && address.len() <= 253
                && address.split('.').all(|l| {
                    !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                });
            if !valid {
                bail!("--public-address {address:?} is neither an IP address nor a DNS name");
            }
            Ok(format!("/dns/{address}"))
        }
    }
}

fn toml_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| format!("{s:?}")).collect();
    format!("[{}]", quoted.join(", "))
}

/// The configuration file's text.
pub fn config_text(args: &InitArgs) -> Result<String> {
    // `run` resolves a relative path against its own working directory
    // (`/` under systemd): the file names the directory absolutely.
    let data_dir = std::path::absolute(&args.data_dir)
        .with_context(|| format!("cannot resolve {}", args.data_dir.display()))?;
    let data_dir = data_dir
        .to_str()
        .with_context(|| format!("{} is not valid UTF-8", data_dir.display()))?
        .to_string();
    let port = args.port;
    // Listen on the family of the public address too (IPv4 always).
    let mut listen = vec![
        format!("/ip4/0.0.0.0/udp/{port}/quic-v1"),
        format!("/ip4/0.0.0.0/tcp/{port}"),
    ];
    if args
        .public_address
        .as_deref()
        .is_some_and(|a| a.parse::<std::net::Ipv6Addr>().is_ok())
    {
        listen.push(format!("/ip6/::/udp/{port}/quic-v1"));
        listen.push(format!("/ip6/::/tcp/{port}"));
    }
    let external = match &args.public_address {
        Some(a) => {
            let host = host_protocol(a)?;
            vec![
                format!("{host}/udp/{port}/quic-v1"),
                format!("{host}/tcp/{port}"),
            ]
        }
        None => Vec::new(),
    };
    let (role, reachability) = if args.public_address.is_some() {
        (
            "a public host: other hosts dial it directly, it relays for hosts behind NAT",
            "public",
        )
    } else {
        (
            "a host behind NAT: it learns that it is not reachable, reserves a slot on a \
             public member and is reached through it, or directly where hole punching works",
            "auto",
        )
    };
    Ok(format!(
        r#"# agentmesh node configuration, written by `agentmesh init`.
# This host is {role}.
# Every setting, with its default, flag and variable: docs/configuration-reference.md
# (or `agentmesh config reference`). Check this file with
# `agentmesh config check --config <this file>`.

[node]
# The same network id on every host of the mesh.
network = {network:?}
data_dir = {data_dir:?}

[network]
# Open UDP {port} and TCP {port} in the host's firewall.
listen = {listen}
# Where other hosts reach this one (announced to peers). Public hosts name
# their address here; hosts behind NAT leave it empty.
external_addresses = {external}
# Peers to join through; one reachable one is enough (peers found later
# are remembered for restarts).
bootstrap = {bootstrap}

[nat]
# "auto" learns it from peers' dial-backs; "public" for a host with a
# public address (a host that only receives connections has nobody to ask).
reachability = "{reachability}"
# Relays to use while not reachable, besides members that offer relaying.
relays = []
# Offer relaying to hosts behind NAT while this host is public.
relay_service = true

[api]
# The agent API stays on loopback; agents on this host use it with the
# token in <data_dir>/api-token.
listen = "127.0.0.1:7700"
"#,
        network = args.network,
        data_dir = data_dir,
        external = toml_list(&external),
        listen = toml_list(&listen),
        bootstrap = toml_list(&args.bootstrap),
    ))
}

/// Writes the file (refusing to replace one unless forced), creates the
/// identity, and returns what to print.
pub fn init(args: &InitArgs) -> Result<String> {
    let text = config_text(args)?;
    // The file must be one `run` takes.
    let parsed: Config = toml::from_str(&text).context("the generated configuration")?;
    Settings::from_config(&parsed)?;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| args.data_dir.join("agentmesh.toml"));
    if out.exists() && !args.force {
        bail!("{} exists; pass --force to replace it", out.display());
    }
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create {}", args.data_dir.display()))?;
    let key = identity::load_or_create(&identity::key_path(&args.data_dir))?;
    let peer_id = identity::libp2p_keypair(&key)?.public().to_peer_id();
    write_file(&out, &text)?;
    let mut report = format!(
        "peer id     {peer_id}\nconfig      {}\nstart with  agentmesh run --config {}\n",
        out.display(),
        out.display()
    );
    for addr in &parsed.network.external_addresses {
        report.push_str(&format!("bootstrap   {addr}/p2p/{peer_id}\n"));
    }
    if parsed.network.external_addresses.is_empty() && parsed.network.bootstrap.is_empty() {
        report.push_str(
            "note        no bootstrap peers: add one with --bootstrap (as `init` printed on a \
             public host), or edit network.bootstrap\n",
        );
    }
    Ok(report)
}

/// Writes to a temporary file beside `path`, then renames it over: a crash
/// leaves the old file or the new one, never half of one.
fn write_file(path: &Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let tmp = path.with_extension("toml.tmp");
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(dir: &Path) -> InitArgs {
        InitArgs {
            data_dir: dir.join("data"),
            network: "fleet".into(),
            public_address: None,
            port: 4001,
            bootstrap: vec![],
            out: None,
            force: false,
        }
    }

    #[test]
    fn a_public_host_gets_its_addresses_and_prints_its_bootstrap_addresses() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = args(dir.path());
        a.public_address = Some("203.0.113.7".into());
        let report = init(&a).unwrap();
        let text = std::fs::read_to_string(dir.path().join("data/agentmesh.toml")).unwrap();
        let c: Config = toml::from_str(&text).unwrap();
        assert_eq!(c.node.network, "fleet");
        assert_eq!(
            c.network.external_addresses,
            [
                "/ip4/203.0.113.7/udp/4001/quic-v1",
                "/ip4/203.0.113.7/tcp/4001"
            ]
        );
        assert_eq!(c.nat.reachability, crate::config::ReachabilityMode::Public);
        assert!(report.contains("bootstrap   /ip4/203.0.113.7/udp/4001/quic-v1/p2p/12D3KooW"));
        // Not replaced without --force; the identity stays the same.
        let err = init(&a).unwrap_err().to_string();
        assert!(err.contains("--force"), "{err}");
        a.force = true;
        let again = init(&a).unwrap();
        assert_eq!(report.lines().next(), again.lines().next());
    }

    #[test]
    fn a_host_behind_nat_learns_its_reachability_and_joins_through_a_bootstrap_peer() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = args(dir.path());
        a.bootstrap =
            vec!["/dns/boot.example.org/udp/4001/quic-v1/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN".into()];
        let report = init(&a).unwrap();
        let c: Config = toml::from_str(
            &std::fs::read_to_string(dir.path().join("data/agentmesh.toml")).unwrap(),
        )
        .unwrap();
        assert!(c.network.external_addresses.is_empty());
        assert_eq!(c.network.bootstrap, a.bootstrap);
        assert_eq!(c.nat.reachability, crate::config::ReachabilityMode::Auto);
        assert!(!report.contains("bootstrap   "));
    }

    #[test]
    fn an_ipv6_public_host_listens_on_ipv6_and_names_its_data_dir_absolutely() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = args(dir.path());
        a.public_address = Some("2001:db8::7".into());
        init(&a).unwrap();
        let c: Config = toml::from_str(
            &std::fs::read_to_string(dir.path().join("data/agentmesh.toml")).unwrap(),
        )
        .unwrap();
        assert!(c
            .network
            .listen
            .iter()
            .any(|l| l == "/ip6/::/udp/4001/quic-v1"));
        assert_eq!(
            c.network.external_addresses[0],
            "/ip6/2001:db8::7/udp/4001/quic-v1"
        );
        assert!(c.node.data_dir.is_absolute());
    }

    #[test]
    fn bad_input_is_refused_with_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = args(dir.path());
        a.public_address = Some("not an address!".into());
        assert!(init(&a)
            .unwrap_err()
            .to_string()
            .contains("--public-address"));
        let mut a = args(dir.path());
        a.bootstrap = vec!["/ip4/1.2.3.4/tcp/1".into()];
        assert!(format!("{:#}", init(&a).unwrap_err()).contains("network.bootstrap"));
        // Nothing was written for either.
        assert!(!dir.path().join("data/agentmesh.toml").exists());
    }
}
