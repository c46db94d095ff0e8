#!/usr/bin/env bash
# memmigrate-faults.sh runs the fault matrix of examples/memmigrate: two real
# memmigrate processes, a destination and a source with the default flags
# (plus a small -size, a short -liveness and -recover-wait to keep it fast),
# talk through internal/faultproxy, which injects one fault per run:
#
#   modes   precopy, postcopy, hybrid
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
#                                               HERE at the source", destination
#                                               exit 1 "guest NOT resumed here"
#   completed (verified)                       both exit 0, "guest running at
#                                               the destination" / "guest
#                                               resumed HERE", report verified
#
# Anything else (a guest in doubt or split, a timeout, a contradiction) is a
# FAIL. The script prints a table and exits 1 on any FAIL. Cells where the
# phase does not exist for the mode (pre-copy has no push, pure post-copy no
# pre-copy round; the urgent connection is post-copy's) print n/a.
#
# Usage (from anywhere in the repository):
#
#   scripts/memmigrate-faults.sh                 # the whole matrix
#   MODES=hybrid PHASES="postcommit push" FAULTS=stall scripts/memmigrate-faults.sh
#
# Environment: MODES, PHASES, FAULTS (space-separated subsets), SIZE (MiB,
# default 64), LIVENESS (default 1s), RECOVER_WAIT (default 3s), JOBS (cells
# run at once, default 6), PORT_BASE (default 23000; each cell takes two
# ports from it), KEEP=1 keeps the logs (their directory is printed), V=1
# prints each FAIL's logs.
set -u

ALL_MODES="precopy postcopy hybrid"
ALL_PHASES="bulk later stopcopy precommit postcommit push"
ALL_FAULTS="close stall flip-header flip-payload half-open return-path urgent-only"

# trigger MODE PHASE FAULT prints the faultproxy flags of a cell, or n/a.
trigger() {
	local mode=$1 phase=$2 fault=$3
	case $mode/$phase in
	precopy/push | postcopy/bulk | postcopy/later)
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
		if [ "$mode" = precopy ]; then
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
	push)
		# Pure post-copy sends every page after the Commit; hybrid's bulk
		# round takes about 265 Page frames at -size 64.
		if [ "$mode" = hybrid ]; then at="-kind Page -nth $((SIZE * 256 / 63 + 40))"; else at="-kind Page -nth 20"; fi
		;;
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
	local dport=$((PORT_BASE + 2 * idx)) pport=$((PORT_BASE + 2 * idx + 1))
	local common=(-size "$SIZE" -mode "$mode" -liveness "$LIVENESS" -recover-wait "$RECOVER_WAIT")
	echo "faultproxy $args" >"$dir/cmd"
	timeout -k 2 "$CELL_TIMEOUT" "$BIN/memmigrate" -listen "127.0.0.1:$dport" "${common[@]}" \
		>"$dir/dst.out" 2>"$dir/dst.err" &
	local dpid=$!
	# shellcheck disable=SC2086 # $args is a list of flags
	"$BIN/faultproxy" -listen "127.0.0.1:$pport" -to "127.0.0.1:$dport" $args >"$dir/proxy.out" 2>"$dir/proxy.err" &
	local ppid=$!
	local src=setup dst=setup
	if waitfor "$dir/dst.err" "listening on" && waitfor "$dir/proxy.err" "listening on"; then
		timeout -k 2 "$CELL_TIMEOUT" "$BIN/memmigrate" -connect "127.0.0.1:$pport" "${common[@]}" \
			>"$dir/src.out" 2>"$dir/src.err"
		src=$?
		wait "$dpid"
		dst=$?
	else
		kill "$dpid" 2>/dev/null
		wait "$dpid" 2>/dev/null
	fi
	kill "$ppid" 2>/dev/null
	wait "$ppid" 2>/dev/null
	local fired=no
	grep -q '^fired:' "$dir/proxy.out" 2>/dev/null && fired=yes
	local sl dl
	sl=$(tail -n 1 "$dir/src.err" 2>/dev/null)
	dl=$(tail -n 1 "$dir/dst.err" 2>/dev/null)
	local outcome
	if [ "$src" = 0 ] && [ "$dst" = 0 ] &&
		[ "$sl" = "source: guest running at the destination (migration complete)" ] &&
		[ "$dl" = "destination: guest resumed HERE" ] &&
		grep -q '"verified": true' "$dir/src.out"; then
		outcome="completed (verified)"
	elif [ "$src" = 1 ] && [ "$dst" = 1 ] &&
		[[ $sl == "source: guest running HERE at the source (migration failed before the hand-over: "* ]] &&
		[[ $dl == "destination: guest NOT resumed here: "* ]]; then
		outcome="source running, destination not resumed"
	else
		local why="exit $src/$dst"
		[ "$src" = 124 ] || [ "$src" = 137 ] && why="source timed out"
		[ "$dst" = 124 ] || [ "$dst" = 137 ] && why="$why, destination timed out"
		outcome="FAIL ($why)"
	fi
	printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$mode" "$phase" "$fault" "$fired" "$outcome" "$dir" >"$row"
	printf '%s | %s\n' "$sl" "$dl" >"$dir/lines"
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
PORT_BASE=${PORT_BASE:-23000}
secs() { # a Go duration of whole seconds or milliseconds, in whole seconds rounded up
	case $1 in
	*ms) echo $(((${1%ms} + 999) / 1000)) ;;
	*s) echo "${1%s}" ;;
	*) echo "$1" ;;
	esac
}
# A cell may take the migration itself, the detection of a silent peer, and
# the recovery wait; a few seconds more is a hang.
CELL_TIMEOUT=${CELL_TIMEOUT:-$(($(secs "$LIVENESS") + $(secs "$RECOVER_WAIT") + 8))}

WORK=$(mktemp -d "${TMPDIR:-/tmp}/memmigrate-faults.XXXXXX")
BIN=$WORK/bin
[ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$WORK"' EXIT
echo "building into $BIN ..." >&2
(cd "$ROOT" && "$GO" build -o "$BIN/memmigrate" ./examples/memmigrate &&
	"$GO" build -o "$BIN/faultproxy" ./internal/faultproxy/cmd/faultproxy) || exit 2
export WORK BIN SIZE LIVENESS RECOVER_WAIT PORT_BASE CELL_TIMEOUT

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
xargs -P "$JOBS" -L 1 "$0" --cell <"$WORK/cells"

fails=0
printf '%-9s %-11s %-13s %-6s %s\n' MODE PHASE FAULT FIRED OUTCOME
for ((i = 0; i < idx; i++)); do
	IFS=$'\t' read -r mode phase fault fired outcome dir <"$WORK/row.$i"
	printf '%-9s %-11s %-13s %-6s %s\n' "$mode" "$phase" "$fault" "$fired" "$outcome"
	if [[ $outcome == FAIL* ]]; then
		fails=$((fails + 1))
		printf '          %s\n' "$(cat "$dir/cmd")" "$(cat "$dir/lines")"
		if [ "${V:-0}" = 1 ]; then
			for f in src.err dst.err proxy.out; do
				echo "          --- $f"
				sed 's/^/          /' "$dir/$f"
			done
		fi
	fi
done
echo "$idx cells in $(($(date +%s) - start)) s, $fails FAIL" >&2
[ "${KEEP:-0}" = 1 ] && echo "logs in $WORK" >&2
[ "$fails" = 0 ]
