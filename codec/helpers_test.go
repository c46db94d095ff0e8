package codec

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/livemig/livemig"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// A pattern is one way a guest rewrites a page between two rounds.
type pattern struct {
	name   string
	mutate func(rng *rand.Rand, p []byte)
}

// change gives p[i] a new value, never its old one.
func change(rng *rand.Rand, p []byte, i int) { p[i] += byte(1 + rng.IntN(255)) }

func fraction(f float64) func(*rand.Rand, []byte) {
	return func(rng *rand.Rand, p []byte) {
		for i := range p {
			if rng.Float64() < f {
				change(rng, p, i)
			}
		}
	}
}

func rewrite(rng *rand.Rand, p []byte, start, n int) {
	for i := start; i < start+n && i < len(p); i++ {
		change(rng, p, i)
	}
}

var patterns = []pattern{
	{"identical", func(*rand.Rand, []byte) {}},
	{"one-byte", func(rng *rand.Rand, p []byte) { change(rng, p, rng.IntN(len(p))) }},
	{"counters", func(rng *rand.Rand, p []byte) {
		// A handful of 64-bit counters, each one more than before.
		for range 8 {
			w := 8 * rng.IntN(len(p)/8)
			binary.LittleEndian.PutUint64(p[w:], binary.LittleEndian.Uint64(p[w:])+1)
		}
	}},
	{"1pct", fraction(0.01)},
	{"10pct", fraction(0.10)},
	{"40pct", fraction(0.40)},
	{"block512", func(rng *rand.Rand, p []byte) { rewrite(rng, p, 512*rng.IntN(len(p)/512), 512) }},
	{"all-different", func(rng *rand.Rand, p []byte) { rewrite(rng, p, 0, len(p)) }},
	{"fields16", func(rng *rand.Rand, p []byte) {
		// One 16-byte field in a quarter of the 64-byte lines.
		for _, l := range rng.Perm(len(p) / 64)[:len(p)/256] {
			rewrite(rng, p, 64*l+16*rng.IntN(4), 16)
		}
	}},
}

var words = []string{"migration ", "page ", "delta ", "guest ", "memory ", "round ", "the ", "of ", "dirty ", "cache "}

// fillPage gives a page one of several kinds of contents, by kind: zero,
// random, text-like (compressible), sparse.
func fillPage(rng *rand.Rand, p []byte, kind int) {
	clear(p)
	switch kind % 4 {
	case 0: // zero
	case 1: // random
		for i := range p {
			p[i] = byte(rng.Uint32())
		}
	case 2: // text
		for i := 0; i < len(p); {
			i += copy(p[i:], words[rng.IntN(len(words))])
		}
	case 3: // sparse
		for range len(p) / 64 {
			p[rng.IntN(len(p))] = byte(rng.Uint32())
		}
	}
}

// mem is an in-memory guest. With view set it also implements
// livemig.PageView through viewMem.
type mem struct {
	ps      int
	data    []byte
	failAt  uint64 // ReadPage of this page fails (when failErr is set)
	failErr error
}

func newMem(ps, pages int, seed uint64) *mem {
	m := &mem{ps: ps, data: make([]byte, ps*pages)}
	rng := rand.New(rand.NewPCG(seed, 1))
	for i := range pages {
		fillPage(rng, m.page(uint64(i)), rng.IntN(4))
	}
	return m
}

func (m *mem) page(n uint64) []byte { return m.data[int(n)*m.ps : (int(n)+1)*m.ps] }
func (m *mem) PageSize() int        { return m.ps }
func (m *mem) PageCount() uint64    { return uint64(len(m.data) / m.ps) }
func (m *mem) ReadPage(n uint64, dst []byte) error {
	if m.failErr != nil && n == m.failAt {
		return m.failErr
	}
	if n >= m.PageCount() {
		return livemig.ErrPageRange
	}
	copy(dst, m.page(n))
	return nil
}

type viewMem struct{ *mem }

func (v viewMem) View(n uint64) ([]byte, error) {
	if n >= v.PageCount() {
		return nil, livemig.ErrPageRange
	}
	return v.page(n), nil
}

// sink is an in-memory destination that can read its pages back.
type sink struct {
	ps     int
	data   []byte
	writes int
}

func newSink(ps, pages int) *sink { return &sink{ps: ps, data: make([]byte, ps*pages)} }

func (s *sink) page(n uint64) []byte { return s.data[int(n)*s.ps : (int(n)+1)*s.ps] }
func (s *sink) check(n uint64, l int) error {
	if n >= uint64(len(s.data)/s.ps) {
		return livemig.ErrPageRange
	}
	if l != s.ps {
		return fmt.Errorf("sink: %d bytes", l)
	}
	return nil
}
func (s *sink) WritePage(n uint64, data []byte) error {
	if err := s.check(n, len(data)); err != nil {
		return err
	}
	s.writes++
	copy(s.page(n), data)
	return nil
}
func (s *sink) ZeroPage(n uint64) error {
	if err := s.check(n, s.ps); err != nil {
		return err
	}
	s.writes++
	clear(s.page(n))
	return nil
}
func (s *sink) ReadPage(n uint64, dst []byte) error {
	if err := s.check(n, len(dst)); err != nil {
		return err
	}
	copy(dst, s.page(n))
	return nil
}

// writeOnly hides a sink's ReadPage.
type writeOnly struct{ livemig.PageSink }

var errBoom = errors.New("boom")

// guard checks that send is never called concurrently.
type guard struct {
	mu sync.Mutex
}

func (g *guard) enter(t testing.TB) func() {
	if !g.mu.TryLock() {
		t.Error("send called concurrently")
		g.mu.Lock()
	}
	return g.mu.Unlock
}
