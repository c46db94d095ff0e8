#!/usr/bin/env bash
# memmigrate-faults.sh runs the fault matrix of examples/memmigrate: two real
# memmigrate processes, a destination and a source with the default flags
# (plus a small -size, a short -liveness and -recover-wait to keep it fast),
# talk through internal/faultproxy, which injects one fault per run:
#
#   modes   precopy, postcopy, hybrid, adaptive (pre-copy that would hand
#           off to post-copy; converging here, its cells are pre-copy's end
#           at a post-copy destination)
#   phases  bulk       the bulk round        (Page frame 20)
#           later      a later round         (after the EndRound of round 1)
#           stopcopy   the stop-and-copy     (the Switchover frame)
#           precommit  just before the Commit
#           postcommit just after the Commit
#           push       the post-copy push    (a Page frame after the Commit)
#   faults  close, stall, flip-header, flip-payload, half-open (source to
#           destination), return-path (half-open, destination to source
#           only), urgent-only (close of the post-copy urgent connection)
#
# Each run must end in one of two ways, read from the two processes' exit
# statuses and last stderr lines:
#
#   source running, destination not resumed   source exit 1 "guest running
#                                               HERE at the source (migration
#                                               failed", destination exit 1
#                                               "guest NOT resumed here"
#   completed (verified)                       both exit 0, "guest running at
#                                               the destination" / "guest
#                                               resumed HERE", report verified
#
# Anything else (a guest in doubt or split, a timeout, a contradiction, a
# fault that never fired, a cell that left no result) is a FAIL. The script
# prints a table and exits 1 on any FAIL. Cells where the phase does not
# exist for the mode (pre-copy has no push, pure post-copy no pre-copy
# round; the urgent connection is post-copy's) print n/a.
#
# Usage (from anywhere in the repository):
#
#   scripts/memmigrate-faults.sh                 # the whole matrix
#   MODES=hybrid PHASES="postcommit push" FAULTS=stall scripts/memmigrate-faults.sh
#
# Environment: MODES, PHASES, FAULTS (space-separated subsets), SIZE (MiB,
# default 64), LIVENESS (default 1s) and RECOVER_WAIT (default 3s), Go
# durations as the flags take them (1s, 1.5s, 500ms, 1m30s), JOBS (cells run
# at once, default 6), CELL_TIMEOUT (seconds a cell's processes may run,
# default LIVENESS + RECOVER_WAIT + 8 s), KEEP=1 keeps the logs (their
# directory is printed), V=1 prints each FAIL's logs. Every process listens
# on a port the kernel picks. SIGINT or SIGTERM stops the cells (their
# processes get SIGTERM) before the logs are removed.
set -u

ALL_MODES="precopy postcopy hybrid adaptive"
ALL_PHASES="bulk later stopcopy precommit postcommit push"
ALL_FAULTS="close stall flip-header flip-payload half-open return-path urgent-only"

