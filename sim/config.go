package sim

import (
	"errors"
	"fmt"
	"math"

	"github.com/livemig/livemig"
)

// Limits on a GuestConfig. They bound what NewGuest and NewSink allocate.
const (
	// MaxPages is the largest page count: 2^30 pages, 4 TiB of 4 KiB pages,
	// which takes 8 GiB of page state.
	MaxPages = 1 << 30
	// MinPageSize and MaxPageSize bound the page size, which must also be a
	// multiple of 64.
	MinPageSize = 64
	MaxPageSize = 2 << 20
	// MinStateSize and MaxStateSize bound a non-empty CPU/device state,
	// whose size must also be a multiple of 8.
	MinStateSize = 48
	MaxStateSize = 64 << 20
)

// Defaults taken by the zero values of GuestConfig's fields.
const (
	DefaultZeroFraction = 0.25
	DefaultEntropy      = 0.4
	DefaultWriteWords   = 3
	DefaultStateSize    = 64 << 10
)

// ErrConfig is wrapped by the errors of NewGuest and NewSink for a bad
// GuestConfig or Workload.
var ErrConfig = errors.New("sim: bad configuration")

// ErrBufferSize is wrapped by the errors of ReadPage and SyncDirty when the
// caller's buffer has the wrong size.
var ErrBufferSize = errors.New("sim: buffer has the wrong size")

// GuestConfig describes a simulated guest. Its zero value, with Pages set,
// is a valid configuration; a Sink built from the same GuestConfig as a
// Guest can check that guest's pages. Guest.Config returns it with the
// defaults filled in and the knobs turned off by a negative value set to -1.
type GuestConfig struct {
	// Pages is the number of pages, 1..MaxPages. Required.
	Pages uint64
	// PageSize is the size of a page in bytes: a multiple of 64 between
	// MinPageSize and MaxPageSize. Default livemig.DefaultPageSize (4 KiB).
	PageSize int
	// Seed makes the guest's contents and its workload's choices. Guests
	// with equal configurations and workloads behave identically.
	Seed uint64
	// ZeroFraction is the share of pages that are all zeros until they are
	// first written (freshly booted guests have many). Each page's fate is
	// drawn from the seed. Default DefaultZeroFraction (a quarter); a
	// negative value means no zero pages; at most 1.
	ZeroFraction float64
	// Entropy is the share of a page's 64-byte lines that hold random bytes;
	// the others repeat one of four words of the page. At the default,
	// DefaultEntropy (0.4), LZ4 compresses pages about 2x, as it does real
	// guest memory. A negative value means no random lines; at most 1 (no
	// compression at all).
	Entropy float64
	// WriteWords is how many 8-byte words of a page a "few words" write
	// changes, besides the header word that holds the page's write count.
	// The words sit at places fixed per page. Default DefaultWriteWords (3);
	// a negative value means none (a write then changes only the header);
	// at most PageSize/8-2.
	WriteWords int
	// StateSize is the size in bytes of the CPU/device state that SaveState
	// produces: a multiple of 8 between MinStateSize and MaxStateSize.
	// Default DefaultStateSize (64 KiB); a negative value means no state.
	StateSize int
}

// normalize returns cfg with its defaults filled in and the knobs turned
// off (negative) set to -1, or an error wrapping ErrConfig. It is
// idempotent, so a normalized configuration passed to NewSink describes the
// same guest.
func (cfg GuestConfig) normalize() (GuestConfig, error) {
	c := cfg
	if c.PageSize == 0 {
		c.PageSize = livemig.DefaultPageSize
	}
	if c.ZeroFraction == 0 {
		c.ZeroFraction = DefaultZeroFraction
	} else if c.ZeroFraction < 0 {
		c.ZeroFraction = -1
	}
	if c.Entropy == 0 {
		c.Entropy = DefaultEntropy
	} else if c.Entropy < 0 {
		c.Entropy = -1
	}
	if c.WriteWords == 0 {
		c.WriteWords = DefaultWriteWords
	} else if c.WriteWords < 0 {
		c.WriteWords = -1
	}
	if c.StateSize == 0 {
		c.StateSize = DefaultStateSize
	} else if c.StateSize < 0 {
		c.StateSize = -1
	}
	switch {
	case c.Pages == 0 || c.Pages > MaxPages:
		return c, fmt.Errorf("%w: Pages %d not in 1..%d", ErrConfig, c.Pages, MaxPages)
	case c.PageSize < MinPageSize || c.PageSize > MaxPageSize || c.PageSize%64 != 0:
		return c, fmt.Errorf("%w: PageSize %d is not a multiple of 64 in %d..%d", ErrConfig, c.PageSize, MinPageSize, MaxPageSize)
	case math.IsNaN(c.ZeroFraction) || c.ZeroFraction > 1:
		return c, fmt.Errorf("%w: ZeroFraction %v above 1", ErrConfig, cfg.ZeroFraction)
	case math.IsNaN(c.Entropy) || c.Entropy > 1:
		return c, fmt.Errorf("%w: Entropy %v above 1", ErrConfig, cfg.Entropy)
	case c.WriteWords > c.PageSize/8-2:
		return c, fmt.Errorf("%w: WriteWords %d not in 0..%d", ErrConfig, c.WriteWords, c.PageSize/8-2)
	case c.StateSize > 0 && (c.StateSize < MinStateSize || c.StateSize > MaxStateSize || c.StateSize%8 != 0):
		return c, fmt.Errorf("%w: StateSize %d is not a multiple of 8 in %d..%d", ErrConfig, c.StateSize, MinStateSize, MaxStateSize)
	}
	return c, nil
}
