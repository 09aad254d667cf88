//! What a driver event means for a boot (sans-IO): which stage a fetched file is,
//! which unanswered DHCP requests are worth a record, and the status and reason of a
//! transfer's outcome or a refusal. The recorder applies these; nothing else decides.

use crate::blobs::Digest;
use crate::dhcp::proxy::Ignored;
use crate::namespace::OpenError;
use crate::ownership::gate::NotServed;
use crate::store::BootProfile;
use crate::tftp::transfer::Outcome;

use super::record::{Stage, Status};

/// The stage of a fetched file: a node file is its kernel, its ramdisk or a
/// configuration (a local-boot profile's configuration ends the boot); a shared file is
/// a configuration by its name (`pxelinux.cfg/default`, `grub.cfg`, `*.ipxe`) or else
/// a loader. Returns the stage and whether it ends the boot.
pub fn file_stage(
    path: &str,
    node_file: Option<&Digest>,
    profile: Option<&BootProfile>,
) -> (Stage, bool) {
    match node_file {
        Some(d) => match profile {
            Some(p) => match p.kernel_boot() {
                Some(k) if &k.kernel == d => (Stage::Kernel, false),
                Some(k) if &k.ramdisk == d => (Stage::Ramdisk, false),
                Some(_) => (Stage::Config, false),
                None => (Stage::Config, true),
            },
            None => (Stage::Config, false),
        },
        None => {
            let p = path.to_ascii_lowercase();
            let config = p.starts_with("pxelinux.cfg/")
                || p.contains("grub.cfg")
                || p.ends_with(".ipxe")
                || p.ends_with(".conf");
            if config {
                (Stage::Config, false)
            } else {
                (Stage::Loader, false)
            }
        }
    }
}

/// Whether an unanswered DHCP request of a known node belongs in its timeline: yes
/// when this host would answer the node but something is missing (profile, loader,
/// lease, the old owner's confirmation); no when another host answers it or the packet
/// was not for a boot server at all.
pub fn dhcp_ignore_recorded(i: Ignored) -> bool {
    match i {
        // Rate-limited: the node asks faster than its answers are allowed (a DHCP loop
        // in the making), which the timeline should show.
        Ignored::NoProfile
        | Ignored::LocalBoot
        | Ignored::UnsupportedArch
        | Ignored::RateLimited => true,
        Ignored::NotServed(r) => matches!(r, NotServed::LeaseStale | NotServed::AwaitingOldOwner),
        // Relay and source refusals are about the network, not this node's boot.
        Ignored::NotPxe
        | Ignored::MessageType
        | Ignored::OtherServer
        | Ignored::UnknownMac
        | Ignored::UntrustedRelay
        | Ignored::BadRelay
        | Ignored::BadSource => false,
    }
}

/// Status and reason of a finished TFTP transfer.
pub fn tftp_outcome(o: &Outcome) -> (Status, Option<String>) {
    match o {
        Outcome::Completed => (Status::Ok, None),
        Outcome::SizeProbe => (Status::SizeProbe, None),
        Outcome::ClientAborted { code, message } => (
            Status::Aborted,
            Some(format!(
                "client error {}: {}",
                code.to_u16(),
                super::record::clip(message)
            )),
        ),
        Outcome::TimedOut => (Status::TimedOut, Some("timeout".into())),
        Outcome::Aborted(why) => (Status::Aborted, Some((*why).to_string())),
    }
}

/// Status and reason of a file request refused before any byte went out.
pub fn open_refusal(e: &OpenError) -> (Status, Option<String>) {
    match e {
        OpenError::NotFound => (Status::NotFound, None),
        OpenError::NotServed(r) => (Status::Refused, Some(r.label().to_string())),
        OpenError::Denied(r) => (Status::Refused, Some((*r).to_string())),
        OpenError::Io(_) => (Status::Failed, Some("io_error".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::KernelBoot;
    use crate::wire::tftp::ErrorCode;

    #[test]
    fn files_by_role() {
        let k = Digest::of(b"kernel");
        let r = Digest::of(b"ramdisk");
        let c = Digest::of(b"cfg");
        let deploy = BootProfile::Deploy(KernelBoot {
            kernel: k,
            ramdisk: r,
            cmdline: String::new(),
        });
        assert_eq!(
            file_stage("nodes/n1/kernel", Some(&k), Some(&deploy)),
            (Stage::Kernel, false)
        );
        assert_eq!(
            file_stage("nodes/n1/initrd", Some(&r), Some(&deploy)),
            (Stage::Ramdisk, false)
        );
        assert_eq!(
            file_stage("pxelinux.cfg/01-aa", Some(&c), Some(&deploy)),
            (Stage::Config, false)
        );
        assert_eq!(
            file_stage("pxelinux.cfg/01-aa", Some(&c), Some(&BootProfile::Local)),
            (Stage::Config, true)
        );
        assert_eq!(
            file_stage("undionly.kpxe", None, None),
            (Stage::Loader, false)
        );
        assert_eq!(
            file_stage("ldlinux.c32", None, None),
            (Stage::Loader, false)
        );
        assert_eq!(
            file_stage("pxelinux.cfg/default", None, None),
            (Stage::Config, false)
        );
        assert_eq!(file_stage("boot.ipxe", None, None), (Stage::Config, false));
    }

    #[test]
    fn dhcp_records_only_what_this_host_should_have_answered() {
        assert!(dhcp_ignore_recorded(Ignored::NoProfile));
        assert!(dhcp_ignore_recorded(Ignored::NotServed(
            NotServed::LeaseStale
        )));
        assert!(!dhcp_ignore_recorded(Ignored::NotServed(
            NotServed::NotOwner
        )));
        assert!(!dhcp_ignore_recorded(Ignored::OtherServer));
        assert!(!dhcp_ignore_recorded(Ignored::UnknownMac));
    }

    #[test]
    fn outcomes() {
        assert_eq!(tftp_outcome(&Outcome::Completed).0, Status::Ok);
        assert_eq!(tftp_outcome(&Outcome::SizeProbe).0, Status::SizeProbe);
        assert_eq!(tftp_outcome(&Outcome::TimedOut).0, Status::TimedOut);
        let (s, r) = tftp_outcome(&Outcome::ClientAborted {
            code: ErrorCode::DiskFull,
            message: "no\nroom".into(),
        });
        assert_eq!(s, Status::Aborted);
        assert_eq!(r.as_deref(), Some("client error 3: noroom"));
        assert_eq!(
            open_refusal(&OpenError::NotServed(NotServed::WrongClient)),
            (Status::Refused, Some("wrong_client".into()))
        );
        assert_eq!(open_refusal(&OpenError::NotFound).0, Status::NotFound);
    }
}
