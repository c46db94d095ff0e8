package delta

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"testing"

	"github.com/livemig/livemig"
)

// refEncode is the naive reference encoder, written byte by byte from the
// format rules and the return convention of QEMU's scalar
// xbzrle_encode_buffer for a destination of dlen bytes: it returns the
// delta and its length, 0 for an unchanged page, or -1 for overflow. Before
// each unchanged run (even the final one, which is not written) it needs 2
// bytes of room; before each changed run, 2 more bytes after the unchanged
// run's header; after the changed run's header, room for its data.
func refEncode(old, new []byte, dlen int) ([]byte, int) {
	n := len(new)
	var out []byte
	i := 0
	for i < n {
		if len(out)+2 > dlen {
			return nil, -1
		}
		z := 0
		for i < n && old[i] == new[i] {
			i++
			z++
		}
		if z == n {
			return nil, 0
		}
		if i == n {
			break
		}
		out = refUleb(out, z)
		if len(out)+2 > dlen {
			return nil, -1
		}
		start := i
		for i < n && old[i] != new[i] {
			i++
		}
		out = refUleb(out, i-start)
		if len(out)+(i-start) > dlen {
			return nil, -1
		}
		out = append(out, new[start:i]...)
	}
	return out, len(out)
}

func refUleb(b []byte, v int) []byte {
	if v >= 0x4000 {
		panic("refUleb: length needs 3 bytes")
	}
	for v >= 0x80 {
		b = append(b, byte(v)|0x80)
		v >>= 7
	}
	return append(b, byte(v))
}

// refDecode is the naive reference decoder: QEMU's xbzrle_decode_buffer
// rules, applied to a copy of page. It returns the decoded copy, or ok
// false where QEMU returns -1.
func refDecode(page, delta []byte) ([]byte, bool) {
	dst := append([]byte(nil), page...)
	i, d := 0, 0
	uleb := func() (int, bool) {
		// At least two bytes remain (checked by the caller).
		v := int(delta[i] & 0x7f)
		if delta[i] < 0x80 {
			i++
			return v, true
		}
		if delta[i+1]&0x80 != 0 {
			return 0, false
		}
		v |= int(delta[i+1]) << 7
		i += 2
		return v, true
	}
	for i < len(delta) {
		if len(delta)-i < 2 {
			return nil, false
		}
		first := i == 0
		z, ok := uleb()
		if !ok || (!first && z == 0) {
			return nil, false
		}
		d += z
		if d > len(dst) || len(delta)-i < 2 {
			return nil, false
		}
		m, ok := uleb()
		if !ok || m == 0 || d+m > len(dst) || i+m > len(delta) {
			return nil, false
		}
		for k := 0; k < m; k++ {
			dst[d+k] = delta[i+k]
		}
		d += m
		i += m
	}
	return dst, true
}

// retOf maps Encode's results to QEMU's return convention.
func retOf(out []byte, err error) int {
	switch {
	case err == nil:
		return len(out)
	case errors.Is(err, ErrUnchanged):
		return 0
	case errors.Is(err, ErrOverflow):
		return -1
	}
	return -2
}

// forEachPath runs f once per Encode path this build and CPU have: the Go
// scanners, AVX2 and the AVX-512 encoder. It logs the paths it cannot run,
// and fails instead where LIVEMIG_REQUIRE_AVX512=1 asks for AVX-512.
func forEachPath(t *testing.T, f func(t *testing.T)) {
	t.Helper()
	for _, p := range availablePaths(t) {
		t.Run(p, func(t *testing.T) {
			defer setPath(currentPath())
			if got := setPath(p); got != p {
				t.Fatalf("setPath(%q) chose %q", p, got)
			}
			f(t)
		})
	}
}

// availablePaths lists the paths forEachPath runs, and says which it
// cannot.
func availablePaths(t testing.TB) []string {
	t.Helper()
	paths := []string{pathGo}
	if hasAVX2 {
		paths = append(paths, pathAVX2)
	} else {
		t.Log("no AVX2 here (CPU or purego build): the AVX2 path is not tested")
	}
	if hasAVX512 {
		paths = append(paths, pathAVX512)
	} else if os.Getenv("LIVEMIG_REQUIRE_AVX512") == "1" {
		t.Fatal("LIVEMIG_REQUIRE_AVX512=1 but this CPU or build has no AVX-512 path")
	} else {
		t.Log("no AVX-512F/BW here (CPU or purego build): the AVX-512 path is not tested")
	}
	return paths
}

