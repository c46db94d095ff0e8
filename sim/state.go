package sim

import (
	"encoding/binary"
	"fmt"
	"time"

	"github.com/livemig/livemig"
)

// The CPU/device state a Guest saves is StateSize bytes (little-endian
// words):
//
//	magic   "LMSIMST1"
//	tag     a hash of the guest's seed
//	time    the guest's running time, in ns
//	writes  the writes applied so far
//	check   a hash of the four words above and the size
//	filler  pseudo-random bytes drawn from check, up to StateSize
//
// so that it is deterministic, changes as the guest runs, and any changed
// byte is caught by LoadState.
const stateMagic = "LMSIMST1"

const stateHeader = 40

func stateCheck(tag, t, writes uint64, size int) uint64 {
	return mix(tag ^ mix(t^mix(writes^mix(uint64(size)^0x7374617465))))
}

// appendState appends the state of a guest of layout l at running time t
// after writes writes.
func appendState(dst []byte, l *layout, t time.Duration, writes uint64) []byte {
	size := l.state
	if size == 0 {
		return dst
	}
	tag := l.tag
	check := stateCheck(tag, uint64(t), writes, size)
	dst = append(dst, stateMagic...)
	dst = binary.LittleEndian.AppendUint64(dst, tag)
	dst = binary.LittleEndian.AppendUint64(dst, uint64(t))
	dst = binary.LittleEndian.AppendUint64(dst, writes)
	dst = binary.LittleEndian.AppendUint64(dst, check)
	s := check
	for i := stateHeader; i < size; i += 8 {
		dst = binary.LittleEndian.AppendUint64(dst, wy(&s))
	}
	return dst
}

// checkState returns nil if state is one a guest of layout l saves, and an error wrapping livemig.ErrCorrupt naming the first
// bad byte otherwise. It allocates nothing.
func checkState(state []byte, l *layout) error {
	size := l.state
	if len(state) != size {
		return fmt.Errorf("sim: load state: %w: %d bytes, want %d", livemig.ErrCorrupt, len(state), size)
	}
	if size == 0 {
		return nil
	}
	bad := func(off int, what string) error {
		return fmt.Errorf("sim: load state: %w: %s at byte %d", livemig.ErrCorrupt, what, off)
	}
	if string(state[:8]) != stateMagic {
		return bad(0, "bad magic")
	}
	tag := binary.LittleEndian.Uint64(state[8:])
	if tag != l.tag {
		return bad(8, "state of another guest (seed differs)")
	}
	t := binary.LittleEndian.Uint64(state[16:])
	writes := binary.LittleEndian.Uint64(state[24:])
	check := binary.LittleEndian.Uint64(state[32:])
	if check != stateCheck(tag, t, writes, size) {
		return bad(16, "header check failed")
	}
	s := check
	for i := stateHeader; i < size; i += 8 {
		if binary.LittleEndian.Uint64(state[i:]) != wy(&s) {
			return bad(i, "filler differs")
		}
	}
	return nil
}
