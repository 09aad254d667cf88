//! Per-node boot files rendered from `tftp-root-template/` with minijinja.
//!
//! A node's served namespace is a set of (path → digest) rows. For every boot MAC of a
//! node with a boot profile, three boot-loader configurations are rendered:
//!
//! | template           | served path                      | read by                        |
//! |--------------------|----------------------------------|--------------------------------|
//! | `pxelinux.cfg.j2`  | `pxelinux.cfg/01-<mac-dashes>`   | pxelinux (BIOS), built-in rule |
//! | `grub.cfg.j2`      | `grub/grub.cfg-01-<mac-dashes>`  | GRUB (EFI), via the shared `grub/grub.cfg` |
//! | `node.ipxe.j2`     | `ipxe/<mac-dashes>.ipxe`         | iPXE, via the shared `boot.ipxe` |
//!
//! MACs are lowercase with dashes (`52-54-00-ec-33-81`). A kernel profile adds
//! `nodes/<node>/kernel` and `nodes/<node>/ramdisk`, which the templates reference: so
//! TFTP and HTTP serve kernel and ramdisk through the same mapping, and a rendered file
//! never changes when only the kernel does.
//!
//! Rendered output must be identical on every host (a peer taking a node over serves the
//! same bytes), so templates see only node data — no host name, no address, no time.
//! iPXE scripts use path-absolute URIs (`/nodes/n1/kernel`) that iPXE resolves against the
//! script's own URI, so one script works over TFTP and HTTP from any host.
//!
//! With `node_files = "token"` a node's files are rendered with its boot token
//! ([`crate::wire::token`]): templates write `/{{ boot.prefix }}{{ profile.kernel }}`, and
//! `boot.prefix` is `_t/<token>/` (empty in the other modes, so their output is unchanged).
//! The token is part of the node, written by the same command as the files
//! ([`next_token`] picks it), so a peer taking the node over serves the same bytes.

pub mod embedded;
mod plan;
mod watch;

use std::path::{Path, PathBuf};

use minijinja::syntax::SyntaxConfig;
use minijinja::value::Serde;
use minijinja::{AutoEscape, Environment, UndefinedBehavior};

use crate::blobs::{BlobError, Digest};
use crate::store::{BootProfile, KernelBoot, MacAddr, Node, StoreError};
use crate::wire::token::BootToken;

pub use plan::{
    boot_profile_command, boot_profile_command_with, next_token, profile_files, rerender_all,
    Rerender, TokenChoice,
};
pub use watch::{watch_templates, TemplateWatcher};

/// Template for pxelinux configurations.
pub const PXELINUX_TEMPLATE: &str = "pxelinux.cfg.j2";
/// Template for GRUB configurations.
pub const GRUB_TEMPLATE: &str = "grub.cfg.j2";
/// Template for iPXE scripts.
pub const IPXE_TEMPLATE: &str = "node.ipxe.j2";
/// All templates a template directory must hold.
pub const TEMPLATES: [&str; 3] = [PXELINUX_TEMPLATE, GRUB_TEMPLATE, IPXE_TEMPLATE];

/// Largest template file accepted.
const MAX_TEMPLATE: u64 = 1 << 20;

/// Why rendering (or preparing a render) failed.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// A template file could not be read.
    #[error("reading template {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A template is broken (syntax, unknown variable, failing filter, …).
    #[error("template {template}{}: {message}", line.map(|l| format!(" line {l}")).unwrap_or_default())]
    Template {
        /// Template file name.
        template: String,
        /// 1-based line, when known.
        line: Option<usize>,
        /// What is wrong.
        message: String,
    },
    /// The boot profile cannot be rendered safely.
    #[error("invalid boot profile: {0}")]
    InvalidProfile(String),
    /// The kernel or ramdisk blob is not on this host.
    #[error("artifact {0} is not in this host's blob store: import it first")]
    MissingBlob(Digest),
    /// Storing a rendered file failed.
    #[error(transparent)]
    Blob(#[from] BlobError),
    /// Reading nodes failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The operating system's random number generator failed (no boot token).
    #[error("the system random number generator failed: no boot token could be drawn")]
    Random,
}