func mustHex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestQEMUDocExample is the worked example of QEMU's docs/xbzrle.txt.
func TestQEMUDocExample(t *testing.T) {
	old := make([]byte, 4096)
	new := make([]byte, 4096)
	copy(old[1001:], mustHex(t, "05 06 07 08 09 0a 0b 0c 0d 0e 0f 10 11 12 13 68 00 00 6b 00 6d"))
	copy(new[1001:], mustHex(t, "01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f 68 00 00 67 00 69"))
	want := mustHex(t, "e9 07 0f 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f 03 01 67 01 01 69")
	forEachPath(t, func(t *testing.T) {
		got, err := Encode(nil, old, new, 0)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("Encode = %x, %v; want %x", got, err, want)
		}
		page := append([]byte(nil), old...)
		if err := Decode(page, want); err != nil || !bytes.Equal(page, new) {
			t.Fatalf("Decode: err %v, page equal %v", err, bytes.Equal(page, new))
		}
	})
}

// TestGolden pins small encodings, each derived by hand from the format.
func TestGolden(t *testing.T) {
	type tc struct {
		name     string
		old, new string // hex
		limit    int
		want     string // hex, or "unchanged" / "overflow"
	}
	z16 := strings.Repeat("00", 16)
	cases := []tc{
		{"identical", z16, z16, 0, "unchanged"},
		{"first byte", z16, "aa" + strings.Repeat("00", 15), 0, "00 01 aa"},
		{"last byte", z16, strings.Repeat("00", 15) + "bb", 0, "0f 01 bb"},
		{"whole page", z16, strings.Repeat("ff", 16), 18, "00 10" + strings.Repeat("ff", 16)},
		{"final unchanged run omitted", z16, "00 00 cc dd" + strings.Repeat("00", 12), 0, "02 02 cc dd"},
		// QEMU's scalar encoder tests each 8-byte word with the exact
		// "has a zero byte" expression and then walks bytes to the first
		// equal one, so a changed run ends at the first unchanged byte,
		// even one alone inside a word: no merging of short equal stretches.
		{"single equal byte inside a changed word", z16, "11 22 33 00 55 66 77 88" + strings.Repeat("00", 8), 0,
			"00 03 11 22 33 01 04 55 66 77 88"},
		{"alternating", z16, strings.Repeat("01 00 ", 8), 100, "00" + strings.Repeat(" 01", 23)},
		// Limits: the delta "0f 01 bb" is 3 bytes.
		{"limit exact", z16, strings.Repeat("00", 15) + "bb", 3, "0f 01 bb"},
		{"limit one short", z16, strings.Repeat("00", 15) + "bb", 2, "overflow"},
		{"limit 1 even if unchanged", z16, z16, 1, "overflow"},
		// "02 02 cc dd" is 4 bytes, but QEMU wants 2 bytes of room before
		// the final unchanged run too: 6.
		{"room for final zrun", z16, "00 00 cc dd" + strings.Repeat("00", 12), 5, "overflow"},
		{"room for final zrun ok", z16, "00 00 cc dd" + strings.Repeat("00", 12), 6, "02 02 cc dd"},
		{"room for nzrun header", z16, "00 00 cc dd" + strings.Repeat("00", 12), 2, "overflow"},
	}
	// Two-byte lengths: a 300-byte page with bytes 200..299 changed.
	old300 := strings.Repeat("00", 300)
	cases = append(cases,
		tc{"two-byte zrun", old300, strings.Repeat("00", 200) + strings.Repeat("ee", 100), 0,
			"c8 01 64" + strings.Repeat("ee", 100)},
		tc{"two-byte nzrun", old300, "00" + strings.Repeat("ee", 299), 400,
			"01 ab 02" + strings.Repeat("ee", 299)},
		tc{"127 and 128", old300, strings.Repeat("00", 127) + strings.Repeat("ee", 128) + strings.Repeat("00", 45), 0,
			"7f 80 01" + strings.Repeat("ee", 128)},
	)
	forEachPath(t, func(t *testing.T) {
		for _, c := range cases {
			old, new := mustHex(t, c.old), mustHex(t, c.new)
			got, err := Encode([]byte("prefix"), old, new, c.limit)
			switch c.want {
			case "unchanged":
				if !errors.Is(err, ErrUnchanged) || string(got) != "prefix" {
					t.Errorf("%s: got %x, %v; want ErrUnchanged", c.name, got, err)
				}
			case "overflow":
				if !errors.Is(err, ErrOverflow) || string(got) != "prefix" {
					t.Errorf("%s: got %x, %v; want ErrOverflow", c.name, got, err)
				}
			default:
				want := append([]byte("prefix"), mustHex(t, c.want)...)
				if err != nil || !bytes.Equal(got, want) {
					t.Errorf("%s: got %x, %v; want %x", c.name, got, err, want)
				}
			}
			// The reference agrees with every golden vector.
			lim := c.limit
			if lim == 0 {
				lim = len(new)
			}
			rout, rret := refEncode(old, new, lim)
			if ret := retOf(got[min(len(got), 6):], err); ret != rret || (ret > 0 && !bytes.Equal(rout, got[6:])) {
				t.Errorf("%s: reference says %d %x, Encode %d", c.name, rret, rout, ret)
			}
		}
	})
}

