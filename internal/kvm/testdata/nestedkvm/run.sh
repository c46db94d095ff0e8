#!/bin/sh
# Runs internal/kvm's tests (or benchmarks) on a real KVM inside a QEMU TCG
# VM with nested SVM, for machines whose /dev/kvm is missing.
#
#   [RACE=1] internal/kvm/testdata/nestedkvm/run.sh -test.v -test.count=1
#   internal/kvm/testdata/nestedkvm/run.sh -test.run XXX -test.bench KVM -test.benchtime 50x
#
# Needs qemu-system-x86_64, python3, and Debian's kernel package unpacked
# in $KROOT (default /tmp/kimg/root):
#   mkdir -p /tmp/kimg && cd /tmp/kimg && apt-get download linux-image-6.1.0-57-amd64 &&
#   dpkg-deb -x linux-image-*.deb root
set -e
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../../.." && pwd)
KROOT=${KROOT:-/tmp/kimg/root}
kver=$(ls "$KROOT/lib/modules" | head -1)
M=$KROOT/lib/modules/$kver/kernel
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$here" && CGO_ENABLED=0 go build -o "$work/init" .)
if [ -n "$RACE" ]; then
  (cd "$repo" && go test -race -c -o "$work/kvm.test" ./internal/kvm/)
  LIBS="lib/x86_64-linux-gnu/libc.so.6=/lib/x86_64-linux-gnu/libc.so.6 lib64/ld-linux-x86-64.so.2=/lib64/ld-linux-x86-64.so.2"
else
  (cd "$repo" && CGO_ENABLED=0 go test -c -o "$work/kvm.test" ./internal/kvm/)
  LIBS=""
fi
echo "$@" > "$work/args"
python3 "$here/mkcpio.py" "$work/initrd" init="$work/init" kvm.test="$work/kvm.test" args="$work/args" $LIBS \
  mods/irqbypass.ko="$M/virt/lib/irqbypass.ko" mods/ccp.ko="$M/drivers/crypto/ccp/ccp.ko" \
  mods/kvm.ko="$M/arch/x86/kvm/kvm.ko" mods/kvm-amd.ko="$M/arch/x86/kvm/kvm-amd.ko"
timeout "${QTIMEOUT:-600}" qemu-system-x86_64 -machine q35,accel=tcg -cpu max -smp "${SMP:-1}" -m 2048 \
  -display none -nodefaults -no-reboot -serial stdio \
  -kernel "$KROOT/boot/vmlinuz-$kver" -initrd "$work/initrd" -append "console=ttyS0 quiet panic=-1" |
  tee "$work/out"
grep -q "KVMTEST-EXIT: <nil>" "$work/out"
