package delta

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"

	"github.com/livemig/livemig"
)

// MaxPageSize is the largest page Encode accepts: every run length must fit
// in a two-byte ULEB128 (0x3FFF).
const MaxPageSize = 0x3FFF

var (
	// ErrUnchanged is returned by Encode when the new page equals the old
	// one: nothing needs to be sent (QEMU's encoder returns 0).
	ErrUnchanged = errors.New("delta: page unchanged")
	// ErrOverflow is returned by Encode when the delta would not fit in the
	// limit: send the page raw (QEMU's encoder returns -1).
	ErrOverflow = errors.New("delta: delta exceeds the limit")
	// ErrPageSize reports pages of different lengths, or longer than
	// MaxPageSize, or a cache given a page of the wrong size.
	ErrPageSize = errors.New("delta: bad page size")
)

// DecodeError is a delta that Decode rejected: Offset is the byte offset in
// the delta of the item that broke the format, Reason says which rule. It
// wraps livemig.ErrCorrupt.
type DecodeError struct {
	Offset int
	Reason string
}

func (e *DecodeError) Error() string {
	return fmt.Sprintf("delta: corrupt XBZRLE delta at offset %d: %s", e.Offset, e.Reason)
}

// Unwrap returns livemig.ErrCorrupt.
func (e *DecodeError) Unwrap() error { return livemig.ErrCorrupt }

// Reasons a DecodeError gives.
const (
	ReasonTruncated         = "fewer than 2 bytes left before a run length"
	ReasonLongLength        = "run length longer than 2 ULEB128 bytes"
	ReasonZeroZrun          = "unchanged run of 0 after the first"
	ReasonZeroNzrun         = "changed run of 0"
	ReasonPastPage          = "run past the end of the page"
	ReasonPastInput         = "changed run past the end of the delta"
	reasonNone              = ""
	hi8              uint64 = 0x8080808080808080
	lo7              uint64 = 0x7f7f7f7f7f7f7f7f
)

// Encode appends to dst the XBZRLE delta that turns old into new and returns
// the extended slice. old and new must have the same length, at most
// MaxPageSize; neither is modified.
//
// limit bounds the delta's length (not counting dst's existing bytes); 0 or
// less means len(new), QEMU's choice. The result is exactly QEMU's: the same
// bytes, ErrUnchanged where QEMU's encoder returns 0 (the pages are equal; an
// empty page counts as unchanged) and ErrOverflow where it returns -1 for a
// destination of limit bytes. QEMU's scalar encoder checks for room for two
// bytes before each run, including the final unchanged run it does not
// write, so ErrOverflow can come back even when the delta itself would have
// fitted, and always comes back for a limit of 1.
//
// On error Encode returns dst with its original length; it may have written
// into dst's spare capacity anyway. Encode writes only within
// dst[len(dst):len(dst)+limit] (never past 2·len(new)+16 bytes) and allocates
// only when dst's spare capacity is smaller than that: give it a buffer with
// room for a page to encode with zero allocations.
func Encode(dst, old, new []byte, limit int) ([]byte, error) {
	n := len(new)
	if len(old) != n || n > MaxPageSize {
		return dst, ErrPageSize
	}
	if n == 0 {
		return dst, ErrUnchanged
	}
	if limit <= 0 {
		limit = n
	}
	if limit < 2 {
		return dst, ErrOverflow
	}
	// The canonical delta of an n-byte page is at most 3n/2+3 bytes (one
	// byte of header per one-byte run), so a window of 2n+16 bytes holds any
	// output plus the 8-byte stores below.
	w := min(limit, 2*n+16)
	base := len(dst)
	out := dst
	if cap(dst)-base < w {
		out = append(dst[:base:base], make([]byte, w)...)
	}
	win := out[base : base+w]
	d := encodePage(win, old, new[:len(old)], limit)
	if d <= 0 {
		if d == 0 {
			return dst, ErrUnchanged
		}
		return dst, ErrOverflow
	}
	return out[:base+d], nil
}

