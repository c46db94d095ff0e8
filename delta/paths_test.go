package delta

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"testing"
)

// checkPaths encodes old→new for limit on every path and fails unless each
// gives the reference encoder's bytes and outcome, and writes nothing in
// dst's spare capacity past the limit.
func checkPaths(t *testing.T, paths []string, old, new []byte, limit int, what string) {
	t.Helper()
	lim := limit
	if lim <= 0 {
		lim = len(new)
	}
	rout, rret := refEncode(old, new, lim)
	defer setPath(currentPath())
	const base, guard = 5, 80
	window := min(lim, 2*len(new)+16)
	buf := make([]byte, base+window+guard)
	for _, p := range paths {
		setPath(p)
		for i := range buf {
			buf[i] = 0xa5
		}
		out, err := Encode(buf[:base], old, new, limit)
		if ret := retOf(out[base:], err); ret != rret || !bytes.Equal(out[base:], rout) {
			t.Fatalf("%s, %s path, limit %d: Encode %d %x; reference %d %x", what, p, limit, ret, out[base:], rret, rout)
		}
		if &out[0] != &buf[0] {
			t.Fatalf("%s, %s path: Encode allocated although dst had room", what, p)
		}
		for i := base + window; i < len(buf); i++ {
			if buf[i] != 0xa5 {
				t.Fatalf("%s, %s path, limit %d: wrote dst[%d], past the limit", what, p, limit, i-base)
			}
		}
	}
}

// limitsAround returns limits at and around the delta's length (and the
// default and the smallest), where the room checks decide.
func limitsAround(old, new []byte) []int {
	_, full := refEncode(old, new, 1<<30)
	ls := []int{0, 1, 2, 3, len(new), 1 << 30}
	for l := full - 3; l <= full+3; l++ {
		ls = append(ls, l)
	}
	return ls
}

// TestEncodePathsRuns: one changed run at every offset of the first five
// 64-byte blocks, of lengths that end before, on and after block and
// four-block boundaries and need one- and two-byte headers, in pages whose
// size is and is not a multiple of 64; every path agrees with the
// reference at limits around the delta's length.
func TestEncodePathsRuns(t *testing.T) {
	paths := availablePaths(t)
	rng := rand.New(rand.NewPCG(15, 3))
	lens := []int{1, 2, 7, 63, 64, 65, 127, 128, 129, 255, 256, 257, 300, 1000}
	for _, n := range []int{320, 4096, 4095, 4097} {
		old := make([]byte, n)
		for i := range old {
			old[i] = byte(rng.Uint32())
		}
		for s := 0; s < 320; s++ {
			for _, l := range lens {
				if s+l > n {
					continue
				}
				new := append([]byte(nil), old...)
				for i := s; i < s+l; i++ {
					flip(rng, new, i)
				}
				for _, lim := range limitsAround(old, new) {
					checkPaths(t, paths, old, new, lim, fmt.Sprintf("n=%d run [%d,%d)", n, s, s+l))
				}
			}
		}
	}
}

// TestEncodePathsEnds: runs that touch the start and the end of pages of
// every size from 1 to 300 and a few large ones: the last partial block,
// a page ending with a changed run, and the all-different and identical
// pages.
func TestEncodePathsEnds(t *testing.T) {
	paths := availablePaths(t)
	rng := rand.New(rand.NewPCG(15, 4))
	sizes := []int{4096 + 63, 8192, MaxPageSize}
	for n := 1; n <= 300; n++ {
		sizes = append(sizes, n)
	}
	for _, n := range sizes {
		old := make([]byte, n)
		for i := range old {
			old[i] = byte(rng.Uint32())
		}
		for _, r := range [][2]int{{0, n}, {0, 0}, {0, 1}, {n - 1, n}, {0, n - 1}, {1, n}, {n / 2, n}, {n - 65, n}} {
			lo, hi := max(r[0], 0), r[1]
			new := append([]byte(nil), old...)
			for i := lo; i < hi; i++ {
				flip(rng, new, i)
			}
			for _, lim := range limitsAround(old, new) {
				checkPaths(t, paths, old, new, lim, fmt.Sprintf("n=%d changed [%d,%d)", n, lo, hi))
			}
		}
	}
}

// TestEncodePathsRandomRuns: seeded pages of alternating runs whose
// lengths are drawn around a mean from 1 to 500 bytes, so that runs begin
// and end at every offset of a block and cross blocks in every way.
func TestEncodePathsRandomRuns(t *testing.T) {
	paths := availablePaths(t)
	rng := rand.New(rand.NewPCG(15, 5))
	for iter := range 3000 {
		n := 1 + rng.IntN(5000)
		if iter%4 == 0 {
			n = 4096
		}
		old := make([]byte, n)
		for i := range old {
			old[i] = byte(rng.Uint32())
		}
		new := append([]byte(nil), old...)
		meanZ, meanNZ := 1+rng.IntN(500), 1+rng.IntN(200)
		changed := rng.IntN(2) == 0
		for i := 0; i < n; {
			mean := meanZ
			if changed {
				mean = meanNZ
			}
			l := 1 + int(rng.ExpFloat64()*float64(mean))
			for k := i; k < min(n, i+l); k++ {
				if changed {
					flip(rng, new, k)
				}
			}
			i += l
			changed = !changed
		}
		for _, lim := range limitsAround(old, new) {
			checkPaths(t, paths, old, new, lim, fmt.Sprintf("iter %d n=%d", iter, n))
		}
	}
}

// TestSetPath: each path can be chosen where the CPU has it, and a path it
// lacks falls back to the best one below.
func TestSetPath(t *testing.T) {
	defer setPath(currentPath())
	want := map[string]string{pathGo: pathGo, pathAVX2: pathGo, pathAVX512: pathGo, "sse": pathGo}
	if hasAVX2 {
		want[pathAVX2], want[pathAVX512] = pathAVX2, pathAVX2
	}
	if hasAVX512 {
		want[pathAVX512] = pathAVX512
	}
	for p, w := range want {
		if got := setPath(p); got != w || currentPath() != w {
			t.Errorf("setPath(%q) = %q, currentPath %q; want %q", p, got, currentPath(), w)
		}
	}
}

// TestPathEnv runs this test binary again with LIVEMIG_DELTA_PATH set and
// checks that Encode starts on the path asked for.
func TestPathEnv(t *testing.T) {
	if p := os.Getenv("LIVEMIG_DELTA_PATH_CHILD"); p != "" {
		if got := currentPath(); got != p {
			t.Fatalf("%s=%s: Encode uses %s", pathEnv, os.Getenv(pathEnv), got)
		}
		return
	}
	for _, p := range availablePaths(t) {
		cmd := exec.Command(os.Args[0], "-test.run=^TestPathEnv$", "-test.count=1")
		cmd.Env = append(os.Environ(), pathEnv+"="+p, "LIVEMIG_DELTA_PATH_CHILD="+p)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("%s=%s: %v\n%s", pathEnv, p, err, out)
		}
	}
}
