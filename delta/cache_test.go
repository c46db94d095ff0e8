package delta

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"testing"
)

func pageOf(ps int, v byte) []byte { return bytes.Repeat([]byte{v}, ps) }

func TestDirectMappedQEMURules(t *testing.T) {
	c, err := NewDirectMapped(CacheConfig{Bytes: 5 * 64, PageSize: 64})
	if err != nil {
		t.Fatal(err)
	}
	if len(c.tag) != 4 {
		t.Fatalf("%d slots, want 4 (5 pages rounded down to a power of two)", len(c.tag))
	}
	// Pages 1 and 5 share slot 1.
	if err := c.Put(1, 0, pageOf(64, 1)); err != nil {
		t.Fatal(err)
	}
	if err := c.Put(5, 1, pageOf(64, 5)); !errors.Is(err, ErrDeclined) {
		t.Fatalf("evicting a page one sync old: %v, want ErrDeclined", err)
	}
	if err := c.Put(1, 1, pageOf(64, 11)); err != nil {
		t.Fatalf("updating the page itself: %v", err)
	}
	// A hit refreshes the age: at gen 20 the page is fresh again.
	if got, ok := c.Get(1, 20); !ok || !bytes.Equal(got, pageOf(64, 11)) {
		t.Fatalf("Get(1) = %v, %v", got[:1], ok)
	}
	if err := c.Put(5, 21, pageOf(64, 5)); !errors.Is(err, ErrDeclined) {
		t.Fatalf("age 20, gen 21: %v, want ErrDeclined", err)
	}
	if err := c.Put(5, 22, pageOf(64, 5)); err != nil {
		t.Fatalf("age 20, gen 22 (20+2 > 22 is false): %v", err)
	}
	if _, ok := c.Get(1, 22); ok {
		t.Fatal("page 1 still cached after eviction")
	}
	if got, ok := c.Get(5, 22); !ok || got[0] != 5 {
		t.Fatal("page 5 not cached")
	}
	if err := c.Put(2, 0, make([]byte, 63)); !errors.Is(err, ErrPageSize) {
		t.Fatalf("short page: %v", err)
	}
	want := Stats{Hits: 2, Misses: 1, Inserts: 2, Declined: 2, Evictions: 1}
	if got := c.Stats(); got != want {
		t.Fatalf("stats %+v, want %+v", got, want)
	}
}

func TestCacheOwnsCopies(t *testing.T) {
	for _, c := range testCaches(t, CacheConfig{Bytes: 16 * 64, PageSize: 64, Ways: 4}) {
		data := pageOf(64, 7)
		if err := c.Put(3, 0, data); err != nil {
			t.Fatal(err)
		}
		data[0] = 99
		if got, ok := c.Get(3, 0); !ok || got[0] != 7 || cap(got) != 64 {
			t.Fatalf("%T: cached copy changed with the caller's buffer or has spare capacity", c)
		}
	}
}