// encode writes the delta of new against old into out and returns its
// length, 0 for unchanged or -1 for overflow. len(old) == len(new) > 0,
// limit >= 2, len(out) >= min(limit, 2n+16).
//
// It first computes, for each 64-byte block, a mask with bit k set where
// byte k of the block is unchanged (eqMasks: AVX2 or eight bytes at a time in
// Go), then walks the run boundaries of each mask with bit tricks, so that
// a block inside a long run costs a few instructions and a short run no
// branch of its own. It makes the same room checks as QEMU's scalar encoder
// with the same values of d: before each unchanged run (even the final one,
// which is not written), after each unchanged run's header, and after each
// changed run's header; so it fails exactly when QEMU's does.
func encode(out, old, new []byte, limit int) int {
	n := len(new)
	old = old[:n]
	w := len(out)
	d := 0
	start := 0  // first byte of the current run
	inZ := true // whether the current run is of unchanged bytes
	var masks [chunkBlocks]uint64
	for c := 0; c < n; c += 64 * chunkBlocks {
		nb := min(chunkBlocks, (n-c+63)/64)
		full := min(nb, (n-c)/64)
		all, any := eqMasks(masks[:full], old[c:], new[c:])
		if full < nb {
			// The last partial block, byte by byte; the bytes past the
			// page count as unchanged, so a changed run at the end of
			// the page closes at n like any other.
			m := ^uint64(0)
			for k := c + full*64; k < n; k++ {
				if old[k] != new[k] {
					m &^= 1 << (k - c - full*64)
				}
			}
			masks[full] = m
			all &= m
			any |= m
		}
		if (inZ && all == ^uint64(0)) || (!inZ && any == 0 && full == nb) {
			continue // the whole chunk continues the current run
		}
		for b, m := range masks[:nb] {
			// Bit k of t is set where byte k's state differs from byte
			// k-1's; byte -1's state is the current run's.
			carry := uint64(0)
			if inZ {
				carry = 1
			}
			t := m ^ (m<<1 | carry)
			for t != 0 {
				p := c + b*64 + bits.TrailingZeros64(t)
				t &= t - 1
				if inZ {
					if d+2 > limit {
						return -1
					}
					d += putUleb(out[d:], p-start)
					if d+2 > limit {
						return -1
					}
				} else {
					m := p - start
					d += putUleb(out[d:], m)
					if d+m > limit {
						return -1
					}
					if m <= 8 && d+8 <= w && start+8 <= n {
						// One 8-byte store; the bytes past d+m are
						// overwritten later or lie beyond the result.
						binary.LittleEndian.PutUint64(out[d:], load64(new, start))
					} else {
						copy(out[d:d+m], new[start:p])
					}
					d += m
				}
				inZ = !inZ
				start = p
			}
		}
	}
	if !inZ {
		// The page ends with a changed run (n is a multiple of 64).
		m := n - start
		d += putUleb(out[d:], m)
		if d+m > limit {
			return -1
		}
		copy(out[d:d+m], new[start:n])
		return d + m
	}
	switch {
	case start == 0:
		return 0 // no boundary at all: unchanged
	case start == n:
		return d // the last changed run ended the page
	case d+2 > limit:
		return -1 // no room before the final unchanged run
	}
	return d // the final unchanged run is not written
}

// chunkBlocks is how many 64-byte blocks encode compares per call of
// eqMasks.
const chunkBlocks = 16

func load64(b []byte, i int) uint64 { return binary.LittleEndian.Uint64(b[i:]) }

// le64 is binary.LittleEndian.Uint64 for slices of proven length.
func le64(b []byte) uint64 { return binary.LittleEndian.Uint64(b) }

// putUleb writes v (< 0x4000) as ULEB128 and returns its length.
func putUleb(b []byte, v int) int {
	if v < 0x80 {
		b[0] = byte(v)
		return 1
	}
	_ = b[1]
	b[0] = byte(v) | 0x80
	b[1] = byte(v >> 7)
	return 2
}

// eqMasksGeneric sets masks[j] bit k where a[64j+k] == b[64j+k], for
// len(masks) blocks (len(a), len(b) >= 64*len(masks)), eight bytes at a
// time, and returns the AND and the OR of the masks.
func eqMasksGeneric(masks []uint64, a, b []byte) (all, any uint64) {
	n := 64 * len(masks)
	a, b = a[:n], b[:n]
	if string(a) == string(b) {
		// Unchanged stretches are common: let the runtime's memequal
		// find them.
		for j := range masks {
			masks[j] = ^uint64(0)
		}
		return ^uint64(0), ^uint64(0)
	}
	all = ^uint64(0)
	for j := range masks {
		pa, pb := (*[64]byte)(a[64*j:64*j+64]), (*[64]byte)(b[64*j:64*j+64])
		x0, x1 := le64(pa[0:])^le64(pb[0:]), le64(pa[8:])^le64(pb[8:])
		x2, x3 := le64(pa[16:])^le64(pb[16:]), le64(pa[24:])^le64(pb[24:])
		x4, x5 := le64(pa[32:])^le64(pb[32:]), le64(pa[40:])^le64(pb[40:])
		x6, x7 := le64(pa[48:])^le64(pb[48:]), le64(pa[56:])^le64(pb[56:])
		m := ^uint64(0)
		if x0|x1|x2|x3|x4|x5|x6|x7 != 0 {
			e0, e1, e2, e3 := zeroBytes(x0), zeroBytes(x1), zeroBytes(x2), zeroBytes(x3)
			e4, e5, e6, e7 := zeroBytes(x4), zeroBytes(x5), zeroBytes(x6), zeroBytes(x7)
			m = 0
			if e0|e1|e2|e3|e4|e5|e6|e7 != 0 {
				m = gather(e0) | gather(e1)<<8 | gather(e2)<<16 | gather(e3)<<24 |
					gather(e4)<<32 | gather(e5)<<40 | gather(e6)<<48 | gather(e7)<<56
			}
		}
		masks[j] = m
		all &= m
		any |= m
	}
	return all, any
}

