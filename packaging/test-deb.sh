#!/usr/bin/env bash
# Packaging test (CI runs it after `cargo test`): builds the Debian package with
# `cargo deb`, installs it with dpkg, verifies the installed systemd unit, starts the
# installed /usr/bin/baton with the installed /etc/baton/baton.toml the way the unit
# does (user baton, CAP_NET_BIND_SERVICE as ambient capability, default ports), fetches
# a boot loader over TFTP with tftp-hpa, runs `baton doctor` against it, and purges the
# package again.
#
# Only the listen addresses differ from the installed config: every listener moves to
# one random 127.x.y.z address, so nothing is reachable beyond loopback and nothing
# collides with other servers on this machine. Needs root; with CI set, anything
# missing fails the run instead of skipping it.
set -euo pipefail
cd "$(dirname "$0")/.."

skip() {
  if [ -n "${CI:-}" ]; then
    echo "test-deb: FAILED: $* (CI is set)" >&2
    exit 1
  fi
  echo "*** test-deb: SKIPPED: $* ***" >&2
  exit 0
}
fail() {
  echo "test-deb: FAILED: $*" >&2
  exit 1
}

[ "$(id -u)" = 0 ] || skip "needs root (dpkg -i)"
for t in dpkg systemd-analyze tftp setpriv file cargo-deb; do
  command -v "$t" >/dev/null || skip "$t is not installed"
done
[ -e /usr/lib/ipxe/undionly.kpxe ] || skip "package ipxe is not installed (the loaders served)"
if dpkg -s baton >/dev/null 2>&1; then
  fail "a baton package is already installed here; this test would replace and purge it"
fi
[ -e /var/lib/baton ] && fail "/var/lib/baton exists; purging the test package would delete it"

work=$(mktemp -d)
pid=
cleanup() {
  rc=$?
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  fi
  if [ $rc != 0 ] && [ -f "$work/serve.log" ]; then
    echo "--- installed baton serve log:" >&2
    cat "$work/serve.log" >&2
  fi
  if dpkg -s baton >/dev/null 2>&1; then
    dpkg --purge baton >/dev/null || rc=1
  fi
  [ -e /var/lib/baton ] && { echo "test-deb: purge left /var/lib/baton" >&2; rc=1; }
  rm -rf "$work"
  exit $rc
}
trap cleanup EXIT

t0=$(date +%s)
echo "== cargo deb --no-dbgsym --strip --override-debug none"
# A release build as `cargo deb` makes it, minus the debug info that only the
# baton-dbgsym package would carry: about a quarter less CPU time.
cargo deb --no-dbgsym --strip --override-debug none --output "$work/"
deb=$(ls "$work"/baton_*.deb)
t_built=$(date +%s)

echo "== dpkg -i $deb"
dpkg -i "$deb"

echo "== installed files"
file -L /usr/bin/baton | tee "$work/file"
grep -q ", stripped" "$work/file" || fail "/usr/bin/baton is not stripped"
getent passwd baton >/dev/null || fail "postinst did not create the user baton"
[ "$(stat -c %U /var/lib/baton)" = baton ] || fail "/var/lib/baton is not owned by baton"
unit=$(dpkg -L baton | grep '/systemd/system/baton\.service$') || fail "no baton.service in the package"
[ -f /etc/baton/baton.toml ] || fail "no /etc/baton/baton.toml"

echo "== systemd-analyze verify $unit"
systemd-analyze verify "$unit" 2>&1 | tee "$work/verify"
[ "${PIPESTATUS[0]}" = 0 ] || fail "systemd-analyze verify failed"
# It exits 0 on some problems it only prints: treat any line about our unit as one.
if grep -i "baton" "$work/verify"; then
  fail "systemd-analyze verify complained about the unit"
fi

ip="127.$((RANDOM % 200 + 20)).$((RANDOM % 250 + 1)).$((RANDOM % 250 + 1))"
listen=(--tftp-listen "$ip:69" --http-listen "$ip:8069" --dhcp-listen "$ip")
echo "== installed baton serve on $ip (user baton, ambient CAP_NET_BIND_SERVICE, as the unit)"
setpriv --reuid=baton --regid=baton --init-groups \
  --inh-caps=+net_bind_service --ambient-caps=+net_bind_service -- \
  /usr/bin/baton serve --config /etc/baton/baton.toml "${listen[@]}" \
  >"$work/serve.log" 2>&1 &
pid=$!
for _ in $(seq 300); do
  grep -q "tftp server listening" "$work/serve.log" && break
  kill -0 "$pid" 2>/dev/null || fail "baton serve exited"
  sleep 0.1
done
grep -q "tftp server listening" "$work/serve.log" || fail "baton serve did not listen within 30 s"

echo "== install-bootloaders.sh --no-apt /var/lib/baton/tftp"
# pxelinux and GRUB are not installed here: only the iPXE loaders are needed.
/usr/share/baton/install-bootloaders.sh --no-apt /var/lib/baton/tftp || true

echo "== tftp $ip 69: get undionly.kpxe"
tftp -m octet "$ip" 69 -c get undionly.kpxe "$work/undionly.kpxe"
cmp "$work/undionly.kpxe" /usr/lib/ipxe/undionly.kpxe || fail "TFTP served different bytes"
tftp -m octet "$ip" 69 -c get boot.ipxe "$work/boot.ipxe"
grep -q '^#!ipxe' "$work/boot.ipxe" || fail "boot.ipxe is not an iPXE script"

echo "== baton doctor --config /etc/baton/baton.toml (same listeners)"
set +e
/usr/bin/baton doctor --config /etc/baton/baton.toml "${listen[@]}" | tee "$work/doctor"
doctor_rc=${PIPESTATUS[0]}
set -e
[ "$doctor_rc" = 0 ] || fail "baton doctor found failures on the installed package"
for port in udp/69 udp/67 udp/4011 tcp/8069; do
  grep -q "^PASS  port $port .*baton itself" "$work/doctor" ||
    fail "doctor does not see the running baton on $port"
done
grep -q "^PASS  capabilities (systemd unit)" "$work/doctor" || fail "doctor did not check the unit"

size_deb=$(stat -c %s "$deb")
size_bin=$(stat -c %s /usr/bin/baton)
t_end=$(date +%s)
echo "== test-deb: ok: package $(basename "$deb") $size_deb bytes; /usr/bin/baton $size_bin bytes (stripped); build $((t_built - t0)) s, install+checks $((t_end - t_built)) s"