impl RenderError {
    fn template(template: &str, e: &minijinja::Error) -> RenderError {
        let message = match e.detail() {
            Some(d) => format!("{}: {d}", e.kind()),
            None => e.kind().to_string(),
        };
        RenderError::Template {
            template: e.name().unwrap_or(template).to_string(),
            line: e.line(),
            message,
        }
    }
}

/// Stable served path of a node's kernel.
pub fn kernel_path(node: &str) -> String {
    format!("nodes/{node}/kernel")
}

/// Stable served path of a node's ramdisk.
pub fn ramdisk_path(node: &str) -> String {
    format!("nodes/{node}/ramdisk")
}

/// Served path of each template's output for one MAC, in [`TEMPLATES`] order.
pub fn config_paths(mac: &MacAddr) -> [String; 3] {
    let m = mac.dashes();
    [
        format!("pxelinux.cfg/01-{m}"),
        format!("grub/grub.cfg-01-{m}"),
        format!("ipxe/{m}.ipxe"),
    ]
}

/// Escapes a string for an unquoted GRUB script word: GRUB would otherwise expand `$`,
/// split on `;`, and strip quotes. Spaces stay separators; the `linux` command joins
/// its arguments with spaces again, so the kernel sees the original command line.
fn grub_escape(s: String) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(
            c,
            '\\' | '$' | ';' | '&' | '|' | '<' | '>' | '\'' | '"' | '{' | '}' | '(' | ')' | '#'
        ) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[derive(serde::Serialize)]
struct NodeCtx<'a> {
    id: &'a str,
    group: &'a str,
    arch: Option<&'a str>,
    macs: Vec<String>,
}

#[derive(serde::Serialize)]
struct MacCtx {
    colons: String,
    dashes: String,
    hex: String,
}

#[derive(serde::Serialize)]
struct ProfileCtx<'a> {
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    kernel: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ramdisk: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cmdline: Option<&'a str>,
}

/// How the node's files name its other files.
#[derive(serde::Serialize)]
struct BootCtx {
    /// Goes right after the leading `/` of every node-file path: `_t/<token>/` when
    /// the node has a boot token (`node_files = "token"`), else empty.
    prefix: String,
}

#[derive(serde::Serialize)]
struct Ctx<'a> {
    node: NodeCtx<'a>,
    mac: MacCtx,
    profile: ProfileCtx<'a>,
    boot: BootCtx,
}

/// The templates in use, swapped whole when the template directory changes.
#[derive(Clone)]
pub struct CurrentRenderer(std::sync::Arc<std::sync::RwLock<std::sync::Arc<Renderer>>>);

impl CurrentRenderer {
    /// Starts with `r`.
    pub fn new(r: Renderer) -> Self {
        CurrentRenderer(std::sync::Arc::new(std::sync::RwLock::new(
            std::sync::Arc::new(r),
        )))
    }

    /// The current templates.
    pub fn get(&self) -> std::sync::Arc<Renderer> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces the templates (after a valid template change).
    pub fn set(&self, r: Renderer) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = std::sync::Arc::new(r);
    }
}

/// Compiled templates, validated at load.
#[derive(Debug)]
pub struct Renderer {
    env: Environment<'static>,
}

impl Renderer {
    /// Loads and validates the templates in `dir` (see [`TEMPLATES`]). Validation renders
    /// each template for a sample node under every profile kind, so a template that
    /// would fail at boot time (syntax, misspelt variable) is refused now, with the
    /// template's name and line.
    pub fn load(dir: impl AsRef<Path>) -> Result<Renderer, RenderError> {
        let dir = dir.as_ref();
        let mut sources = Vec::with_capacity(TEMPLATES.len());
        for name in TEMPLATES {
            let path = dir.join(name);
            let io = |source| RenderError::Io {
                path: path.clone(),
                source,
            };
            let len = std::fs::metadata(&path).map_err(io)?.len();
            if len > MAX_TEMPLATE {
                return Err(RenderError::Template {
                    template: name.to_string(),
                    line: None,
                    message: format!("{len} bytes is larger than the {MAX_TEMPLATE}-byte limit"),
                });
            }
            let text = std::fs::read_to_string(&path).map_err(io)?;
            sources.push((name, text));
        }
        Self::from_sources(sources)
    }

