#!/bin/sh
# Installs the shared boot loaders Baton serves into a served root directory.
#
# Baton does not vendor boot-loader binaries. This script installs the Debian packages
# that provide them and copies the files, together with the static entry points from
# tftp-root-template/static/, into ROOT. The layout is described in
# tftp-root-template/README.md.
#
# Usage: install-bootloaders.sh [--no-apt] ROOT [TEMPLATE_DIR]
#   --no-apt       do not run apt-get (the packages are already installed)
#   ROOT           served root: the TFTP root, by default /var/lib/baton/tftp
#   TEMPLATE_DIR   default: the tftp-root-template next to this script's parent, else
#                  /usr/share/baton/tftp-root-template
set -eu

apt=1
if [ "${1:-}" = "--no-apt" ]; then
  apt=0
  shift
fi
if [ $# -lt 1 ] || [ $# -gt 2 ]; then
  echo "usage: $0 [--no-apt] ROOT [TEMPLATE_DIR]" >&2
  exit 2
fi
root=$1
here=$(cd "$(dirname "$0")" && pwd)
if [ $# -eq 2 ]; then
  templates=$2
elif [ -d "$here/../tftp-root-template" ]; then
  templates=$here/../tftp-root-template
else
  templates=/usr/share/baton/tftp-root-template
fi
if [ ! -d "$templates/static" ]; then
  echo "error: $templates/static not found; pass TEMPLATE_DIR" >&2
  exit 1
fi

if [ "$apt" = 1 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "error: installing packages needs root (or pass --no-apt)" >&2
    exit 1
  fi
  apt-get update -qq
  # grub-efi-amd64-signed and shim-signed exist on amd64 only; fall back to the
  # unsigned GRUB image elsewhere or where they are missing.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    pxelinux syslinux-common ipxe
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    grub-efi-amd64-signed shim-signed ||
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      grub-efi-amd64-bin
fi

mkdir -p "$root"
missing=0

# copy SOURCE... DEST: the first SOURCE that exists is copied (symlinks followed).
copy() {
  dest=$1
  shift
  for src in "$@"; do
    if [ -e "$src" ]; then
      install -m 0644 -D "$src" "$root/$dest"
      echo "$root/$dest <- $src"
      return 0
    fi
  done
  echo "warning: none of $* found; $dest not installed" >&2
  missing=1
}

copy pxelinux.0 /usr/lib/PXELINUX/pxelinux.0
copy ldlinux.c32 /usr/lib/syslinux/modules/bios/ldlinux.c32
copy undionly.kpxe /usr/lib/ipxe/undionly.kpxe
copy ipxe.efi /usr/lib/ipxe/ipxe.efi /boot/ipxe.efi
copy snponly.efi /usr/lib/ipxe/snponly.efi
copy grubx64.efi \
  /usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed \
  /usr/lib/grub/x86_64-efi/monolithic/grubnetx64.efi
# shim loads grubx64.efi from the same directory when Secure Boot is on.
if [ -e /usr/lib/shim/shimx64.efi.signed ]; then
  copy bootx64.efi /usr/lib/shim/shimx64.efi.signed
fi

# Static entry points (boot.ipxe, grub/grub.cfg).
(cd "$templates/static" && find . -type f) | while read -r f; do
  install -m 0644 -D "$templates/static/$f" "$root/$f"
  echo "$root/${f#./} <- $templates/static/${f#./}"
done

exit $missing