func testCaches(t *testing.T, cfg CacheConfig) []Cache {
	t.Helper()
	dm, err := NewDirectMapped(cfg)
	if err != nil {
		t.Fatal(err)
	}
	sa, err := NewSetAssoc(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return []Cache{dm, sa}
}

func TestCacheBounds(t *testing.T) {
	for _, cfg := range []CacheConfig{
		{},
		{Bytes: 4096},
		{Bytes: 3*4096 + 100},
		{Bytes: 1 << 20, Ways: 5},
		{Bytes: 1 << 20, Ways: 1000},
		{Bytes: 10 * 512, PageSize: 512, Ways: 16},
	} {
		for _, c := range testCaches(t, cfg) {
			norm, _ := cfg.norm()
			fp := c.(interface{ Footprint() int64 }).Footprint()
			pages := norm.Bytes / int64(norm.PageSize)
			if fp > norm.Bytes+24*pages {
				t.Errorf("%T %+v: footprint %d > %d + 24/page", c, cfg, fp, norm.Bytes)
			}
		}
	}
	for _, cfg := range []CacheConfig{{Bytes: 100}, {PageSize: -1}, {Ways: -1}, {PageSize: MaxPageSize + 1}} {
		if _, err := NewDirectMapped(cfg); !errors.Is(err, ErrCacheConfig) {
			t.Errorf("NewDirectMapped(%+v): %v", cfg, err)
		}
		if _, err := NewSetAssoc(cfg); !errors.Is(err, ErrCacheConfig) {
			t.Errorf("NewSetAssoc(%+v): %v", cfg, err)
		}
	}
}

// TestSetAssocKeepsHotPages: in one 4-way set, a page that keeps hitting
// survives a stream of pages sent once, which take turns in the other
// slots; a set of hot pages declines newcomers; a page no longer hit goes.
func TestSetAssocKeepsHotPages(t *testing.T) {
	c, err := NewSetAssoc(CacheConfig{Bytes: 4 * 64, PageSize: 64, Ways: 4})
	if err != nil {
		t.Fatal(err)
	}
	const hot = 1000
	_ = c.Put(hot, 0, pageOf(64, 1))
	for p := uint64(0); p < 100; p++ {
		if _, ok := c.Get(hot, p); !ok {
			t.Fatalf("hot page evicted after %d cold pages", p)
		}
		if err := c.Put(p, p, pageOf(64, byte(p))); err != nil {
			t.Fatalf("cold page %d: %v", p, err)
		}
	}
	if s := c.Stats(); s.Evictions != 100-3 || s.Declined != 0 {
		t.Fatalf("stats %+v", s)
	}
	// Make all four pages hot at generation 200: a newcomer is declined.
	for _, p := range []uint64{hot, 97, 98, 99} {
		for range 3 {
			c.Get(p, 200)
		}
	}
	if err := c.Put(5000, 200, pageOf(64, 0)); !errors.Is(err, ErrDeclined) {
		t.Fatalf("newcomer in a hot set: %v, want ErrDeclined", err)
	}
	// Their score is 200 + 4·3 = 212: a newcomer gets in once that is no
	// more than the generation + 2.
	if err := c.Put(5000, 209, pageOf(64, 0)); !errors.Is(err, ErrDeclined) {
		t.Fatalf("newcomer at 209: %v, want ErrDeclined", err)
	}
	if err := c.Put(5000, 210, pageOf(64, 0)); err != nil {
		t.Fatalf("newcomer in a cooled set: %v", err)
	}
}

// skewedHitRate runs a seeded skewed dirtying workload through c the way
// the source does (Get, and Put on a miss) and returns the hit rate over
// the rounds after warm-up. Pages are dirtied with Zipf-distributed
// popularity over a random permutation of the guest's pages, so hot pages
// are scattered over the address space.
func skewedHitRate(c Cache, seed uint64) float64 {
	const (
		guestPages = 1 << 16
		rounds     = 60
		perRound   = 3000
	)
	rng := rand.New(rand.NewPCG(seed, 9))
	perm := rng.Perm(guestPages)
	zipf := rand.NewZipf(rng, 1.1, 8, guestPages-1)
	data := pageOf(64, 0)
	var hits, total int
	for gen := uint64(1); gen <= rounds; gen++ {
		seen := map[uint64]bool{}
		for range perRound {
			p := uint64(perm[zipf.Uint64()])
			if seen[p] {
				continue // dirty once per round
			}
			seen[p] = true
			_, ok := c.Get(p, gen)
			if !ok {
				_ = c.Put(p, gen, data)
			}
			if gen > 10 {
				total++
				if ok {
					hits++
				}
			}
		}
	}
	return float64(hits) / float64(total)
}

func TestSetAssocBeatsDirectMappedOnSkew(t *testing.T) {
	cfg := CacheConfig{Bytes: 1024 * 64, PageSize: 64, Ways: 8}
	for seed := range uint64(3) {
		dm, _ := NewDirectMapped(cfg)
		sa, _ := NewSetAssoc(cfg)
		hd, hs := skewedHitRate(dm, seed), skewedHitRate(sa, seed)
		t.Logf("seed %d: hit rate direct-mapped %.3f, set-associative %.3f", seed, hd, hs)
		if hs < hd+0.05 {
			t.Errorf("seed %d: set-associative %.3f not at least 5 points above direct-mapped %.3f", seed, hs, hd)
		}
	}
}

func TestEncoder(t *testing.T) {
	c, _ := NewDirectMapped(CacheConfig{Bytes: 4 * 64, PageSize: 64})
	e := NewEncoder(c, 0)
	v1 := pageOf(64, 1)
	v2 := append([]byte(nil), v1...)
	v2[10] = 9
	buf := make([]byte, 0, 64)
	if out, r := e.Encode(buf, 7, 1, v1, false); r != ResultMiss || len(out) != 0 {
		t.Fatalf("first send: %v", r)
	}
	out, r := e.Encode(buf, 7, 2, v2, false)
	if r != ResultDelta || !bytes.Equal(out, []byte{10, 1, 9}) {
		t.Fatalf("second send: %v %x", r, out)
	}
	if _, r := e.Encode(buf, 7, 3, v2, false); r != ResultUnchanged {
		t.Fatalf("third send: %v", r)
	}
	if _, r := e.Encode(buf, 7, 4, pageOf(64, 200), false); r != ResultOverflow {
		t.Fatalf("all changed: %v", r)
	}
	if got, _ := c.Get(7, 4); got[0] != 200 {
		t.Fatal("cache not updated after overflow")
	}
	if _, r := e.Encode(buf, 8, 5, v1, true); r != ResultMiss {
		t.Fatalf("last stage: %v", r)
	}
	if _, ok := c.Get(8, 5); ok {
		t.Fatal("a miss in the last stage was cached")
	}
	want := Stats{Hits: 4, Misses: 3, Inserts: 1, Deltas: 1, Unchanged: 1, Overflows: 1, DeltaBytes: 3, BytesSaved: 61 + 64}
	if got := e.Stats(); got != want {
		t.Fatalf("stats %+v\nwant  %+v", got, want)
	}
	if ResultOverflow.String() != "overflow" {
		t.Fatal(ResultOverflow.String())
	}
}
