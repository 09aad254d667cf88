//! Proposer side of rendering: turn a profile into a [`Command::SetBootProfile`].
//!
//! Rendering happens once, on the host that proposes the change; the command carries the
//! resulting (path → digest) rows, so applying it on replicas needs no template and
//! cannot diverge. The rendered bytes are stored in the local blob store before the
//! command is proposed, so the files exist wherever the command says they are held; small
//! text files also travel inside the command, so every replica has them at once.

use std::collections::BTreeSet;

use crate::blobs::{BlobStore, Digest};
use crate::store::{BootProfile, Command, FileSpec, Millis, Node, Store, INLINE_MAX};

use super::{kernel_path, ramdisk_path, RenderError, Renderer};
use crate::wire::token::{BootToken, TOKEN_BYTES};

/// What a render does with the node's boot token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenChoice {
    /// No token: node files are not fetched by token (`node_files` is not `token`).
    Off,
    /// The node's current token (a new one if it has none): the same boot, rendered
    /// again (new MACs, new templates).
    Keep,
    /// A new token: a new boot (a new profile or provision state, or asked for).
    Rotate,
}

impl TokenChoice {
    /// The choice for a render under `tokens` (whether this host fetches node files by
    /// token), for a new boot or not.
    pub fn new(tokens: bool, new_boot: bool) -> Self {
        match (tokens, new_boot) {
            (false, _) => TokenChoice::Off,
            (true, false) => TokenChoice::Keep,
            (true, true) => TokenChoice::Rotate,
        }
    }
}

/// The boot token a node whose current one is `current` gets rendered with: none, the
/// same, or 128 new bits from the operating system's CSPRNG.
pub fn next_token(
    current: Option<BootToken>,
    choice: TokenChoice,
) -> Result<Option<BootToken>, RenderError> {
    let draw = || {
        let mut b = [0u8; TOKEN_BYTES];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b)
            .map_err(|_| RenderError::Random)?;
        Ok(Some(BootToken::from_bytes(b)))
    };
    match (choice, current) {
        (TokenChoice::Off, _) => Ok(None),
        (TokenChoice::Keep, Some(t)) => Ok(Some(t)),
        (TokenChoice::Keep, None) | (TokenChoice::Rotate, _) => draw(),
    }
}

/// Renders `profile` for `node`, stores the rendered files in `blobs`, and returns the
/// command that sets the profile and the node's whole file set. The files carry
/// `node.boot_token` (see [`next_token`]), and so does the command. The command expects the
/// node's current epoch, so a proposer that lost ownership meanwhile is refused.
///
/// To change a node's MACs, apply a [`Command::Batch`] of the `UpdateNode` and this
/// command built from the node with its new MACs, so old paths vanish atomically.
pub fn boot_profile_command(
    renderer: &Renderer,
    blobs: &BlobStore,
    node: &Node,
    profile: Option<BootProfile>,
    host: &str,
    at: Millis,
) -> Result<Command, RenderError> {
    boot_profile_command_with(renderer, blobs, &|_| None, node, profile, host, at)
}

/// [`boot_profile_command`] where kernel and ramdisk sizes may also come from `known`
/// (e.g. the replicated artifact table): the proposing host need not hold those blobs,
/// since they are replicated by digest to whichever host serves the node.
pub fn boot_profile_command_with(
    renderer: &Renderer,
    blobs: &BlobStore,
    known: &dyn Fn(&Digest) -> Option<u64>,
    node: &Node,
    profile: Option<BootProfile>,
    host: &str,
    at: Millis,
) -> Result<Command, RenderError> {
    let files = match &profile {
        Some(p) => profile_files(renderer, blobs, known, node, p, true)?,
        None => Vec::new(),
    };
    Ok(Command::SetBootProfile {
        node: node.id.clone(),
        boot_token: profile.as_ref().and(node.boot_token),
        profile,
        files,
        host: host.to_string(),
        expected_epoch: Some(node.epoch),
        at,
    })
}

