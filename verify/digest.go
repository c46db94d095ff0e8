// Package verify keeps an end-to-end digest of a guest's memory as it is sent
// and as it is received, so that a migration checks the whole guest at
// switchover without reading it again.
//
// The digest is a sum over pages of a 64-bit term per page, each term a hash of
// the page number and the page's contents. When a page is sent again its new
// term replaces the old one, so the digest always describes the newest copy of
// every page. The source and the destination each keep one; equal sums at
// switchover mean the destination holds what the source sent (a check against
// accidental corruption and lost or misordered pages, not against an attacker:
// use TLS for that). Updating costs one CRC32C of the page (hardware
// accelerated) and 8 bytes of memory per page; UpdateCRC takes a CRC the
// caller has already (the transport builds its frames' CRCs from the
// pages', so each page is read for a CRC once on each side).
package verify

import (
	"math/bits"
	"sync/atomic"

	"github.com/livemig/livemig/internal/crc32c"
)

// Digest is the running digest of a guest's pages. Update and Zero may be
// called from several goroutines at once for distinct pages; Sum and
// Covered may be called at any time and reflect every update that
// happened before them (an update concurrent with them may count in part:
// call them where the updates have stopped, as the engines do).
type Digest struct {
	terms []uint64
	// The sum and the count of pages seen are kept in tallies, page n's
	// in tallies[(n/tallyRun)%len(tallies)], each on a cache line of its
	// own: goroutines that update runs of pages far apart (the codec's
	// workers) then share no line, where one sum took a cache miss per
	// page on each of them.
	tallies  [16]tally
	zeroCRC  uint32
	pageSize int
}

// tallyRun is how many consecutive pages share a tally: as many as the
// codec pipeline's stripes and a multi-stream Conn's runs
// (transport.StreamRun), so that the goroutines that update the digest
// at once touch distinct tallies.
const tallyRun = 64

// tally is a sum of terms and a count of pages, padded to a cache line.
type tally struct {
	sum, covered atomic.Uint64
	_            [48]byte
}

// New returns the digest of a guest of pages pages of pageSize bytes whose
// pages have not been seen yet (a page never updated contributes nothing).
func New(pages uint64, pageSize int) *Digest {
	return &Digest{
		terms:    make([]uint64, pages),
		zeroCRC:  crc32c.Checksum(make([]byte, pageSize)),
		pageSize: pageSize,
	}
}

// Term is the digest term of page n with contents whose CRC32C is crc.
func Term(n uint64, crc uint32) uint64 {
	// splitmix64 of (page, crc): every bit of both moves every bit of the
	// term. The page number is rotated, not shifted, so that no bit of it
	// is lost (n<<32 made pages n and n+2^32 alike); below 2^32 it is the
	// same.
	x := bits.RotateLeft64(n, 32) ^ uint64(crc) ^ 0x9E3779B97F4A7C15
	x ^= x >> 30
	x *= 0xBF58476D1CE4E5B9
	x ^= x >> 27
	x *= 0x94D049BB133111EB
	x ^= x >> 31
	return x | 1 // never 0, so "unseen" and "seen" differ
}

// Update records that page n now holds data. n must be below the page count.
func (d *Digest) Update(n uint64, data []byte) {
	d.set(n, Term(n, crc32c.Checksum(data)))
}

// UpdateCRC records that page n now holds contents whose CRC32C
// (Castagnoli) is crc: Update for a caller that has the CRC at hand (the
// transport builds its frames' CRCs from the pages', transport.Msg.DataCRC),
// so that a page is read for a CRC once.
func (d *Digest) UpdateCRC(n uint64, crc uint32) { d.set(n, Term(n, crc)) }

// CRC returns the CRC32C of a page's contents as Update takes it.
func CRC(data []byte) uint32 { return crc32c.Checksum(data) }

// Zero records that page n is now all zeros.
func (d *Digest) Zero(n uint64) { d.set(n, Term(n, d.zeroCRC)) }

func (d *Digest) set(n uint64, t uint64) {
	old := atomic.SwapUint64(&d.terms[n], t)
	y := &d.tallies[(n/tallyRun)%uint64(len(d.tallies))]
	y.sum.Add(t - old)
	if old == 0 {
		y.covered.Add(1)
	}
}

// Covered returns how many distinct pages were updated at least once.
func (d *Digest) Covered() uint64 {
	var c uint64
	for i := range d.tallies {
		c += d.tallies[i].covered.Load()
	}
	return c
}

// Sum returns the digest.
func (d *Digest) Sum() uint64 {
	var s uint64
	for i := range d.tallies {
		s += d.tallies[i].sum.Load()
	}
	return s
}

// Pages returns how many pages the digest covers.
func (d *Digest) Pages() uint64 { return uint64(len(d.terms)) }

// Seen reports whether page n was updated at least once.
func (d *Digest) Seen(n uint64) bool { return atomic.LoadUint64(&d.terms[n]) != 0 }
