package delta

import (
	"errors"
	"math/bits"
)

// DefaultCacheBytes is the default cache size, QEMU's xbzrle-cache-size.
const DefaultCacheBytes = 64 << 20

// ErrDeclined is returned by Cache.Put when the policy keeps the pages it
// holds rather than store this one (QEMU: the slot holds a page refreshed
// in the last two syncs). The page is then sent raw and not cached.
var ErrDeclined = errors.New("delta: cache declined the page")

// ErrCacheConfig reports a CacheConfig that cannot hold one page.
var ErrCacheConfig = errors.New("delta: bad cache configuration")

// Cache holds the last version the source sent of some pages, keyed by page
// number, so that the next send of a page can be a delta against it.
//
// gen is the dirty-sync generation (QEMU's bitmap sync count): it only
// grows, and policies use it to judge how recently a page was sent.
//
// A Cache owns its copies. Get's slice is valid, and may be read, until the
// next Put; the caller must not write to it. Implementations in this package
// are not safe for concurrent use: one goroutine (the sender's) calls them.
type Cache interface {
	// Get returns the cached copy of page and true on a hit (the policy
	// may note the hit: QEMU refreshes the page's age to gen), or nil and
	// false on a miss.
	Get(page, gen uint64) ([]byte, bool)
	// Put stores a copy of data as page's cached content at generation
	// gen, replacing page's old copy or, by the policy's choice, another
	// page. It returns ErrDeclined if the policy keeps its pages instead,
	// or ErrPageSize if len(data) is not the cache's page size.
	Put(page, gen uint64, data []byte) error
	// Stats returns the counters: Hits, Misses, Inserts, Declined,
	// Evictions. Encoder adds the rest.
	Stats() Stats
}

// Stats counts a cache's and an Encoder's work. Caches fill Hits, Misses,
// Inserts, Declined and Evictions; Encoder fills the rest.
type Stats struct {
	Hits      uint64 // Get found the page
	Misses    uint64 // Get did not find the page
	Inserts   uint64 // Put stored a page that was not cached
	Declined  uint64 // Put refused by the policy (ErrDeclined)
	Evictions uint64 // Put replaced another page

	Deltas     uint64 // pages sent as an XBZRLE delta
	Unchanged  uint64 // pages found equal to their cached copy
	Overflows  uint64 // deltas that did not fit in the limit: sent raw
	DeltaBytes uint64 // total length of the deltas sent
	// BytesSaved is, over the Deltas and Unchanged pages, the page size
	// minus the delta's length (0 for Unchanged): bytes not sent compared
	// with sending those pages raw, framing aside.
	BytesSaved uint64
}

// CacheConfig configures NewDirectMapped and NewSetAssoc. The zero value is
// QEMU's default: 64 MiB of 4096-byte pages.
type CacheConfig struct {
	// Bytes bounds the page copies: the cache holds at most Bytes /
	// PageSize pages (for DirectMapped, rounded down to a power of two,
	// where QEMU rejects other sizes). Metadata adds at most 24 bytes per
	// page. 0 means DefaultCacheBytes.
	Bytes int64
	// PageSize is the page size, at most MaxPageSize; 0 means 4096.
	PageSize int
	// Ways is SetAssoc's associativity, rounded down to a power of two,
	// at most 64; 0 means 8. DirectMapped ignores it.
	Ways int
}

func (c CacheConfig) norm() (CacheConfig, error) {
	if c.Bytes == 0 {
		c.Bytes = DefaultCacheBytes
	}
	if c.PageSize == 0 {
		c.PageSize = 4096
	}
	if c.Ways == 0 {
		c.Ways = 8
	}
	if c.PageSize < 0 || c.PageSize > MaxPageSize || c.Ways < 0 || c.Bytes < int64(c.PageSize) {
		return c, ErrCacheConfig
	}
	c.Ways = 1 << (bits.Len(uint(min(c.Ways, 64))) - 1)
	return c, nil
}

// slots is the common storage: n page copies in one array plus each slot's
// page number + 1 (0 for empty) and generation.
type slots struct {
	ps    int
	data  []byte
	tag   []uint64
	age   []uint64
	stats Stats
}

func newSlots(n, pageSize int) slots {
	return slots{
		ps:   pageSize,
		data: make([]byte, n*pageSize),
		tag:  make([]uint64, n),
		age:  make([]uint64, n),
	}
}

func (s *slots) page(i int) []byte { return s.data[i*s.ps : (i+1)*s.ps : (i+1)*s.ps] }

