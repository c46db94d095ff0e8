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
	d := encode(win, old, new[:len(old)], limit)
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
func encode(out, old, new []byte, limit int) int {
	n := len(new)
	old = old[:n]
	w := len(out)
	d, i := 0, 0
	for i < n {
		// Room for a run header (QEMU checks before scanning each zrun).
		if d+2 > limit {
			return -1
		}
		// Maximal unchanged run from i.
		j := i
		if j+8 <= n {
			if x := load64(old, j) ^ load64(new, j); x != 0 {
				j += bits.TrailingZeros64(x) >> 3
			} else {
				j += 8
				j += eqLen(old[j:], new[j:])
			}
		} else {
			for j < n && old[j] == new[j] {
				j++
			}
		}
		if j == n {
			if i == 0 {
				return 0
			}
			return d // the final unchanged run is not written
		}
		d += putUleb(out[d:], j-i)
		if d+2 > limit {
			return -1
		}
		// Maximal changed run from j (old[j] != new[j]).
		k := j
		if k+8 <= n {
			x := load64(old, k) ^ load64(new, k)
			// High bit of each byte of z set where that byte of x is 0.
			z := ^(((x & lo7) + lo7) | x) & hi8
			if z != 0 {
				k += bits.TrailingZeros64(z) >> 3
			} else {
				k += 8
				k += neLen(old[k:], new[k:])
			}
		} else {
			for k < n && old[k] != new[k] {
				k++
			}
		}
		m := k - j
		d += putUleb(out[d:], m)
		if d+m > limit {
			return -1
		}
		if m < 8 && d+8 <= w && j+8 <= n {
			// Short run: one 8-byte store; the bytes past d+m are
			// overwritten later or lie beyond the returned length.
			binary.LittleEndian.PutUint64(out[d:], load64(new, j))
		} else {
			copy(out[d:], new[j:k])
		}
		d += m
		i = k
	}
	return d
}

func load64(b []byte, i int) uint64 { return binary.LittleEndian.Uint64(b[i:]) }

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

// eqLenGeneric returns the length of the longest common prefix of a and b
// (len(b) >= len(a)), eight bytes at a time.
func eqLenGeneric(a, b []byte) int {
	n := len(a)
	b = b[:n]
	i := 0
	for ; i+32 <= n; i += 32 {
		x0 := load64(a, i) ^ load64(b, i)
		x1 := load64(a, i+8) ^ load64(b, i+8)
		x2 := load64(a, i+16) ^ load64(b, i+16)
		x3 := load64(a, i+24) ^ load64(b, i+24)
		if x0|x1|x2|x3 != 0 {
			break
		}
	}
	for ; i+8 <= n; i += 8 {
		if x := load64(a, i) ^ load64(b, i); x != 0 {
			return i + bits.TrailingZeros64(x)>>3
		}
	}
	for i < n && a[i] == b[i] {
		i++
	}
	return i
}

// neLenGeneric returns the length of the longest prefix where a and b
// differ in every byte (len(b) >= len(a)), eight bytes at a time.
func neLenGeneric(a, b []byte) int {
	n := len(a)
	b = b[:n]
	i := 0
	for ; i+32 <= n; i += 32 {
		x0 := load64(a, i) ^ load64(b, i)
		x1 := load64(a, i+8) ^ load64(b, i+8)
		x2 := load64(a, i+16) ^ load64(b, i+16)
		x3 := load64(a, i+24) ^ load64(b, i+24)
		// High bit of each byte set where that byte is non-zero.
		t := (((x0 & lo7) + lo7) | x0) & (((x1 & lo7) + lo7) | x1) &
			(((x2 & lo7) + lo7) | x2) & (((x3 & lo7) + lo7) | x3)
		if t&hi8 != hi8 {
			break
		}
	}
	for ; i+8 <= n; i += 8 {
		x := load64(a, i) ^ load64(b, i)
		if z := ^(((x & lo7) + lo7) | x) & hi8; z != 0 {
			return i + bits.TrailingZeros64(z)>>3
		}
	}
	for i < n && a[i] != b[i] {
		i++
	}
	return i
}

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
		if m <= 8 {
			for k := range m {
				page[d+k] = delta[i+k]
			}
		} else {
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
