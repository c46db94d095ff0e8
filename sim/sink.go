package sim

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/bits"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/bitmap"
)

// Sink is a destination for a simulated guest: a livemig.PageSink that
// checks every page it receives, a livemig.PageReader and livemig.Memory
// that regenerate what it holds, and a livemig.VM that keeps the state it
// loads and records that it resumed.
//
// Per page it stores only the identity of what it received (8 bytes and 2
// bits), so a sink for a 64 GiB guest takes about 128 MiB. WritePage checks
// that the data are exactly the contents a guest of the sink's
// configuration has for the page in some state; anything else is an error
// wrapping livemig.ErrCorrupt. A page never received reads as zeros.
//
// WritePage, ZeroPage and ReadPage may be called from several goroutines at
// once for distinct pages (the livemig.PageSink contract); the VM methods
// and Verify from one goroutine at a time.
type Sink struct {
	cfg     GuestConfig
	lay     layout
	ident   []uint64     // packed PageState per page, atomic
	have    bitmap.Words // pages received, atomic bitmap
	zero    bitmap.Words // of those, pages that are all zeros, atomic bitmap
	scratch sync.Pool

	mu      sync.Mutex
	state   []byte
	loaded  bool
	resumed bool
}

// NewSink returns an empty sink for a guest of configuration cfg (use the
// source's Guest.Config()). The error wraps ErrConfig when cfg does not
// hold.
func NewSink(cfg GuestConfig) (*Sink, error) {
	c, err := cfg.normalize()
	if err != nil {
		return nil, err
	}
	words := livemig.WordsFor(c.Pages)
	s := &Sink{
		cfg:   c,
		lay:   newLayout(c),
		ident: make([]uint64, c.Pages),
		have:  make([]uint64, words),
		zero:  make([]uint64, words),
	}
	s.scratch.New = func() any { b := make([]byte, c.PageSize); return &b }
	return s, nil
}

// Config returns the sink's configuration with its defaults filled in.
func (s *Sink) Config() GuestConfig { return s.cfg }

// PageSize returns the page size in bytes.
func (s *Sink) PageSize() int { return s.cfg.PageSize }

// PageCount returns the number of pages.
func (s *Sink) PageCount() uint64 { return s.cfg.Pages }

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// WritePage stores data as page n after checking it. Errors are
// *livemig.PageError (Op "write") wrapping livemig.ErrPageRange for a page
// past the end, or livemig.ErrCorrupt when data is not one page long or is
// not the contents of page n in any state (the message names the first
// differing byte). An all-zero page is accepted as ZeroPage. On error the
// page keeps what it held.
func (s *Sink) WritePage(n uint64, data []byte) error {
	if n >= s.cfg.Pages {
		return &livemig.PageError{Op: "write", Page: n, Err: livemig.ErrPageRange}
	}
	if len(data) != s.cfg.PageSize {
		return &livemig.PageError{Op: "write", Page: n, Err: fmt.Errorf("%w: %d bytes, want %d", livemig.ErrCorrupt, len(data), s.cfg.PageSize)}
	}
	st, ok := s.lay.parse(data, n)
	if !ok {
		if allZero(data) {
			return s.ZeroPage(n)
		}
		return &livemig.PageError{Op: "write", Page: n, Err: fmt.Errorf("%w: header does not name page %d", livemig.ErrCorrupt, n)}
	}
	bp := s.scratch.Get().(*[]byte)
	want := *bp
	s.lay.fill(want, n, st)
	eq := bytes.Equal(want, data)
	off := 0
	if !eq {
		for off < len(data) && data[off] == want[off] {
			off++
		}
	}
	s.scratch.Put(bp)
	if !eq {
		if allZero(data) {
			return s.ZeroPage(n)
		}
		return &livemig.PageError{Op: "write", Page: n, Err: fmt.Errorf("%w: byte %d differs from the contents of state %v", livemig.ErrCorrupt, off, st)}
	}
	atomic.StoreUint64(&s.ident[n], st.pack())
	s.zero.ClearAtomic(n)
	s.have.SetAtomic(n)
	return nil
}

// ZeroPage makes page n all zeros. The error is a *livemig.PageError
// wrapping livemig.ErrPageRange for a page past the end.
func (s *Sink) ZeroPage(n uint64) error {
	if n >= s.cfg.Pages {
		return &livemig.PageError{Op: "zero", Page: n, Err: livemig.ErrPageRange}
	}
	atomic.StoreUint64(&s.ident[n], 0)
	s.zero.SetAtomic(n)
	s.have.SetAtomic(n)
	return nil
}

