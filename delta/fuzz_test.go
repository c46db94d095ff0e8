package delta

import (
	"bytes"
	"errors"
	"testing"

	"github.com/livemig/livemig"
)

// FuzzDecode: Decode never panics, never writes outside the page, agrees
// with the reference decoder (QEMU's rules) on what it accepts and on the
// result, and leaves the page unchanged on error.
func FuzzDecode(f *testing.F) {
	f.Add([]byte("\x00\x00\x00\x00\x00\x00\x00\x00"), []byte("\x02\x02\xaa\xbb"))
	f.Fuzz(func(t *testing.T, page, delta []byte) {
		if len(page) > 2*MaxPageSize {
			page = page[:2*MaxPageSize]
		}
		const guard = 16
		buf := bytes.Repeat([]byte{0xa5}, len(page)+2*guard)
		copy(buf[guard:], page)
		p := buf[guard : guard+len(page) : guard+len(page)]
		err := Decode(p, delta)
		for i := range guard {
			if buf[i] != 0xa5 || buf[len(buf)-1-i] != 0xa5 {
				t.Fatal("Decode wrote outside the page")
			}
		}
		want, ok := refDecode(page, delta)
		if ok != (err == nil) {
			t.Fatalf("Decode: %v; reference accepts: %v", err, ok)
		}
		if err != nil {
			if !errors.Is(err, livemig.ErrCorrupt) {
				t.Fatalf("error %v does not wrap ErrCorrupt", err)
			}
			if !bytes.Equal(p, page) {
				t.Fatal("page changed on error")
			}
		} else if !bytes.Equal(p, want) {
			t.Fatal("decoded page differs from the reference")
		}
		if verr := Validate(delta, len(page)); (verr == nil) != (err == nil) {
			t.Fatalf("Validate %v, Decode %v", verr, err)
		}
	})
}

// FuzzRoundTrip: on every path Encode gives the reference encoder's bytes
// and outcome for the limit, and a delta decodes onto old to give new.
// The paths are the Go scanners, AVX2 and AVX-512 where the CPU has them
// (the fuzz log says which are missing).
func FuzzRoundTrip(f *testing.F) {
	paths := availablePaths(f)
	f.Add([]byte("0123456789abcdef"), []byte("0123x56789abcdeF"), 0)
	f.Fuzz(func(t *testing.T, old, new []byte, limit int) {
		n := min(len(old), len(new), MaxPageSize)
		old, new = old[:n], new[:n]
		if limit > 1<<20 || limit < -1<<20 {
			limit %= 1 << 20
		}
		lim := limit
		if lim <= 0 {
			lim = n
		}
		rout, rret := refEncode(old, new, lim)
		check := func(t *testing.T) {
			out, err := Encode([]byte{1, 2, 3}, old, new, limit)
			if !bytes.Equal(out[:3], []byte{1, 2, 3}) {
				t.Fatal("Encode changed dst's bytes")
			}
			got := out[3:]
			if ret := retOf(got, err); ret != rret || !bytes.Equal(got, rout) {
				t.Fatalf("Encode %d %x, reference %d %x", ret, got, rret, rout)
			}
			switch {
			case err == nil:
				page := append([]byte(nil), old...)
				if err := Decode(page, got); err != nil || !bytes.Equal(page, new) {
					t.Fatalf("round trip: %v", err)
				}
			case errors.Is(err, ErrUnchanged):
				if !bytes.Equal(old, new) {
					t.Fatal("ErrUnchanged for different pages")
				}
			}
		}
		defer setPath(currentPath())
		for _, p := range paths {
			setPath(p)
			check(t)
		}
	})
}