    /// Builds a renderer from (template name, source) pairs; every name of
    /// [`TEMPLATES`] must be present.
    pub fn from_sources<N: AsRef<str>, S: Into<String>>(
        sources: impl IntoIterator<Item = (N, S)>,
    ) -> Result<Renderer, RenderError> {
        let mut env = Environment::new();
        // Boot-loader configs are line-oriented: `{% if %}` lines vanish entirely,
        // and the final newline stays (pxelinux ignores a last line without one).
        let syntax = SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .keep_trailing_newline(true)
            .build()
            .map_err(|e| RenderError::template("(syntax)", &e))?;
        env.set_syntax(syntax);
        // A misspelt variable must be an error, not an empty string in a boot config.
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        env.set_auto_escape_callback(|_| AutoEscape::None);
        env.add_filter("grub_escape", grub_escape);
        for (name, src) in sources {
            let name = name.as_ref().to_string();
            env.add_template_owned(name.clone(), src.into())
                .map_err(|e| RenderError::template(&name, &e))?;
        }
        let r = Renderer { env };
        for name in TEMPLATES {
            r.env
                .get_template(name)
                .map_err(|e| RenderError::template(name, &e))?;
        }
        r.self_test()?;
        Ok(r)
    }

    /// Renders every template for a sample node under each profile kind.
    fn self_test(&self) -> Result<(), RenderError> {
        let sample = KernelBoot {
            kernel: Digest::of(b"kernel"),
            ramdisk: Digest::of(b"ramdisk"),
            cmdline: "console=ttyS0,115200n8 ip=dhcp".into(),
        };
        let node = Node {
            id: "sample-node".into(),
            macs: vec![MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x56])],
            group: "sample-group".into(),
            arch: Some("x86_64".into()),
            owner: "sample-host".into(),
            epoch: 1,
            provision_state: crate::store::ProvisionState::Enrolled,
            handoff: crate::store::HandoffState::None,
            boot_profile: None,
            last_token: 0,
            stuck: None,
            fence: None,
            addresses: Vec::new(),
            boot_token: None,
            created_at: 0,
            updated_at: 0,
        };
        let tokened = Node {
            boot_token: Some(BootToken::from_bytes([0x5a; 16])),
            ..node.clone()
        };
        for profile in [
            BootProfile::Deploy(sample.clone()),
            BootProfile::Instance(sample),
            BootProfile::Local,
        ] {
            self.render_node(&node, &profile)?;
            self.render_node(&tokened, &profile)?;
        }
        // A node without an architecture hint must render too.
        let node = Node { arch: None, ..node };
        self.render_node(&node, &BootProfile::Local)?;
        Ok(())
    }

    /// Renders the boot-loader configurations of `node` for `profile`: one file per
    /// template per MAC, as (served path, content), sorted by path. Kernel and ramdisk
    /// rows are not included (see [`boot_profile_command`]).
    pub fn render_node(
        &self,
        node: &Node,
        profile: &BootProfile,
    ) -> Result<Vec<(String, Vec<u8>)>, RenderError> {
        profile.validate().map_err(RenderError::InvalidProfile)?;
        let mut out = Vec::with_capacity(node.macs.len() * TEMPLATES.len());
        for mac in &node.macs {
            let ctx = Ctx {
                node: NodeCtx {
                    id: &node.id,
                    group: &node.group,
                    arch: node.arch.as_deref(),
                    macs: node.macs.iter().map(MacAddr::colons).collect(),
                },
                mac: MacCtx {
                    colons: mac.colons(),
                    dashes: mac.dashes(),
                    hex: mac.hex(),
                },
                profile: ProfileCtx {
                    kind: profile.kind(),
                    kernel: profile.kernel_boot().map(|_| kernel_path(&node.id)),
                    ramdisk: profile.kernel_boot().map(|_| ramdisk_path(&node.id)),
                    cmdline: profile.kernel_boot().map(|k| k.cmdline.as_str()),
                },
                boot: BootCtx {
                    prefix: BootToken::url_prefix(node.boot_token.as_ref()),
                },
            };
            let value = minijinja::Value::from(Serde(&ctx));
            for (name, path) in TEMPLATES.iter().zip(config_paths(mac)) {
                let tmpl = self
                    .env
                    .get_template(name)
                    .map_err(|e| RenderError::template(name, &e))?;
                let text = tmpl
                    .render(&value)
                    .map_err(|e| RenderError::template(name, &e))?;
                out.push((path, text.into_bytes()));
            }
        }
        out.sort();
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
