package codec

import (
	"errors"
	"fmt"
	"log/slog"
	"runtime"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/delta"
)

// ErrConfig reports a Config that cannot work: a page size that does not
// match the memory's or is too large for XBZRLE, a cache too small to hold a
// page per worker.
var ErrConfig = errors.New("codec: bad configuration")

// maxWorkers bounds Config.Workers: more would only multiply buffers.
const maxWorkers = 256

// Config configures a Pipeline and a Decoder. The zero value is the
// default: 4096-byte pages, zero-page detection only (XBZRLE and LZ4 off),
// one worker per CPU, adaptation on.
type Config struct {
	// PageSize is the page size; 0 means livemig.DefaultPageSize. It must
	// equal the Memory's page size, and with XBZRLE be at most
	// delta.MaxPageSize.
	PageSize int
	// XBZRLE sends a page that was sent before and is still cached as an
	// XBZRLE delta against its cached copy, from round 2 on.
	XBZRLE bool
	// Cache configures the XBZRLE page cache. The zero value is QEMU's: 64
	// MiB, direct-mapped. Ways > 0 selects delta.SetAssoc. With several
	// workers the cache is split: each worker owns the pages of its
	// stripes, runs of 64 consecutive pages dealt to the workers in turn
	// ((p / 64) % Workers == w), and a cache of Bytes/Workers bytes
	// (rounded down to a power of two pages for the direct-mapped
	// policy). Cache.PageSize is taken from PageSize.
	Cache delta.CacheConfig
	// LZ4 sends a page as an LZ4 block when the block saves at least 1/64
	// of the page (MaxLZ4; and no XBZRLE delta was sent).
	LZ4 bool
	// Workers is how many goroutines encode pages; 0 means
	// runtime.GOMAXPROCS(0), at most 256. With 1 the pipeline starts no
	// goroutine and is deterministic. With more, the batches in flight
	// hold about 2.5 MiB of pages per worker (10 batches of at most 256
	// KiB), besides each worker's share of the XBZRLE cache.
	Workers int
	// StartOff starts the pipeline with XBZRLE and LZ4 off: as configured
	// they are allowed (the cache is made), and Pipeline.SetCodecs turns
	// them on. Adaptation never turns on a codec it has not seen run.
	StartOff bool
	// NoAdapt keeps XBZRLE and LZ4 on whatever the link's speed; by
	// default the pipeline turns them off when they slow the migration
	// (see Adapt).
	NoAdapt bool
	// VirtualTime says the engine runs on a virtual clock (a simulation):
	// the pipeline reads no wall clock. Without Clock, encoding then takes
	// no time at all: every encode cost is zero, and adaptation never
	// turns a codec off.
	VirtualTime bool
	// Clock, in a simulation, is the source's virtual clock, and implies
	// VirtualTime: the pipeline then charges each record the CPU time Cost
	// gives its pages, as the encoding and decoding stages of a pipelined
	// stream (see the package doc's "Virtual time"), and adapts on those
	// costs instead of wall-clock timings. The figures depend only on the
	// pages, the calls and Cost, not on the machine.
	Clock *livemig.VirtualClock
	// Cost is the CPU cost model charged with Clock; nil means
	// DefaultCost(). Ignored without Clock.
	Cost *CostModel
	// Logger receives the adaptation decisions at Info level; nil means
	// none.
	Logger *slog.Logger
}

// norm returns cfg with its defaults filled in, or an error wrapping
// ErrConfig.
func (cfg Config) norm() (Config, error) {
	if cfg.PageSize == 0 {
		cfg.PageSize = livemig.DefaultPageSize
	}
	if cfg.PageSize < 0 {
		return cfg, fmt.Errorf("%w: page size %d", ErrConfig, cfg.PageSize)
	}
	if cfg.XBZRLE && cfg.PageSize > delta.MaxPageSize {
		return cfg, fmt.Errorf("%w: page size %d too large for XBZRLE (at most %d)", ErrConfig, cfg.PageSize, delta.MaxPageSize)
	}
	if cfg.Clock != nil {
		cfg.VirtualTime = true
		m := DefaultCost()
		if cfg.Cost != nil {
			m = *cfg.Cost // a copy of our own: the caller may change theirs
		}
		cfg.Cost = &m
	}
	if cfg.Workers <= 0 {
		cfg.Workers = runtime.GOMAXPROCS(0)
	}
	cfg.Workers = min(cfg.Workers, maxWorkers)
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	cfg.Cache.PageSize = cfg.PageSize
	if cfg.Cache.Bytes == 0 {
		cfg.Cache.Bytes = delta.DefaultCacheBytes
	}
	return cfg, nil
}

// newCache returns one worker's share of the XBZRLE cache.
func (cfg *Config) newCache() (delta.Cache, error) {
	cc := cfg.Cache
	cc.Bytes /= int64(cfg.Workers)
	var (
		c   delta.Cache
		err error
	)
	if cc.Ways > 0 {
		c, err = delta.NewSetAssoc(cc)
	} else {
		c, err = delta.NewDirectMapped(cc)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: cache of %d bytes per worker: %w", ErrConfig, cc.Bytes, err)
	}
	return c, nil
}