func (s *slots) store(i int, page, gen uint64, data []byte) {
	switch s.tag[i] {
	case page + 1:
	case 0:
		s.stats.Inserts++
	default:
		s.stats.Inserts++
		s.stats.Evictions++
	}
	s.tag[i] = page + 1
	s.age[i] = gen
	copy(s.page(i), data)
}

// Footprint returns the bytes the cache holds: page copies and metadata.
func (s *slots) Footprint() int64 {
	return int64(len(s.data)) + int64(len(s.tag))*8 + int64(len(s.age))*8
}

// DirectMapped is QEMU's page cache (migration/page_cache.c): n slots, n a
// power of two, page p lives only in slot p mod n; Get refreshes the
// page's age to the current generation; Put does not evict another page
// whose age + 2 > gen (QEMU's CACHED_PAGE_LIFETIME) and returns ErrDeclined
// instead. QEMU keys slots by RAM address; here the key is the page number,
// which is the address divided by the page size.
type DirectMapped struct {
	slots
	mask uint64
}

// NewDirectMapped returns an empty QEMU-policy cache.
func NewDirectMapped(cfg CacheConfig) (*DirectMapped, error) {
	cfg, err := cfg.norm()
	if err != nil {
		return nil, err
	}
	n := 1 << (bits.Len64(uint64(cfg.Bytes/int64(cfg.PageSize))) - 1)
	return &DirectMapped{slots: newSlots(n, cfg.PageSize), mask: uint64(n - 1)}, nil
}

// Get implements Cache.
func (c *DirectMapped) Get(page, gen uint64) ([]byte, bool) {
	i := int(page & c.mask)
	if c.tag[i] != page+1 {
		c.stats.Misses++
		return nil, false
	}
	c.stats.Hits++
	c.age[i] = gen
	return c.page(i), true
}

// Put implements Cache.
func (c *DirectMapped) Put(page, gen uint64, data []byte) error {
	if len(data) != c.ps {
		return ErrPageSize
	}
	i := int(page & c.mask)
	if t := c.tag[i]; t != 0 && t != page+1 && c.age[i]+2 > gen {
		c.stats.Declined++
		return ErrDeclined
	}
	c.store(i, page, gen, data)
	return nil
}

// Stats implements Cache.
func (c *DirectMapped) Stats() Stats { return c.stats }

// SetAssoc is a set-associative page cache that keeps the pages dirtied
// again and again: a page hashes to one set of Ways slots, and each slot
// has a reference count, raised by each hit (up to 3), besides the
// generation of its last hit or store. To store a page that is not cached,
// Put takes an empty slot of the set, else the slot with the lowest score
// age + 4·count (the page least recently and least often sent again). If
// even that page was hit so recently and often that its score exceeds the
// current generation + 2, the set holds only hot pages and Put declines the
// newcomer (ErrDeclined): a page must be sent again to prove it is worth a
// slot, as QEMU's CACHED_PAGE_LIFETIME does for one page per slot. Get and
// Put look at one set: constant time.
type SetAssoc struct {
	slots
	ways  int
	shift uint    // 64 - log2(number of sets)
	ref   []uint8 // per slot
}

// NewSetAssoc returns an empty set-associative cache.
func NewSetAssoc(cfg CacheConfig) (*SetAssoc, error) {
	cfg, err := cfg.norm()
	if err != nil {
		return nil, err
	}
	n := int(cfg.Bytes / int64(cfg.PageSize))
	ways := min(cfg.Ways, 1<<(bits.Len(uint(n))-1))
	sets := 1 << (bits.Len(uint(n/ways)) - 1)
	return &SetAssoc{
		slots: newSlots(sets*ways, cfg.PageSize),
		ways:  ways,
		shift: uint(64 - bits.Len(uint(sets-1))),
		ref:   make([]uint8, sets*ways),
	}, nil
}

// set returns the first slot of page's set. Fibonacci hashing spreads
// strided page numbers over the sets (with one set, the shift is 64 and
// the result 0).
func (c *SetAssoc) set(page uint64) int {
	return int((page*0x9E3779B97F4A7C15)>>c.shift) * c.ways
}

func (c *SetAssoc) find(page uint64) (int, bool) {
	s := c.set(page)
	for i := s; i < s+c.ways; i++ {
		if c.tag[i] == page+1 {
			return i, true
		}
	}
	return s, false
}

// Get implements Cache.
func (c *SetAssoc) Get(page, gen uint64) ([]byte, bool) {
	i, ok := c.find(page)
	if !ok {
		c.stats.Misses++
		return nil, false
	}
	c.stats.Hits++
	c.age[i] = gen
	if c.ref[i] < 3 {
		c.ref[i]++
	}
	return c.page(i), true
}