func TestEncodeBadSizes(t *testing.T) {
	if _, err := Encode(nil, make([]byte, 8), make([]byte, 16), 0); !errors.Is(err, ErrPageSize) {
		t.Errorf("different lengths: %v", err)
	}
	big := make([]byte, MaxPageSize+1)
	if _, err := Encode(nil, big, big, 0); !errors.Is(err, ErrPageSize) {
		t.Errorf("too big: %v", err)
	}
	if _, err := Encode(nil, nil, nil, 0); !errors.Is(err, ErrUnchanged) {
		t.Errorf("empty page: %v", err)
	}
	// The largest page encodes its worst case (every byte changed).
	old, new := make([]byte, MaxPageSize), bytes.Repeat([]byte{1}, MaxPageSize)
	out, err := Encode(nil, old, new, 2*MaxPageSize)
	if err != nil || len(out) != MaxPageSize+3 {
		t.Errorf("max page: len %d, %v", len(out), err)
	}
}

// TestEncodeDifferential compares Encode on every path with the reference
// encoder, over seeded page pairs of every pattern, several page sizes, and
// limits around the delta's length.
func TestEncodeDifferential(t *testing.T) {
	sizes := []int{1, 7, 8, 9, 31, 32, 33, 63, 64, 65, 100, 127, 128, 129, 255, 1000, 4096, 8192}
	forEachPath(t, func(t *testing.T) {
		for _, pat := range patterns {
			for _, n := range sizes {
				for seed := range uint64(4) {
					old, new := pagePair(pat, n, seed*1000+uint64(n))
					full, fret := refEncode(old, new, 1<<30)
					limits := []int{0, 1, 2, 3, n, n + 1, 1 << 30}
					for l := fret - 3; l <= fret+3; l++ {
						limits = append(limits, l)
					}
					for _, l := range limits {
						rl := l
						if rl <= 0 {
							rl = n
						}
						rout, rret := refEncode(old, new, rl)
						got, err := Encode(make([]byte, 0, 3), old, new, l)
						if ret := retOf(got, err); ret != rret || !bytes.Equal(got, rout) {
							t.Fatalf("%s n=%d seed=%d limit=%d: Encode %d %x, reference %d %x",
								pat.name, n, seed, l, ret, got, rret, rout)
						}
					}
					if fret > 0 {
						page := append([]byte(nil), old...)
						if err := Decode(page, full); err != nil || !bytes.Equal(page, new) {
							t.Fatalf("%s n=%d: round trip failed: %v", pat.name, n, err)
						}
					}
				}
			}
		}
	})
}

// TestMasks compares eqMasks on every path with a byte loop, on blocks
// with every density of unchanged bytes.
func TestMasks(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	forEachPath(t, func(t *testing.T) {
		for nb := 1; nb <= 70; nb++ {
			a := make([]byte, 64*nb)
			b := make([]byte, 64*nb)
			want := make([]uint64, nb)
			prob := rng.Float64()
			for i := range a {
				a[i] = byte(rng.Uint32())
				b[i] = a[i]
				if rng.Float64() < prob {
					b[i] ^= byte(1 + rng.IntN(255))
				} else {
					want[i/64] |= 1 << (i % 64)
				}
			}
			got := make([]uint64, nb)
			all, any := eqMasks(got, a, b)
			wantAll, wantAny := ^uint64(0), uint64(0)
			for _, m := range want {
				wantAll &= m
				wantAny |= m
			}
			if all != wantAll || any != wantAny {
				t.Fatalf("nb=%d: and/or %x %x, want %x %x", nb, all, any, wantAll, wantAny)
			}
			for j := range got {
				if got[j] != want[j] {
					t.Fatalf("nb=%d block %d: mask %016x, want %016x", nb, j, got[j], want[j])
				}
			}
		}
	})
}