// zeroBytes returns v's zero bytes as their high bit set (exact: no borrow
// crosses bytes).
func zeroBytes(v uint64) uint64 { return ^(((v & lo7) + lo7) | v) & hi8 }

// gather packs the high bits of e's eight bytes (e has no other bits set)
// into one byte, byte k's bit at bit k.
func gather(e uint64) uint64 { return (e >> 7) * 0x0102040810204080 >> 56 }

// Decode applies delta to page in place: page holds the previous version
// and ends up holding the new one. The page length is len(page); bytes the
// delta does not cover keep their value.
//
// Decode accepts exactly the deltas QEMU's xbzrle_decode_buffer accepts for a
// destination of len(page) bytes (including an empty delta and non-minimal
// two-byte lengths such as 80 00) and rejects the others with a
// *DecodeError, which wraps livemig.ErrCorrupt. On error page is unchanged:
// Decode checks the whole delta before writing. It reads delta only and
// never allocates on success. QEMU's stream layer also rejects deltas
// longer than a page; that check belongs to the caller.
func Decode(page, delta []byte) error {
	if off, reason := validate(delta, len(page)); reason != reasonNone {
		return &DecodeError{Offset: off, Reason: reason}
	}
	apply(page, delta)
	return nil
}

// Validate reports whether Decode would accept delta for a page of pageSize
// bytes, returning the same error Decode would, without touching any page.
func Validate(delta []byte, pageSize int) error {
	if off, reason := validate(delta, pageSize); reason != reasonNone {
		return &DecodeError{Offset: off, Reason: reason}
	}
	return nil
}

// validate walks delta with QEMU's decoder rules and returns the offset and
// reason of the first violation, or reasonNone.
func validate(delta []byte, n int) (int, string) {
	s := len(delta)
	i, d := 0, 0
	for i < s {
		if s-i < 2 {
			return i, ReasonTruncated
		}
		z, l := getUleb(delta[i], delta[i+1])
		if l < 0 {
			return i, ReasonLongLength
		}
		if i != 0 && z == 0 {
			return i, ReasonZeroZrun
		}
		if d+z > n {
			return i, ReasonPastPage
		}
		i += l
		d += z
		if s-i < 2 {
			return i, ReasonTruncated
		}
		m, l := getUleb(delta[i], delta[i+1])
		if l < 0 {
			return i, ReasonLongLength
		}
		if m == 0 {
			return i, ReasonZeroNzrun
		}
		if d+m > n {
			return i, ReasonPastPage
		}
		if i+l+m > s {
			return i, ReasonPastInput
		}
		i += l + m
		d += m
	}
	return 0, reasonNone
}

// apply writes a delta that validate accepted onto page.
func apply(page, delta []byte) {
	s := len(delta)
	i, d := 0, 0
	for i < s {
		z, l := getUleb(delta[i], delta[i+1])
		i += l
		d += z
		m, l := getUleb(delta[i], delta[i+1])
		i += l
		switch {
		case m == 1:
			page[d] = delta[i]
		case m <= 3:
			// Two 2-byte stores that overlap when m is 3.
			binary.LittleEndian.PutUint16(page[d:], binary.LittleEndian.Uint16(delta[i:]))
			binary.LittleEndian.PutUint16(page[d+m-2:], binary.LittleEndian.Uint16(delta[i+m-2:]))
		case m <= 8:
			binary.LittleEndian.PutUint32(page[d:], binary.LittleEndian.Uint32(delta[i:]))
			binary.LittleEndian.PutUint32(page[d+m-4:], binary.LittleEndian.Uint32(delta[i+m-4:]))
		default:
			copy(page[d:d+m], delta[i:i+m])
		}
		i += m
		d += m
	}
}

// getUleb decodes a ULEB128 of at most two bytes from b0, b1 (b1 is read
// only if b0 has its continuation bit) and returns the value and the number
// of bytes used, or -1 if a third byte would follow.
func getUleb(b0, b1 byte) (int, int) {
	if b0 < 0x80 {
		return int(b0), 1
	}
	if b1 >= 0x80 {
		return 0, -1
	}
	return int(b0&0x7f) | int(b1)<<7, 2
}