// Put implements Cache.
func (c *SetAssoc) Put(page, gen uint64, data []byte) error {
	if len(data) != c.ps {
		return ErrPageSize
	}
	i, ok := c.find(page)
	if !ok {
		i = c.victim(i, gen)
		if i < 0 {
			c.stats.Declined++
			return ErrDeclined
		}
		c.ref[i] = 0
	}
	c.store(i, page, gen, data)
	return nil
}

// victim picks the slot to fill in the set starting at slot s, or -1 if
// every page of the set is hot.
func (c *SetAssoc) victim(s int, gen uint64) int {
	best, bestScore := -1, ^uint64(0)
	for i := s; i < s+c.ways; i++ {
		if c.tag[i] == 0 {
			return i
		}
		if sc := c.age[i] + 4*uint64(c.ref[i]); sc < bestScore {
			best, bestScore = i, sc
		}
	}
	if bestScore > gen+2 {
		return -1
	}
	return best
}

// Stats implements Cache.
func (c *SetAssoc) Stats() Stats { return c.stats }

// Footprint returns the bytes the cache holds: page copies and metadata.
func (c *SetAssoc) Footprint() int64 {
	return c.slots.Footprint() + int64(len(c.ref))
}

// Result says what Encoder.Encode did with a page and so what to send.
type Result uint8

// Results of Encoder.Encode.
const (
	// ResultMiss: the page was not cached; send it raw. It is now cached
	// unless the policy declined it or the call was in the last stage.
	ResultMiss Result = iota
	// ResultDelta: send the appended bytes as an XBZRLE delta.
	ResultDelta
	// ResultUnchanged: the page equals what the destination has; send
	// nothing.
	ResultUnchanged
	// ResultOverflow: the delta would not fit in the limit; send the page
	// raw. The cache now holds the page.
	ResultOverflow
)

var resultNames = [...]string{"miss", "delta", "unchanged", "overflow"}

func (r Result) String() string {
	if int(r) < len(resultNames) {
		return resultNames[r]
	}
	return "Result(?)"
}

// Encoder is the source's XBZRLE step for one page, as QEMU's
// save_xbzrle_page does it: look the page up; on a miss cache it and send
// it raw; on a hit encode it against the cached copy, update the copy, and
// send the delta, nothing, or (on overflow) the page raw. It counts what
// happened in Stats. Not safe for concurrent use.
type Encoder struct {
	cache Cache
	limit int
	stats Stats
}

// NewEncoder returns an Encoder over cache. limit bounds each delta's
// length; 0 means one page, as QEMU does.
func NewEncoder(cache Cache, limit int) *Encoder {
	return &Encoder{cache: cache, limit: limit}
}

// Encode handles one page: data is its current content (it must not
// change during the call; the cache stores exactly these bytes, which the
// caller sends raw on a miss or an overflow, so that the destination holds
// what the cache holds). gen is the dirty-sync generation. In the last
// stage (last true) a miss is not cached, as in QEMU, since no later pass
// could use it. On ResultDelta the delta is appended to dst; otherwise dst
// is returned as it was. Bad input (a page of the wrong size) comes back as
// ResultMiss and is not cached.
func (e *Encoder) Encode(dst []byte, page, gen uint64, data []byte, last bool) ([]byte, Result) {
	prev, ok := e.cache.Get(page, gen)
	if !ok || len(prev) != len(data) {
		if !last {
			_ = e.cache.Put(page, gen, data) // declined or bad size: send raw
		}
		return dst, ResultMiss
	}
	out, err := Encode(dst, prev, data, e.limit)
	switch err {
	case nil:
		n := uint64(len(out) - len(dst))
		e.stats.Deltas++
		e.stats.DeltaBytes += n
		e.stats.BytesSaved += uint64(len(data)) - min(n, uint64(len(data)))
	case ErrUnchanged:
		e.stats.Unchanged++
		e.stats.BytesSaved += uint64(len(data))
		return dst, ResultUnchanged
	default: // ErrOverflow
		e.stats.Overflows++
	}
	// The destination now has data (as a delta or raw): so does the cache.
	// A hit's Put replaces the page's own slot, which is never declined.
	_ = e.cache.Put(page, gen, data)
	if err != nil {
		return dst, ResultOverflow
	}
	return out, ResultDelta
}

// Stats returns the cache's counters with the Encoder's added.
func (e *Encoder) Stats() Stats {
	s := e.cache.Stats()
	s.Deltas, s.Unchanged, s.Overflows = e.stats.Deltas, e.stats.Unchanged, e.stats.Overflows
	s.DeltaBytes, s.BytesSaved = e.stats.DeltaBytes, e.stats.BytesSaved
	return s
}
