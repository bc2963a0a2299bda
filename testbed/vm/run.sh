#!/usr/bin/env bash
# Runs kproxy's real-kernel tests inside a qemu VM booting Debian 12's kernel (6.1), which
# has IPVS and the dummy driver (this machine's kernel has neither): the IPVS packet tests
# (bin/tests/ipvs.rs) and the IPVS backend's kernel tests (crates/ipvs-backend/tests/
# kernel.rs), ignored on the host; and, for old-kernel coverage (chain deletion before
# 6.2, k#122604), the nftables backend's kernel tests and packet tests
# (crates/nft-backend/tests/{partial,drift,listing}.rs, bin/tests/packets.rs), and the
# nf_tables model's errno-by-errno check against this older kernel (tests/model.rs), and
# the Maglev packet test (bin/tests/maglev.rs: Debian's kernel hashes as proxy-core does). Software emulation (TCG): no /dev/kvm needed, nothing on the host changes.
#
#   testbed/vm/run.sh [TEST-FILTER]     exit status 0 when every test passed
#
# The kernel and a base initramfs are built once and cached (testbed/vm/build.sh); each run
# appends a small archive with the freshly built test binaries and kproxy.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
filter=${1:-}
cache=$("$here/build.sh")

echo "vm: building the test binaries"
cd "$repo"
tests=(--test ipvs --test packets --test maglev --test kernel --test partial --test drift --test listing --test model)
mapfile -t exes < <(cargo test --all-features --no-run --message-format=json -p kproxy -p ipvs-backend -p nft-backend \
  "${tests[@]}" 2>/dev/null |
  jq -r 'select(.reason == "compiler-artifact" and .executable != null and .target.kind == ["test"]) | .executable')
((${#exes[@]} == ${#tests[@]} / 2)) || { echo "vm: expected $((${#tests[@]} / 2)) test binaries, got: ${exes[*]}" >&2; exit 1; }
kproxy=$repo/target/debug/kproxy   # the path the tests were built with (CARGO_BIN_EXE_kproxy)
[ -x "$kproxy" ] || { echo "vm: $kproxy missing" >&2; exit 1; }

run=$(mktemp -d /tmp/kproxy-vm-run.XXXXXX)
trap 'rm -rf "$run"' EXIT
mkdir -p "$run/root/test" "$run/root$(dirname "$kproxy")"
copy() { # copy a binary without debug info, with the shared libraries it links
  objcopy --strip-debug "$1" "$run/root$2"
  ldd "$1" | grep -oE '/[^ ]+' | while read -r lib; do
    mkdir -p "$run/root$(dirname "$lib")"
    cp -L "$lib" "$run/root$lib"
  done
}
copy "$kproxy" "$kproxy"
for exe in "${exes[@]}"; do
  name=$(basename "$exe" | sed 's/-[0-9a-f]*$//')
  copy "$exe" "/test/$name"
done
cat >"$run/root/test/run" <<SCRIPT
#!/bin/sh
# Inside the VM: the tests ignored on the host (IPVS, the dummy interface), then the
# nftables packet tests.
cd /tmp
rc=0
/test/kernel --include-ignored --test-threads=1 $filter || rc=1
/test/ipvs --ignored --test-threads=1 $filter || rc=1
for t in partial drift listing model packets maglev; do
  /test/\$t --test-threads=1 $filter || rc=1
done
exit \$rc
SCRIPT
chmod +x "$run/root/test/run"
(cd "$run/root" && find . | cpio -o -H newc --quiet | gzip -1) >"$run/test.cpio.gz"
cat "$cache/base.cpio.gz" "$run/test.cpio.gz" >"$run/initrd.gz"

bios=()
[ -f /usr/share/qemu/qboot.rom ] && bios=(-bios /usr/share/qemu/qboot.rom)
log=$repo/target/vm-test.log
echo "vm: booting $(basename "$cache") (serial log: $log)"
start=$(date +%s)
timeout "${KPROXY_VM_TIMEOUT:-1500}" qemu-system-x86_64 -accel tcg -cpu max -smp 2 -m 2048 -M pc "${bios[@]}" \
  -nodefaults -no-user-config -nic none -display none -serial stdio -no-reboot \
  -kernel "$cache/vmlinuz" -initrd "$run/initrd.gz" -append "console=ttyS0 quiet panic=-1" </dev/null |
  tr -d '\r' | tee "$log" | grep --line-buffered -E '^(VM-|test |running |test result|failures|---- |thread|  left|  right|assertion)' || true
echo "vm: done in $(($(date +%s) - start)) s"
grep -q '^VM-RESULT rc=0$' "$log"
