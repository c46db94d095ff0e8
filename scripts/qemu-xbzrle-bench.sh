#!/usr/bin/env bash
# qemu-xbzrle-bench.sh measures livemig's XBZRLE encoder against QEMU's own
# encoders (the scalar xbzrle_encode_buffer and the AVX-512BW
# xbzrle_encode_buffer_avx512 of QEMU's migration/xbzrle.c, QEMU 8.x+), on
# this machine, in one process per livemig path, and checks that livemig
# writes exactly QEMU's bytes. See scripts/qemuxbzrle/main.go for what is
# measured and checked.
#
# QEMU's code never enters livemig's repository: this script fetches QEMU's
# Debian source package at run time with apt-get (from the Debian mirror
# this machine's apt already uses, a suite with QEMU 10: trixie by
# default), copies migration/xbzrle.c and xbzrle.h, and cuts QEMU's
# uleb128_encode_small/uleb128_decode_small (util/cutils.c) and ctz64
# (include/qemu/host-utils.h) out of their files, into a temporary
# directory; scripts/qemuxbzrle (livemig's harness and stand-in headers)
# is built against it with cgo. Being compiled into one translation unit
# with the harness can only help QEMU's code (its ULEB128 helpers may be
# inlined, which they are not in QEMU).
#
# Usage:
#   scripts/qemu-xbzrle-bench.sh [harness flags]     e.g. -runs 5 -pairs 64
#
# Environment:
#   QEMU_SRC     an unpacked QEMU source tree to use instead of fetching one
#   QEMU_SUITE   the Debian suite to fetch QEMU's source from (default trixie)
#   PATHS        livemig paths to run, one process each (default
#                "avx512 avx2 go"; a path this CPU lacks falls back to the
#                best below it, and the report says which ran)
#   QEMU_CFLAGS  C compiler flags for QEMU's code and the harness (default
#                "-O2", as Debian builds QEMU; e.g. "-O3 -march=native" to
#                give QEMU's code every chance)
#   KEEP         1 to keep the temporary directory (its path is printed)
#
# Needs: go, gcc (cgo), and for the fetch apt-get, tar and xz. Exits non-zero
# if any byte-exactness check fails.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
suite=${QEMU_SUITE:-trixie}
paths=${PATHS:-avx512 avx2 go}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/qemu-xbzrle.XXXXXX")
if [[ ${KEEP:-0} == 1 ]]; then
	echo "temporary directory: $tmp" >&2
else
	trap 'rm -rf "$tmp"' EXIT
fi

if [[ -n ${QEMU_SRC:-} ]]; then
	src=$QEMU_SRC
	version=$(cat "$src/VERSION" 2>/dev/null || basename "$src")
else
	# The Debian mirror apt already uses here, for a deb-src line of the
	# suite that has QEMU 10 (its archive key is in debian-archive-keyring).
	mirror=$(grep -hs -E '^\s*URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' | grep -v security | head -n1 || true)
	if [[ -z $mirror ]]; then
		mirror=$(grep -hs -E '^\s*deb\s' /etc/apt/sources.list | awk '{print $2}' | grep -v security | head -n1 || true)
	fi
	if [[ -z $mirror ]]; then
		echo "no Debian mirror found in apt's sources; set QEMU_SRC to an unpacked QEMU tree" >&2
		exit 2
	fi
	keyring=/usr/share/keyrings/debian-archive-keyring.gpg
	mkdir -p "$tmp/apt/lists/partial" "$tmp/apt/cache/archives/partial" "$tmp/dl"
	echo "deb-src [signed-by=$keyring] $mirror $suite main" >"$tmp/apt/sources.list"
	apt=(apt-get -q -o "Dir::Etc::SourceList=$tmp/apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
		-o "Dir::State::Lists=$tmp/apt/lists" -o "Dir::Cache=$tmp/apt/cache" -o APT::Sandbox::User=root)
	echo "fetching QEMU's source package from Debian $suite ..." >&2
	"${apt[@]}" update >&2
	(cd "$tmp/dl" && "${apt[@]}" source --download-only qemu >&2)
	orig=$(ls "$tmp"/dl/qemu_*.orig.tar.* | head -n1)
	dsc=$(ls "$tmp"/dl/qemu_*.dsc | head -n1)
	version=$(awk '/^Version:/ {print $2}' "$dsc")
	mkdir "$tmp/src"
	tar -xf "$orig" -C "$tmp/src" --wildcards '*/migration/xbzrle.c' '*/migration/xbzrle.h' \
		'*/util/cutils.c' '*/include/qemu/host-utils.h'
	src=$(dirname "$(dirname "$(find "$tmp/src" -path '*/migration/xbzrle.c' -print -quit)")")
fi

gen=$tmp/gen
mkdir -p "$gen"
cp "$src/migration/xbzrle.c" "$src/migration/xbzrle.h" "$gen/"
if ! grep -q xbzrle_encode_buffer_avx512 "$gen/xbzrle.c"; then
	echo "QEMU $version has no xbzrle_encode_buffer_avx512 (QEMU 8.x+ has): use a newer QEMU_SUITE or QEMU_SRC" >&2
	exit 2
fi
# QEMU's own helpers, each function cut out whole (from its signature to
# the first closing brace at column 0).
cut_fn() { awk -v sig="$2" 'index($0, sig) == 1 {on = 1} on {print} on && /^}/ {exit}' "$1"; }
{
	echo '/* Cut out of QEMU util/cutils.c by livemig scripts/qemu-xbzrle-bench.sh */'
	echo '#include "qemu/osdep.h"'
	echo '#include "qemu/cutils.h"'
	cut_fn "$src/util/cutils.c" 'int uleb128_encode_small('
	cut_fn "$src/util/cutils.c" 'int uleb128_decode_small('
} >"$gen/qemu_uleb.c"
{
	echo '/* Cut out of QEMU include/qemu/host-utils.h by livemig scripts/qemu-xbzrle-bench.sh */'
	cut_fn "$src/include/qemu/host-utils.h" 'static inline int ctz64('
} >"$gen/qemu_ctz64.h"
for f in qemu_uleb.c qemu_ctz64.h; do
	if [[ $(grep -c '^}' "$gen/$f") -lt 1 ]]; then
		echo "could not cut QEMU's helpers out of its source ($f)" >&2
		exit 2
	fi
done

bin=$tmp/qemuxbzrle
(cd "$repo" && CGO_ENABLED=1 CGO_CFLAGS="${QEMU_CFLAGS:--O2} -I$gen" go build -tags qemuxbzrle -o "$bin" ./scripts/qemuxbzrle)

status=0
for p in $paths; do
	LIVEMIG_DELTA_PATH=$p "$bin" -qemu "$version" -cflags "${QEMU_CFLAGS:--O2}" "$@" || status=1
	echo
done
exit $status
