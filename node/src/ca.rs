//! `agentmesh ca`: the network authority's key and the membership
//! certificates it issues (see `agentmesh_protocol::membership`).

use crate::cli::CaCommand;
use crate::clock::now_ms;
use crate::identity;
use agentmesh_protocol::membership::{self, Certificate, Scope};
use agentmesh_protocol::NodeKey;
use anyhow::{anyhow, bail, Context, Result};
use libp2p::PeerId;

pub fn run(command: CaCommand) -> Result<()> {
    match command {
        CaCommand::Init { key } => {
            identity::ensure_not_exists(&key)?;
            let authority = NodeKey::generate()?;
            identity::write_new(&key, &authority)?;
            println!(
                "# authority key written to {} (mode 0600; keep it off the nodes)",
                key.display()
            );
            println!("# set this on every node of the network (with its `certificate`),");
            println!("# or pass it as --authority / AGENTMESH_AUTHORITY:");
            println!("[membership]");
            println!("authority = \"{}\"", authority.node_id());
            Ok(())
        }
        CaCommand::Issue {
            key,
            peer,
            scopes,
            weight,
            expires,
            out,
        } => {
            let authority = identity::load(&key)?;
            let peer: PeerId = peer
                .parse()
                .map_err(|e| anyhow!("--peer {peer:?} is not a peer id: {e}"))?;
            let holder = identity::node_id_of(&peer).ok_or_else(|| {
                anyhow!("--peer {peer} has no Ed25519 key; agentmesh peer ids always do")
            })?;
            let scopes = Scope::parse_list(&scopes).map_err(|e| anyhow!("--scopes: {e}"))?;
            let validity = humantime::parse_duration(&expires)
                .map_err(|e| anyhow!("--expires {expires:?}: {e} (use e.g. 90d, 12h, 30m)"))?;
            if validity.is_zero() {
                bail!("--expires must be longer than zero");
            }
            let issued_ms = now_ms();
            let expires_ms = issued_ms.saturating_add(validity.as_millis() as u64);
            let bytes = membership::issue_weighted(
                &authority, holder, &scopes, weight, issued_ms, expires_ms,
            )
            .map_err(|e| anyhow!("--weight: {e}"))?;
            let out = out.unwrap_or_else(|| format!("{peer}.cert").into());
            // Certificates are not secret, but only their holder needs them.
            identity::write_private_file(&out, &bytes, "certificate")?;
            let weight = membership::read_unverified(&bytes)?.weight.unwrap_or(0);
            println!(
                "certificate for {peer} written to {} (scopes {}, validator weight {weight}, expires in {})",
                out.display(),
                scopes
                    .iter()
                    .map(Scope::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
                humantime::format_duration(validity)
            );
            Ok(())
        }
        CaCommand::Show { file, authority } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let (certificate, checked) = match authority {
                Some(text) => {
                    let authority = membership::parse_public_key(&text).ok_or_else(|| {
                        anyhow!("--authority is not a public key of 64 hex characters")
                    })?;
                    let v = membership::verify_certificate(&bytes, &authority)
                        .with_context(|| format!("{}", file.display()))?;
                    (v.certificate, true)
                }
                None => (membership::read_unverified(&bytes)?, false),
            };
            print_certificate(&certificate, checked);
            Ok(())
        }
    }
}

fn print_certificate(c: &Certificate, checked: bool) {
    let peer =
        identity::peer_id_of(&c.holder).map_or_else(|_| c.holder.to_string(), |p| p.to_string());
    let now = now_ms();
    let state = if now >= c.expires_ms {
        "EXPIRED".to_string()
    } else {
        format!(
            "valid for {}",
            humantime::format_duration(std::time::Duration::from_secs((c.expires_ms - now) / 1000))
        )
    };
    println!("peer         {peer}");
    println!("scopes       {}", c.scopes.join(","));
    match c.weight {
        Some(0) => println!("weight       0 (does not validate)"),
        Some(w) => println!("weight       {w}"),
        None => println!(
            "weight       none (issued before validator weights: 1 with 'all' or 'propose')"
        ),
    }
    println!("issued_ms    {}", c.issued_ms);
    println!("expires_ms   {} ({state})", c.expires_ms);
    println!("authority    key id {}", hex::encode(c.authority));
    println!(
        "signature    {}",
        if checked {
            "verified"
        } else {
            "not checked (pass --authority)"
        }
    );
}