# trigger MODE PHASE FAULT prints the faultproxy flags of a cell, or n/a.
trigger() {
	local mode=$1 phase=$2 fault=$3
	case $mode/$phase in
	precopy/push | postcopy/bulk | postcopy/later | adaptive/push)
		echo n/a
		return
		;;
	esac
	case $fault in
	return-path)
		case $phase in
		bulk) echo "-fault half-open -dir d2s -after-bytes 50" ;; # lost from the start
		later)
			# Only a hybrid source waits on the return path between rounds
			# (the Ack of its discards).
			if [ "$mode" = hybrid ]; then echo "-fault half-open -dir d2s -kind Ack -arg 1"; else echo n/a; fi
			;;
		stopcopy) echo "-fault half-open -dir d2s -kind Ack -arg 2" ;;        # AckReady lost
		precommit) echo "-fault half-open -dir d2s -kind Ack -arg 2 -after" ;; # AckReady through, then nothing
		postcommit) echo "-fault half-open -dir d2s -kind Ack -arg 3" ;;       # AckResumed lost
		push) echo "-fault half-open -dir d2s -kind Request -nth 2" ;;         # page requests lost
		esac
		return
		;;
	urgent-only)
		# Pre-copy has no urgent connection; pre-copy's end of an adaptive
		# migration sends nothing on it.
		if [ "$mode" = precopy ] || { [ "$mode" = adaptive ] && [ "$phase" != bulk ]; }; then
			echo n/a
			return
		fi
		case $phase in
		bulk) echo "-fault close -conn 1 -dir s2d -after-bytes 50" ;; # lost before the hand-over
		postcommit) echo "-fault close -conn 1 -kind Page -nth 1" ;; # the first requested page
		push) echo "-fault close -conn 1 -kind EndRound" ;;          # the urgent connection's end marker
		*) echo n/a ;;                                                # nothing on it but heartbeats
		esac
		return
		;;
	esac
	local at
	case $phase in
	bulk) at="-kind Page -nth 20" ;;
	later) at="-kind EndRound -arg 1 -after" ;;
	stopcopy) at="-kind Switchover" ;;
	precommit) at="-kind Commit" ;;
	postcommit) at="-kind Commit -after" ;;
	push) at="-kind Page -nth 20 -since Commit" ;; # the 20th Page frame of the push
	esac
	case $fault in
	flip-header | flip-payload)
		# A flip hits the frame itself, not the one after it.
		case $phase in
		later) at="-kind EndRound -arg 1" ;;
		postcommit) at="-dir d2s -kind Ack -arg 3" ;; # the AckResumed the Commit brings back
		esac
		;;
	esac
	echo "-fault $fault $at"
}

# waitfor FILE TEXT waits up to 10 s for TEXT in FILE.
waitfor() {
	for _ in $(seq 100); do
		grep -q "$2" "$1" 2>/dev/null && return 0
		sleep 0.1
	done
	return 1
}

# addr FILE PREFIX prints the address after PREFIX on FILE's first line that
# starts with it ("destination: listening on ", "faultproxy: listening on ").
addr() {
	sed -n "s/^$2\([^ ,]*\).*/\1/p" "$1" | head -n 1
}

