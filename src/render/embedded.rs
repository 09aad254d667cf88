//! The templates and shared static files of `tftp-root-template/`, built into the
//! binary so `baton serve` works with no template directory installed.

use super::{RenderError, Renderer, GRUB_TEMPLATE, IPXE_TEMPLATE, PXELINUX_TEMPLATE};

/// (name, source) of each template.
pub const TEMPLATE_SOURCES: [(&str, &str); 3] = [
    (
        PXELINUX_TEMPLATE,
        include_str!("../../tftp-root-template/pxelinux.cfg.j2"),
    ),
    (
        GRUB_TEMPLATE,
        include_str!("../../tftp-root-template/grub.cfg.j2"),
    ),
    (
        IPXE_TEMPLATE,
        include_str!("../../tftp-root-template/node.ipxe.j2"),
    ),
];

/// Shared files that belong at the top of the served root (path, content).
pub const STATIC_FILES: [(&str, &str); 2] = [
    (
        "boot.ipxe",
        include_str!("../../tftp-root-template/static/boot.ipxe"),
    ),
    (
        "grub/grub.cfg",
        include_str!("../../tftp-root-template/static/grub/grub.cfg"),
    ),
];

impl Renderer {
    /// The built-in templates.
    pub fn embedded() -> Result<Renderer, RenderError> {
        Renderer::from_sources(TEMPLATE_SOURCES)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn embedded_templates_load() {
        super::Renderer::embedded().unwrap();
    }
}