/// The complete file set of `node` booting `profile`, sorted by path: its rendered
/// boot-loader configurations (stored in `blobs`) and its kernel and ramdisk rows.
///
/// A rendered file small enough to travel inside the command ([`INLINE_MAX`]) is kept
/// in the replicated store and served from there, so with `store_inline` false it is
/// not written to `blobs` as well: a bulk import of thousands of nodes then costs no
/// file (and fsync) per rendered file.
pub fn profile_files(
    renderer: &Renderer,
    blobs: &BlobStore,
    known: &dyn Fn(&Digest) -> Option<u64>,
    node: &Node,
    profile: &BootProfile,
    store_inline: bool,
) -> Result<Vec<FileSpec>, RenderError> {
    let mut files = Vec::new();
    for (path, bytes) in renderer.render_node(node, profile)? {
        // Small text (every config and script) travels inside the command, so each
        // replica can serve it the moment the profile commits.
        let text = (bytes.len() <= INLINE_MAX)
            .then(|| std::str::from_utf8(&bytes).ok().map(str::to_string))
            .flatten();
        let (digest, size) = if text.is_some() && !store_inline {
            (Digest::of(&bytes), bytes.len() as u64)
        } else {
            let info = blobs.put_bytes(&bytes)?;
            (info.digest, info.size)
        };
        files.push(FileSpec {
            path,
            digest,
            size,
            held: true,
            text,
        });
    }
    if let Some(k) = profile.kernel_boot() {
        for (path, digest) in [
            (kernel_path(&node.id), k.kernel),
            (ramdisk_path(&node.id), k.ramdisk),
        ] {
            let local = blobs.size(&digest)?;
            files.push(FileSpec {
                path,
                size: match local {
                    Some(n) => n,
                    None => known(&digest).ok_or(RenderError::MissingBlob(digest))?,
                },
                held: local.is_some(),
                digest,
                text: None,
            });
        }
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

/// Result of [`rerender_all`].
#[derive(Debug, Default)]
pub struct Rerender {
    /// Commands for nodes whose files changed; apply each (a refusal, e.g. a stale epoch
    /// because the node moved meanwhile, only means that node is no longer ours).
    pub commands: Vec<Command>,
    /// Nodes that failed to render; they keep serving their previous files.
    pub failures: Vec<(String, RenderError)>,
}

/// Re-renders every node owned by `host` that has a profile and returns commands for
/// those whose files would change (after a template edit). Each keeps its boot token,
/// or gets or loses one as `tokens` (`node_files = "token"` on this host) says. Only
/// the owner re-renders its nodes, so hosts with different template versions never
/// fight over a node.
pub fn rerender_all(
    store: &Store,
    blobs: &BlobStore,
    renderer: &Renderer,
    host: &str,
    tokens: bool,
    at: Millis,
) -> Result<Rerender, RenderError> {
    let mut out = Rerender::default();
    for mut node in store.nodes()? {
        if node.owner != host {
            continue;
        }
        let Some(profile) = node.boot_profile.clone() else {
            continue;
        };
        node.boot_token = next_token(node.boot_token, TokenChoice::new(tokens, false))?;
        let known = |d: &Digest| store.artifact(d).ok().flatten().map(|a| a.size);
        let cmd = match boot_profile_command_with(
            renderer,
            blobs,
            &known,
            &node,
            Some(profile),
            host,
            at,
        ) {
            Ok(c) => c,
            Err(e) => {
                out.failures.push((node.id.clone(), e));
                continue;
            }
        };
        let Command::SetBootProfile { files, .. } = &cmd else {
            continue;
        };
        let wanted: BTreeSet<(&str, Digest)> =
            files.iter().map(|f| (f.path.as_str(), f.digest)).collect();
        let current = store.node_files(&node.id)?;
        let have: BTreeSet<(&str, Digest)> = current
            .iter()
            .map(|f| (f.path.as_str(), f.digest))
            .collect();
        if wanted != have {
            out.commands.push(cmd);
        }
    }
    Ok(out)
}