// ReadPage writes the contents of page n as the sink holds it to dst,
// which must be exactly PageSize bytes; a page never received reads as
// zeros. Errors are *livemig.PageError wrapping livemig.ErrPageRange or
// ErrBufferSize.
func (s *Sink) ReadPage(n uint64, dst []byte) error {
	if n >= s.cfg.Pages {
		return &livemig.PageError{Op: "read", Page: n, Err: livemig.ErrPageRange}
	}
	if len(dst) != s.cfg.PageSize {
		return &livemig.PageError{Op: "read", Page: n, Err: fmt.Errorf("%w: %d bytes, want %d", ErrBufferSize, len(dst), s.cfg.PageSize)}
	}
	if !s.have.TestAtomic(n) || s.zero.TestAtomic(n) {
		clear(dst)
		return nil
	}
	s.lay.fill(dst, n, unpack(atomic.LoadUint64(&s.ident[n])))
	return nil
}

// Page returns what the sink holds as page n: received says whether it
// received the page at all, zero whether it holds all zeros, and st the
// state of the source's page it holds otherwise.
func (s *Sink) Page(n uint64) (st PageState, received, zero bool) {
	if n >= s.cfg.Pages {
		return PageState{}, false, false
	}
	return unpack(atomic.LoadUint64(&s.ident[n])), s.have.TestAtomic(n), s.zero.TestAtomic(n)
}

// Received returns the number of distinct pages received.
func (s *Sink) Received() uint64 {
	var c uint64
	for i := range s.have {
		c += uint64(bits.OnesCount64(atomic.LoadUint64(&s.have[i])))
	}
	return c
}

// Pause records that the guest is stopped here; Resumed reports false
// until the next Resume. It returns ctx.Err() if ctx is done.
func (s *Sink) Pause(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	s.resumed = false
	s.mu.Unlock()
	return nil
}

// Resume records that the guest was resumed here. It returns ctx.Err() if
// ctx is done.
func (s *Sink) Resume(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	s.resumed = true
	s.mu.Unlock()
	return nil
}

// Resumed reports whether Resume was called (and Pause not since).
func (s *Sink) Resumed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.resumed
}

// LoadState checks that state is one a guest of the sink's configuration
// saves (an error wrapping livemig.ErrCorrupt otherwise, and the sink keeps
// what it had) and keeps a copy of it.
func (s *Sink) LoadState(ctx context.Context, state []byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := checkState(state, &s.lay); err != nil {
		return err
	}
	s.mu.Lock()
	s.state = append(s.state[:0], state...)
	s.loaded = true
	s.mu.Unlock()
	return nil
}

// SaveState appends the state last loaded to dst (nothing if none was).
func (s *Sink) SaveState(ctx context.Context, dst []byte) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return dst, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return append(dst, s.state...), nil
}

// ErrMismatch is wrapped, together with livemig.ErrVerify, by the error
// Verify returns when the sink differs from the guest.
var ErrMismatch = errors.New("sim: destination differs from source")

// maxListed bounds the pages a Verify error names.
const maxListed = 8

// Verify checks that every page the sink holds equals the page g holds
// (g should be paused, as a source is at switchover) and, if the sink has
// loaded a state, that it equals the state g saves now. g must have the
// sink's configuration. The error wraps livemig.ErrVerify and ErrMismatch,
// and says how many pages differ and names the first ones, or wraps
// ErrConfig when the configurations differ.
func (s *Sink) Verify(g *Guest) error {
	if g.cfg != s.cfg {
		return fmt.Errorf("%w: guest and sink configurations differ", ErrConfig)
	}
	g.mu.Lock()
	g.advance()
	var (
		bad, missing uint64
		listed       []string
	)
	for n := uint64(0); n < s.cfg.Pages; n++ {
		want := unpack(g.state[n])
		got, have, zero := s.Page(n)
		var why string
		switch {
		case !have:
			missing++
			why = "missing"
		case zero:
			if !s.lay.isZero(n, want) {
				why = fmt.Sprintf("zero, source %v", want)
			}
		case got != want:
			why = fmt.Sprintf("%v, source %v", got, want)
		}
		if why == "" {
			continue
		}
		bad++
		if len(listed) < maxListed {
			listed = append(listed, fmt.Sprintf("page %d (%s)", n, why))
		}
	}
	var state []byte
	if s.loaded {
		state = appendState(nil, &g.lay, g.run, g.stats.Writes)
	}
	g.mu.Unlock()
	var errs []string
	if bad > 0 {
		more := ""
		if bad > uint64(len(listed)) {
			more = ", ..."
		}
		errs = append(errs, fmt.Sprintf("%d of %d pages differ (%d missing): %s%s", bad, s.cfg.Pages, missing, strings.Join(listed, ", "), more))
	}
	s.mu.Lock()
	if s.loaded && !bytes.Equal(state, s.state) {
		errs = append(errs, "the state differs")
	}
	s.mu.Unlock()
	if len(errs) > 0 {
		return fmt.Errorf("%w: %w: %s", livemig.ErrVerify, ErrMismatch, strings.Join(errs, "; "))
	}
	return nil
}

var (
	_ livemig.PageSink   = (*Sink)(nil)
	_ livemig.PageReader = (*Sink)(nil)
	_ livemig.Memory     = (*Sink)(nil)
	_ livemig.VM         = (*Sink)(nil)
)