func TestDecodeErrors(t *testing.T) {
	cases := []struct {
		delta  string
		offset int
		reason string
	}{
		{"05", 0, ReasonTruncated},
		{"05 01 aa 03", 3, ReasonTruncated},
		{"05 01", 1, ReasonTruncated},
		{"05 02 aa", 1, ReasonPastInput},
		{"00 01 aa 00 01 bb", 3, ReasonZeroZrun},
		{"00 00 aa", 1, ReasonZeroNzrun},
		{"80 80 01 01 aa", 0, ReasonLongLength},
		{"05 81 80 01", 1, ReasonLongLength},
		{"11 01 aa", 0, ReasonPastPage},
		{"0f 02 aa bb", 1, ReasonPastPage},
		{"08 08 0102030405060708 01 01 aa", 10, ReasonPastPage},
		{"10 01 aa", 1, ReasonPastPage},
	}
	for _, c := range cases {
		page := bytes.Repeat([]byte{0x5a}, 16)
		err := Decode(page, mustHex(t, c.delta))
		var de *DecodeError
		if !errors.As(err, &de) || de.Offset != c.offset || de.Reason != c.reason {
			t.Errorf("%s: err %v, want offset %d %q", c.delta, err, c.offset, c.reason)
		}
		if !errors.Is(err, livemig.ErrCorrupt) {
			t.Errorf("%s: %v does not match livemig.ErrCorrupt", c.delta, err)
		}
		if !bytes.Equal(page, bytes.Repeat([]byte{0x5a}, 16)) {
			t.Errorf("%s: page changed on error", c.delta)
		}
		if _, ok := refDecode(page, mustHex(t, c.delta)); ok {
			t.Errorf("%s: the reference decoder accepts it", c.delta)
		}
		if err2 := Validate(mustHex(t, c.delta), 16); fmt.Sprint(err2) != fmt.Sprint(err) {
			t.Errorf("%s: Validate %v, Decode %v", c.delta, err2, err)
		}
	}
}

// TestDecodeAccepts pins deltas QEMU's decoder takes although Encode never
// writes them.
func TestDecodeAccepts(t *testing.T) {
	cases := []struct{ delta, want string }{
		{"", "00000000"},                  // empty delta: nothing to do
		{"80 00 81 00 aa", "aa000000"},    // non-minimal two-byte lengths
		{"00 01 aa 01 01 bb", "aa00bb00"}, // zrun 0 first
		{"01 01 aa 01 01 bb", "00aa00bb"}, // nzrun reaching the end
		{"03 01 aa", "000000aa"},
	}
	for _, c := range cases {
		page := make([]byte, 4)
		if err := Decode(page, mustHex(t, c.delta)); err != nil {
			t.Errorf("%q: %v", c.delta, err)
			continue
		}
		if want := mustHex(t, c.want); !bytes.Equal(page, want) {
			t.Errorf("%q: page %x, want %x", c.delta, page, want)
		}
	}
}

// TestDecodeDifferential compares Decode with the reference decoder on
// mutated valid deltas and on random bytes.
func TestDecodeDifferential(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for iter := range 20000 {
		n := 1 + rng.IntN(300)
		old, new := pagePair(patterns[3+iter%6], n, uint64(iter))
		d, err := Encode(nil, old, new, 1<<20)
		if err != nil {
			d = nil
		}
		switch iter % 3 {
		case 1: // mutate a few bytes
			for range 1 + rng.IntN(3) {
				if len(d) > 0 {
					d[rng.IntN(len(d))] = byte(rng.Uint32())
				}
			}
		case 2: // random bytes, small values likelier
			d = make([]byte, rng.IntN(12))
			for i := range d {
				d[i] = byte(rng.IntN(1 << (1 + rng.IntN(8))))
			}
		}
		want, ok := refDecode(old, d)
		page := append([]byte(nil), old...)
		err = Decode(page, d)
		if ok != (err == nil) {
			t.Fatalf("delta %x page %d: Decode %v, reference ok=%v", d, n, err, ok)
		}
		if ok && !bytes.Equal(page, want) {
			t.Fatalf("delta %x: pages differ", d)
		}
		if !ok && !bytes.Equal(page, old) {
			t.Fatalf("delta %x: page changed on error", d)
		}
	}
}

func TestZeroAllocs(t *testing.T) {
	old, new := pagePair(patterns[4], 4096, 7)
	buf := make([]byte, 0, 4096)
	page := append([]byte(nil), old...)
	d, err := Encode(buf, old, new, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	d = append([]byte(nil), d...)
	forEachPath(t, func(t *testing.T) {
		n := testing.AllocsPerRun(100, func() {
			_, _ = Encode(buf, old, new, 0)
			copy(page, old)
			_ = Decode(page, d)
		})
		if n != 0 {
			t.Errorf("%v allocations per Encode+Decode", n)
		}
	})
}