# cell IDX MODE PHASE FAULT runs one cell and writes its row to $WORK/row.IDX.
cell() {
	local idx=$1 mode=$2 phase=$3 fault=$4
	local dir=$WORK/$idx-$mode-$phase-$fault row=$WORK/row.$idx
	local args
	args=$(trigger "$mode" "$phase" "$fault")
	if [ "$args" = n/a ]; then
		printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$mode" "$phase" "$fault" - n/a "" >"$row"
		return
	fi
	mkdir -p "$dir"
	# Whatever ends the cell (a signal too) ends its processes: each runs
	# under timeout, which passes the SIGTERM on.
	# Globals: the EXIT trap runs after cell has returned.
	dpid="" ppid="" spid=""
	trap 'kill $spid $ppid $dpid 2>/dev/null; wait 2>/dev/null' EXIT
	trap 'exit 1' INT TERM
	local common=(-size "$SIZE" -mode "$mode" -liveness "$LIVENESS" -recover-wait "$RECOVER_WAIT")
	echo "faultproxy $args" >"$dir/cmd"
	timeout -k 2 "$CELL_TIMEOUT" "$BIN/memmigrate" -listen 127.0.0.1:0 "${common[@]}" \
		>"$dir/dst.out" 2>"$dir/dst.err" &
	dpid=$!
	local src=setup dst=setup daddr="" paddr=""
	if waitfor "$dir/dst.err" "^destination: listening on " &&
		daddr=$(addr "$dir/dst.err" "destination: listening on ") && [ -n "$daddr" ]; then
		# shellcheck disable=SC2086 # $args is a list of flags
		timeout -k 2 "$CELL_TIMEOUT" "$BIN/faultproxy" -listen 127.0.0.1:0 -to "$daddr" $args \
			>"$dir/proxy.out" 2>"$dir/proxy.err" &
		ppid=$!
		if waitfor "$dir/proxy.err" "^faultproxy: listening on " &&
			paddr=$(addr "$dir/proxy.err" "faultproxy: listening on ") && [ -n "$paddr" ]; then
			# In the background, so that a signal to this shell is
			# handled at once (wait returns), not after the source.
			timeout -k 2 "$CELL_TIMEOUT" "$BIN/memmigrate" -connect "$paddr" "${common[@]}" \
				>"$dir/src.out" 2>"$dir/src.err" &
			spid=$!
			wait "$spid"
			src=$?
			spid=""
			wait "$dpid"
			dst=$?
			dpid=""
		fi
	fi
	kill $dpid $ppid 2>/dev/null
	wait 2>/dev/null
	dpid="" ppid=""
	local fired=no
	grep -q '^fired:' "$dir/proxy.out" 2>/dev/null && fired=yes
	local sl dl
	sl=$(tail -n 1 "$dir/src.err" 2>/dev/null)
	dl=$(tail -n 1 "$dir/dst.err" 2>/dev/null)
	local outcome
	if [ "$src" = 0 ] && [ "$dst" = 0 ] &&
		[ "$sl" = "source: guest running at the destination (migration complete)" ] &&
		[[ $dl == "destination: guest resumed HERE" || $dl == "destination: guest resumed HERE (the source may be left in doubt: "* ]] &&
		grep -q '"verified": true' "$dir/src.out"; then
		outcome="completed (verified)"
	elif [ "$src" = 1 ] && [ "$dst" = 1 ] &&
		[[ $sl == "source: guest running HERE at the source (migration failed"* ]] &&
		[[ $dl == "destination: guest NOT resumed here: "* ]]; then
		outcome="source running, destination not resumed"
	else
		local why="exit $src/$dst"
		[ "$src" = 124 ] || [ "$src" = 137 ] && why="source timed out"
		[ "$dst" = 124 ] || [ "$dst" = 137 ] && why="$why, destination timed out"
		outcome="FAIL ($why)"
	fi
	if [ "$fired" = no ]; then
		# The cell tested nothing: the run did not meet its fault.
		outcome="FAIL (the fault did not fire; the run: $outcome)"
	fi
	printf '%s | %s\n' "$sl" "$dl" >"$dir/lines"
	printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$mode" "$phase" "$fault" "$fired" "$outcome" "$dir" >"$row"
}

# secs DURATION prints a Go duration (300ms, 1.5s, 1m30s, 0) in whole
# seconds, rounded up; it fails on anything else.
secs() {
	LC_ALL=C awk -v d="$1" 'BEGIN {
		s = d; t = 0
		if (s == "0") { print 0; exit 0 }
		if (s == "") exit 1
		while (s != "") {
			if (!match(s, /^([0-9]+(\.[0-9]*)?|\.[0-9]+)(ns|us|\302\265s|\316\274s|ms|s|m|h)/)) exit 1
			tok = substr(s, 1, RLENGTH); s = substr(s, RLENGTH + 1)
			match(tok, /[^0-9.]+$/)
			u = substr(tok, RSTART); v = substr(tok, 1, RSTART - 1) + 0
			if (u == "h") t += v * 3600
			else if (u == "m") t += v * 60
			else if (u == "s") t += v
			else if (u == "ms") t += v / 1e3
			else if (u == "ns") t += v / 1e9
			else t += v / 1e6
		}
		printf "%d\n", (t == int(t)) ? t : int(t) + 1
	}'
}

if [ "${1:-}" = --cell ]; then
	shift
	cell "$@"
	exit 0
fi

