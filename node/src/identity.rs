//! The node's Ed25519 identity on disk: a 32-byte seed in
//! `<data dir>/identity.key`, created once with mode 0600 and reused.

use agentmesh_protocol::{NodeId, NodeKey};
use anyhow::{bail, Context, Result};
use libp2p::identity::{self, Keypair, PublicKey};
use libp2p::PeerId;
use std::io::Write;
use std::path::{Path, PathBuf};

pub const KEY_FILE: &str = "identity.key";

pub fn key_path(data_dir: &Path) -> PathBuf {
    data_dir.join(KEY_FILE)
}

/// Loads the key at `path`, or creates it (and its directory) if absent.
pub fn load_or_create(path: &Path) -> Result<NodeKey> {
    if path.exists() {
        return load(path);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create directory {}", dir.display()))?;
    }
    let key = NodeKey::generate()?;
    write_new(path, &key)?;
    tracing::info!(path = %path.display(), "created a new node identity");
    Ok(key)
}

pub fn load(path: &Path) -> Result<NodeKey> {
    let bytes =
        std::fs::read(path).with_context(|| format!("cannot read key file {}", path.display()))?;
    let seed: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
        anyhow::anyhow!(
            "key file {} is {} bytes long; an agentmesh key file holds exactly 32 bytes",
            path.display(),
            bytes.len()
        )
    })?;
    warn_if_readable_by_others(path);
    Ok(NodeKey::from_seed(seed)?)
}

/// Writes `key` to a new file with mode 0600; never overwrites.
pub fn write_new(path: &Path, key: &NodeKey) -> Result<()> {
    write_private_file(path, key.seed(), "key file")
}

/// Writes `bytes` to a new file only its owner can read (mode 0600),
/// synced to disk; never overwrites. `what` names the file in errors.
pub fn write_private_file(path: &Path, bytes: &[u8], what: &str) -> Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).with_context(|| {
        if path.exists() {
            format!(
                "{} already exists; refusing to overwrite a {what}",
                path.display()
            )
        } else {
            format!("cannot create {what} {}", path.display())
        }
    })?;
    file.write_all(bytes)
        .and_then(|_| file.sync_all())
        .with_context(|| format!("cannot write {what} {}", path.display()))
}

pub(crate) fn warn_if_readable_by_others(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(path = %path.display(), "key file is readable by other users; chmod 600 it");
            }
        }
    }
}

pub fn libp2p_keypair(key: &NodeKey) -> Result<Keypair> {
    let mut seed = *key.seed();
    Ok(Keypair::ed25519_from_bytes(&mut seed)?)
}

pub fn peer_id_of(node: &NodeId) -> Result<PeerId> {
    let pk = identity::ed25519::PublicKey::try_from_bytes(node.as_bytes())?;
    Ok(PublicKey::from(pk).to_peer_id())
}

/// The node id behind a peer id, if the peer uses an Ed25519 key (every
/// agentmesh node does; a peer id that hashes its key cannot be inverted).
pub fn node_id_of(peer: &PeerId) -> Option<NodeId> {
    let pk = PublicKey::try_decode_protobuf(peer.as_ref().digest()).ok()?;
    let ed = pk.try_into_ed25519().ok()?;
    Some(NodeId(ed.to_bytes()))
}

pub fn ensure_not_exists(path: &Path) -> Result<()> {
    if path.exists() {
        bail!(
            "{} already exists; refusing to overwrite a key (use --force to replace it)",
            path.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_created_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = key_path(&dir.path().join("sub"));
        let a = load_or_create(&path).unwrap();
        let b = load_or_create(&path).unwrap();
        assert_eq!(a.node_id(), b.node_id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn peer_and_node_ids_map_both_ways() {
        let key = NodeKey::generate().unwrap();
        let peer = libp2p_keypair(&key).unwrap().public().to_peer_id();
        assert_eq!(peer_id_of(&key.node_id()).unwrap(), peer);
        assert_eq!(node_id_of(&peer), Some(key.node_id()));
    }

    #[test]
    fn a_truncated_key_file_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEY_FILE);
        std::fs::write(&path, [1u8; 5]).unwrap();
        let err = format!("{:#}", load(&path).err().unwrap());
        assert!(err.contains("exactly 32 bytes"), "{err}");
    }
}