ROOT=$(cd "$(dirname "$0")/.." && pwd)
GO=${GO:-$(command -v go || echo /usr/local/go/bin/go)}
MODES=${MODES:-$ALL_MODES}
PHASES=${PHASES:-$ALL_PHASES}
FAULTS=${FAULTS:-$ALL_FAULTS}
SIZE=${SIZE:-64}
LIVENESS=${LIVENESS:-1s}
RECOVER_WAIT=${RECOVER_WAIT:-3s}
JOBS=${JOBS:-6}
live=$(secs "$LIVENESS") || {
	echo "LIVENESS=$LIVENESS: not a Go duration (1s, 1.5s, 500ms, 1m)" >&2
	exit 2
}
[ "$live" = 0 ] && live=5 # -liveness 0: the library's default
wait_s=$(secs "$RECOVER_WAIT") || {
	echo "RECOVER_WAIT=$RECOVER_WAIT: not a Go duration (1s, 1.5s, 500ms, 1m)" >&2
	exit 2
}
# A cell may take the migration itself, the detection of a silent peer, and
# the recovery wait; a few seconds more is a hang.
CELL_TIMEOUT=${CELL_TIMEOUT:-$((live + wait_s + 8))}

WORK=$(mktemp -d "${TMPDIR:-/tmp}/memmigrate-faults.XXXXXX")
BIN=$WORK/bin
xpid=""
# cleanup stops the cells still running (xargs and the cells' shells share
# xargs' process group; each cell's trap stops its processes), waits for
# them, and removes the logs unless KEEP=1.
cleanup() {
	if [ -n "$xpid" ]; then
		kill -TERM -- "-$xpid" 2>/dev/null
		wait "$xpid" 2>/dev/null
	fi
	[ "${KEEP:-0}" = 1 ] || rm -rf "$WORK"
}
trap cleanup EXIT
trap 'echo "interrupted" >&2; exit 130' INT
trap 'echo "terminated" >&2; exit 143' TERM
echo "building into $BIN ..." >&2
(cd "$ROOT" && "$GO" build -o "$BIN/memmigrate" ./examples/memmigrate &&
	"$GO" build -o "$BIN/faultproxy" ./internal/faultproxy/cmd/faultproxy) || exit 2
export WORK BIN SIZE LIVENESS RECOVER_WAIT CELL_TIMEOUT

idx=0
for mode in $MODES; do
	for phase in $PHASES; do
		for fault in $FAULTS; do
			echo "$idx $mode $phase $fault"
			idx=$((idx + 1))
		done
	done
done >"$WORK/cells"
echo "running $idx cells, $JOBS at a time, -size $SIZE -liveness $LIVENESS -recover-wait $RECOVER_WAIT, timeout ${CELL_TIMEOUT}s each ..." >&2
start=$(date +%s)
# xargs in its own process group (job control on just for it), so that
# cleanup can stop it and every cell; in the background, so that a signal
# here is handled at once.
set -m
xargs -P "$JOBS" -L 1 "$0" --cell <"$WORK/cells" &
xpid=$!
set +m
wait "$xpid"
xrc=$?
xpid=""

fails=0
if [ "$xrc" != 0 ]; then
	echo "xargs exited $xrc: a cell failed to run" >&2
	fails=$((fails + 1))
fi
printf '%-9s %-11s %-13s %-6s %s\n' MODE PHASE FAULT FIRED OUTCOME
while read -r i cmode cphase cfault; do
	mode=$cmode phase=$cphase fault=$cfault fired=- outcome="FAIL (no result)" dir=""
	if [ -s "$WORK/row.$i" ]; then
		IFS=$'\t' read -r mode phase fault fired outcome dir <"$WORK/row.$i"
	fi
	printf '%-9s %-11s %-13s %-6s %s\n' "$mode" "$phase" "$fault" "$fired" "$outcome"
	if [[ $outcome == FAIL* ]]; then
		fails=$((fails + 1))
		[ -n "$dir" ] || continue
		printf '          %s\n' "$(cat "$dir/cmd" 2>/dev/null)" "$(cat "$dir/lines" 2>/dev/null)"
		if [ "${V:-0}" = 1 ]; then
			for f in src.err dst.err proxy.out; do
				echo "          --- $f"
				sed 's/^/          /' "$dir/$f" 2>/dev/null
			done
		fi
	fi
done <"$WORK/cells"
echo "$idx cells in $(($(date +%s) - start)) s, $fails FAIL" >&2
[ "${KEEP:-0}" = 1 ] && echo "logs in $WORK" >&2
[ "$fails" = 0 ]
