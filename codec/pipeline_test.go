package codec

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"os"
	"runtime"
	"slices"
	"testing"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/delta"
	"github.com/livemig/livemig/transport"
	"github.com/livemig/livemig/verify"
	"github.com/livemig/livemig/wire"
)

const testPS = 4096

// sent is one record as send saw it.
type sent struct {
	round int
	page  uint64
	enc   transport.Encoding
	size  int
	crc   uint32
}

type runResult struct {
	records []sent
	stats   livemig.CodecStats
}

type variant struct {
	name string
	cfg  Config
}

var variants = []variant{
	{"xbzrle+lz4", Config{XBZRLE: true, LZ4: true, NoAdapt: true}},
	{"xbzrle-setassoc-small", Config{XBZRLE: true, Cache: delta.CacheConfig{Bytes: 256 << 10, Ways: 4}, NoAdapt: true}},
	{"xbzrle-direct-small", Config{XBZRLE: true, LZ4: true, Cache: delta.CacheConfig{Bytes: 128 << 10}, NoAdapt: true}},
	{"lz4", Config{LZ4: true, NoAdapt: true}},
	{"none", Config{NoAdapt: true}},
}

// migrate runs rounds rounds of a pre-copy over src through a Pipeline
// and a Decoder, changing pages with pat between rounds, and checks after
// each round that the destination equals the source and the digests agree.
func migrate(t testing.TB, cfg Config, pat pattern, view bool, pages, rounds int, seed uint64) runResult {
	t.Helper()
	return migrateVia(t, cfg, pat, view, false, pages, rounds, seed)
}

// migrateVia is migrate, with batches: the workers build the frames
// (SendBatches) of a Conn on a Pipe, and the records checked and applied
// are those a Conn at the other end receives.
func migrateVia(t testing.TB, cfg Config, pat pattern, view, batches bool, pages, rounds int, seed uint64) runResult {
	t.Helper()
	ctx := context.Background()
	src := newMem(testPS, pages, seed)
	var memory livemig.Memory = src
	if view {
		memory = viewMem{src}
	}
	dst := newSink(testPS, pages)
	sd, dd := verify.New(uint64(pages), testPS), verify.New(uint64(pages), testPS)
	dec := NewDecoder(cfg)
	var (
		res   runResult
		round int
		g     guard
	)
	send := func(m transport.Msg) error {
		defer g.enter(t)()
		if m.Kind != wire.KindPage {
			t.Errorf("record of kind %d", m.Kind)
		}
		switch m.Enc {
		case transport.EncXBZRLE:
			if round < 2 {
				t.Errorf("round %d: page %d sent as XBZRLE", round, m.Page)
			}
			if !cfg.XBZRLE {
				t.Errorf("page %d sent as XBZRLE with XBZRLE off", m.Page)
			}
		case transport.EncLZ4:
			if len(m.Data) > MaxLZ4(testPS) {
				t.Errorf("page %d sent as LZ4 of %d bytes, more than MaxLZ4", m.Page, len(m.Data))
			}
			if !cfg.LZ4 {
				t.Errorf("page %d sent as LZ4 with LZ4 off", m.Page)
			}
		case transport.EncZero:
			if !IsZero(src.page(m.Page)) {
				t.Errorf("page %d sent as zero but is not", m.Page)
			}
		case transport.EncRaw:
			if IsZero(m.Data) {
				t.Errorf("zero page %d sent raw", m.Page)
			}
		}
		res.records = append(res.records, sent{round, m.Page, m.Enc, len(m.Data), crc32.ChecksumIEEE(m.Data)})
		p, err := dec.Apply(dst, m.Page, m.Enc, m.Data)
		if err != nil {
			t.Errorf("apply page %d (%d): %v", m.Page, m.Enc, err)
			return err
		}
		if p == nil {
			dd.Zero(m.Page)
		} else {
			dd.Update(m.Page, p)
		}
		return nil
	}
	pl, err := NewPipeline(cfg, memory, sd, send)
	if err != nil {
		t.Fatal(err)
	}
	defer pl.Close()
	endRound := func() {}
	if batches {
		sc, rc, marks := batchLink(t, testPS, send)
		if !pl.SendBatches(sc, func(b *transport.Batch) error { return sc.SendBatch(ctx, b) }) {
			t.Fatal("SendBatches did not take effect")
		}
		endRound = func() {
			if err := sc.Send(ctx, transport.Msg{Kind: wire.KindEndRound}); err != nil {
				t.Fatal(err)
			}
			if err := sc.Flush(ctx); err != nil {
				t.Fatal(err)
			}
			if err := <-marks; err != nil {
				t.Fatal(err)
			}
		}
		defer rc.Close()
		defer sc.Close()
	}
	rng := rand.New(rand.NewPCG(seed, 2))
	for round = 1; round <= rounds; round++ {
		var dirty []uint64
		if round == 1 {
			for n := range uint64(pages) {
				dirty = append(dirty, n)
			}
		} else {
			for _, n := range rng.Perm(pages)[:pages/2] {
				p := src.page(uint64(n))
				switch r := rng.IntN(16); {
				case r == 0: // the page becomes zero
					clear(p)
				case r == 1 || IsZero(p): // a page gets new contents
					fillPage(rng, p, 1+rng.IntN(3))
				default:
					pat.mutate(rng, p)
				}
				dirty = append(dirty, uint64(n))
			}
		}
		pl.StartRound(round, round == rounds)
		for _, n := range dirty {
			if err := pl.Submit(ctx, n); err != nil {
				t.Fatalf("round %d: submit %d: %v", round, n, err)
			}
		}
		if err := pl.Barrier(ctx); err != nil {
			t.Fatalf("round %d: barrier: %v", round, err)
		}
		endRound()
		if t.Failed() {
			t.FailNow()
		}
		for n := range uint64(pages) {
			if !bytes.Equal(src.page(n), dst.page(n)) {
				t.Fatalf("round %d: page %d differs at the destination", round, n)
			}
		}
		if sd.Sum() != dd.Sum() {
			t.Fatalf("round %d: digests differ: source %016x, destination %016x", round, sd.Sum(), dd.Sum())
		}
		recs, zeros, wire := pl.RoundStats()
		var wantRecs, wantZeros, wantWire uint64
		for _, r := range res.records {
			if r.round == round {
				wantRecs++
				wantWire += 13 + uint64(r.size)
				if r.enc == transport.EncZero {
					wantZeros++
				}
			}
		}
		if recs != wantRecs || zeros != wantZeros || wire != wantWire {
			t.Fatalf("round %d: RoundStats %d, %d, %d; send saw %d, %d, %d", round, recs, zeros, wire, wantRecs, wantZeros, wantWire)
		}
	}
	res.stats = pl.Stats()
	return res
}

// batchConn is the source's Conn of batchLink.
type batchConn interface {
	transport.Conn
	transport.BatchSender
}

// batchLink returns a Conn on a Pipe for SendBatches, and the Conn at its
// other end, whose records a goroutine passes to send (checking that a
// raw page's CRC is its data's), until it is closed. At each
// wire.KindEndRound it sends the result on marks: nil, or the error that
// stopped it.
func batchLink(t testing.TB, ps int, send func(transport.Msg) error) (batchConn, transport.Conn, <-chan error) {
	t.Helper()
	la, lb := transport.Pipe(1 << 20)
	cfg := transport.Config{PageSize: ps, Liveness: -1}
	sc, rc := transport.NewConn(la, cfg), transport.NewConn(lb, cfg)
	bs, ok := sc.(batchConn)
	if !ok {
		t.Fatal("a Conn on a Pipe is no BatchSender")
	}
	marks := make(chan error, 1)
	done := make(chan struct{})
	t.Cleanup(func() { rc.Close(); <-done })
	go func() {
		defer close(done)
		var m transport.Msg
		var failed error
		for {
			if err := rc.Recv(context.Background(), &m); err != nil {
				if failed == nil && !errors.Is(err, livemig.ErrClosed) && err != io.EOF {
					marks <- err
				}
				return
			}
			if m.Kind == wire.KindEndRound {
				marks <- failed
				continue
			}
			if m.Enc == transport.EncRaw && (!m.HaveCRC || m.DataCRC != verify.CRC(m.Data)) {
				failed = fmt.Errorf("page %d: raw record without its CRC", m.Page)
			}
			if err := send(m); err != nil && failed == nil {
				failed = err
			}
		}
	}()
	return bs, rc, marks
}

// TestRoundTripBatches runs TestRoundTrip's migrations with the workers
// building the frames (SendBatches): every page read straight into its
// record in a frame, and shrunk there when it turns out zero (pages become
// zero between rounds), compressible or a delta. The destination, the
// digests and RoundStats agree as before (migrate checks them), and the
// records received are those the record-by-record pipeline sends.
func TestRoundTripBatches(t *testing.T) {
	for _, v := range variants {
		for _, pat := range patterns {
			for _, view := range []bool{false, true} {
				name := v.name + "/" + pat.name
				if view {
					name += "/view"
				}
				t.Run(name, func(t *testing.T) {
					t.Parallel()
					cfg := v.cfg
					cfg.Workers = 4
					got := migrateVia(t, cfg, pat, view, true, 128, 5, 7)
					want := migrateVia(t, cfg, pat, view, false, 128, 5, 7)
					order := func(a, b sent) int {
						return cmp.Or(cmp.Compare(a.round, b.round), cmp.Compare(a.page, b.page))
					}
					slices.SortFunc(got.records, order)
					slices.SortFunc(want.records, order)
					if !slices.Equal(got.records, want.records) {
						t.Fatalf("%d records in batches, %d one by one; they differ", len(got.records), len(want.records))
					}
					if got.stats != want.stats {
						t.Fatalf("stats %+v in batches, %+v one by one", got.stats, want.stats)
					}
				})
			}
		}
	}
}

// TestReadErrorBatches: a page that cannot be read in the middle of a
// worker's batch frame. The frame goes out whole with the records before
// it (the receiver sees no bad frame), the page's reserved bytes are given
// back, and the pipeline stops with the read error.
func TestReadErrorBatches(t *testing.T) {
	ctx := context.Background()
	const pages, bad, workers = 256, 77, 3
	src := newMem(testPS, pages, 1)
	src.failAt, src.failErr = bad, errBoom
	var got []uint64
	sc, rc, marks := batchLink(t, testPS, func(m transport.Msg) error {
		got = append(got, m.Page)
		if m.Enc == transport.EncRaw {
			if !bytes.Equal(m.Data, src.page(m.Page)) {
				return fmt.Errorf("page %d's data differ", m.Page)
			}
		}
		return nil
	})
	pl, err := NewPipeline(Config{Workers: workers}, src, nil, func(transport.Msg) error {
		t.Error("a record went to send")
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !pl.SendBatches(sc, func(b *transport.Batch) error { return sc.SendBatch(ctx, b) }) {
		t.Fatal("SendBatches did not take effect")
	}
	var serr error
	for n := range uint64(pages) {
		if serr = pl.Submit(ctx, n); serr != nil {
			break
		}
	}
	if serr == nil {
		serr = pl.Barrier(ctx)
	}
	var pe *livemig.PageError
	if !errors.As(serr, &pe) || pe.Page != bad || pe.Op != "read" || !errors.Is(serr, errBoom) {
		t.Fatalf("got %v, want a read PageError for page %d", serr, bad)
	}
	pl.Close()
	if err := sc.Send(ctx, transport.Msg{Kind: wire.KindEndRound}); err != nil {
		t.Fatal(err)
	}
	if err := sc.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-marks; err != nil {
		t.Fatalf("the receiver: %v", err)
	}
	rc.Close()
	// The bad page's batch held its stripe, bad rounded down to a
	// multiple of stripePages, and on: those before it went out in its
	// frame.
	for n := uint64(bad / stripePages * stripePages); n < bad; n++ {
		if !slices.Contains(got, n) {
			t.Errorf("page %d, before the bad one in its batch, was not received (got %v)", n, got)
		}
	}
	if slices.Contains(got, bad) {
		t.Errorf("the page that could not be read was received")
	}
}

// TestSendBatchesWhen: SendBatches takes effect only with several workers,
// in real time, before the first Submit.
func TestSendBatchesWhen(t *testing.T) {
	ctx := context.Background()
	src := newMem(testPS, 8, 1)
	none := func(transport.Msg) error { return nil }
	sc, _, _ := batchLink(t, testPS, none)
	sendB := func(b *transport.Batch) error { return sc.SendBatch(ctx, b) }
	for _, tc := range []struct {
		name   string
		cfg    Config
		submit bool
		want   bool
	}{
		{"TwoWorkers", Config{Workers: 2}, false, true},
		{"OneWorker", Config{Workers: 1}, false, false},
		{"VirtualTime", Config{Workers: 2, VirtualTime: true}, false, false},
		{"AfterSubmit", Config{Workers: 2}, true, false},
	} {
		pl, err := NewPipeline(tc.cfg, src, nil, none)
		if err != nil {
			t.Fatal(err)
		}
		if tc.submit {
			if err := pl.Submit(ctx, 1); err != nil {
				t.Fatal(err)
			}
		}
		if got := pl.SendBatches(sc, sendB); got != tc.want {
			t.Errorf("%s: SendBatches = %v, want %v", tc.name, got, tc.want)
		}
		pl.Close()
	}
}

func TestRoundTrip(t *testing.T) {
	for _, v := range variants {
		for _, pat := range patterns {
			for _, workers := range []int{1, 4} {
				name := v.name + "/" + pat.name + "/w" + string(rune('0'+workers))
				t.Run(name, func(t *testing.T) {
					t.Parallel()
					cfg := v.cfg
					cfg.Workers = workers
					res := migrate(t, cfg, pat, workers == 4, 128, 5, 7)
					s := res.stats
					var delta, lz, zero int
					for _, r := range res.records {
						switch r.enc {
						case transport.EncXBZRLE:
							delta++
						case transport.EncLZ4:
							lz++
						case transport.EncZero:
							zero++
						}
					}
					if zero == 0 {
						t.Error("no zero page records")
					}
					if cfg.LZ4 && lz == 0 {
						t.Error("LZ4 on but no page sent as LZ4")
					}
					if uint64(lz) != s.LZ4Pages || uint64(delta) != s.DeltaPages {
						t.Errorf("stats say %d LZ4 and %d delta pages, send saw %d and %d", s.LZ4Pages, s.DeltaPages, lz, delta)
					}
					if cfg.XBZRLE {
						if s.CacheHits == 0 || s.CacheMisses == 0 {
							t.Errorf("cache hits %d, misses %d: want both", s.CacheHits, s.CacheMisses)
						}
						if pat.name != "identical" && pat.name != "all-different" && pat.name != "40pct" && delta == 0 {
							t.Error("no XBZRLE delta sent")
						}
					} else if s.CacheHits+s.CacheMisses != 0 {
						t.Errorf("XBZRLE off but %d cache lookups", s.CacheHits+s.CacheMisses)
					}
				})
			}
		}
	}
}

func TestDeterministic(t *testing.T) {
	cfg := Config{XBZRLE: true, LZ4: true, Workers: 1, Cache: delta.CacheConfig{Bytes: 256 << 10}}
	for _, pat := range patterns {
		a := migrate(t, cfg, pat, false, 96, 4, 11)
		b := migrate(t, cfg, pat, false, 96, 4, 11)
		if len(a.records) != len(b.records) {
			t.Fatalf("%s: %d records, then %d", pat.name, len(a.records), len(b.records))
		}
		for i := range a.records {
			if a.records[i] != b.records[i] {
				t.Fatalf("%s: record %d: %+v, then %+v", pat.name, i, a.records[i], b.records[i])
			}
		}
		if a.stats != b.stats {
			t.Fatalf("%s: stats %+v, then %+v", pat.name, a.stats, b.stats)
		}
	}
}

// TestZeroPageRefreshesCache: a cached page that is sent as a zero page
// must not be delta-encoded against its stale copy afterwards.
func TestZeroPageRefreshesCache(t *testing.T) {
	for _, workers := range []int{1, 2} {
		ctx := context.Background()
		src := newMem(testPS, 4, 3)
		fillPage(rand.New(rand.NewPCG(1, 1)), src.page(2), 1)
		dst := newSink(testPS, 4)
		dec := NewDecoder(Config{})
		var encs []transport.Encoding
		pl, err := NewPipeline(Config{XBZRLE: true, Workers: workers, NoAdapt: true}, src, nil, func(m transport.Msg) error {
			if m.Page == 2 {
				encs = append(encs, m.Enc)
			}
			_, err := dec.Apply(dst, m.Page, m.Enc, m.Data)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		step := func(round int, mutate func(p []byte)) {
			mutate(src.page(2))
			pl.StartRound(round, false)
			if err := pl.Submit(ctx, 2); err != nil {
				t.Fatal(err)
			}
			if err := pl.Barrier(ctx); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(src.page(2), dst.page(2)) {
				t.Fatalf("workers %d, round %d: page differs at the destination (encodings %v)", workers, round, encs)
			}
		}
		step(1, func([]byte) {}) // raw, not cached
		var cached []byte
		step(2, func(p []byte) { p[0]++; cached = append(cached, p...) }) // miss: raw, cached
		step(3, func(p []byte) { clear(p) })                              // zero: the cache must follow
		// Close to the stale copy: a delta against it would fit, but the
		// destination holds zeros, so the page must go raw (overflow).
		step(4, func(p []byte) { copy(p, cached); p[9]++ })
		step(5, func(p []byte) { p[100] ^= 1 }) // hit: delta
		want := []transport.Encoding{transport.EncRaw, transport.EncRaw, transport.EncZero, transport.EncRaw, transport.EncXBZRLE}
		if !equalEncs(encs, want) {
			t.Errorf("workers %d: encodings %v, want %v", workers, encs, want)
		}
		pl.Close()
	}
}

func equalEncs(a, b []transport.Encoding) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// TestFinalRoundDoesNotCache: in the final round a miss is not cached, and
// an unchanged page produces no record.
func TestUnchangedAndFinal(t *testing.T) {
	ctx := context.Background()
	src := newMem(testPS, 8, 5)
	for n := range uint64(8) {
		fillPage(rand.New(rand.NewPCG(n, 9)), src.page(n), 1)
	}
	var records int
	pl, err := NewPipeline(Config{XBZRLE: true, Workers: 1}, src, nil, func(transport.Msg) error { records++; return nil })
	if err != nil {
		t.Fatal(err)
	}
	defer pl.Close()
	for round := 1; round <= 3; round++ {
		pl.StartRound(round, round == 3)
		for n := range uint64(4) {
			if round == 3 {
				n += 4 // pages never cached: misses in the final round
			}
			if err := pl.Submit(ctx, n); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Round 1: 4 raw, round 2: 4 misses (cached), round 3: 4 misses of other
	// pages (not cached) and nothing else.
	s := pl.Stats()
	if records != 12 || s.CacheMisses != 8 || s.CacheHits != 0 {
		t.Fatalf("records %d, stats %+v", records, s)
	}
	pl.StartRound(4, true)
	for n := range uint64(8) {
		if err := pl.Submit(ctx, n); err != nil {
			t.Fatal(err)
		}
	}
	// Pages 0-3 are cached and unchanged: no record. Pages 4-7 still miss.
	s = pl.Stats()
	if pages, _, _ := pl.RoundStats(); pages != 4 || s.CacheHits != 4 || s.CacheMisses != 12 {
		t.Fatalf("round 4: %d records, stats %+v", pages, s)
	}
}

func TestSendError(t *testing.T) {
	for _, workers := range []int{1, 4} {
		ctx := context.Background()
		src := newMem(testPS, 1024, 1)
		calls := 0
		pl, err := NewPipeline(Config{Workers: workers, LZ4: true}, src, nil, func(transport.Msg) error {
			if calls++; calls > 100 {
				return errBoom
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		var got error
		for n := range uint64(1024) {
			if got = pl.Submit(ctx, n); got != nil {
				break
			}
		}
		if got == nil {
			got = pl.Barrier(ctx)
		}
		if !errors.Is(got, errBoom) {
			t.Errorf("workers %d: got %v, want %v", workers, got, errBoom)
		}
		if err := pl.Submit(ctx, 0); !errors.Is(err, errBoom) {
			t.Errorf("workers %d: Submit after the error: %v", workers, err)
		}
		if err := pl.Barrier(ctx); !errors.Is(err, errBoom) {
			t.Errorf("workers %d: Barrier after the error: %v", workers, err)
		}
		if calls != 101 {
			t.Errorf("workers %d: send called %d times after failing at 101", workers, calls)
		}
		pl.Close()
		if err := pl.Submit(ctx, 0); !errors.Is(err, errBoom) {
			t.Errorf("after Close: %v", err)
		}
	}
}

func TestReadError(t *testing.T) {
	for _, workers := range []int{1, 3} {
		ctx := context.Background()
		src := newMem(testPS, 256, 1)
		src.failAt, src.failErr = 77, errBoom
		pl, err := NewPipeline(Config{Workers: workers}, src, nil, func(transport.Msg) error { return nil })
		if err != nil {
			t.Fatal(err)
		}
		var got error
		for n := range uint64(256) {
			if got = pl.Submit(ctx, n); got != nil {
				break
			}
		}
		if got == nil {
			got = pl.Barrier(ctx)
		}
		var pe *livemig.PageError
		if !errors.As(got, &pe) || pe.Page != 77 || pe.Op != "read" || !errors.Is(got, errBoom) {
			t.Errorf("workers %d: got %v, want a read PageError for page 77", workers, got)
		}
		pl.Close()
	}
}

func TestSubmitErrors(t *testing.T) {
	src := newMem(testPS, 16, 1)
	pl, err := NewPipeline(Config{Workers: 2}, src, nil, func(transport.Msg) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	if err := pl.Submit(context.Background(), 16); !errors.Is(err, livemig.ErrPageRange) {
		t.Errorf("page 16 of 16: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := pl.Submit(ctx, 0); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: %v", err)
	}
	if err := pl.Barrier(context.Background()); !errors.Is(err, context.Canceled) {
		t.Errorf("barrier after cancel: %v", err)
	}
	pl.Close()
	pl.Close()

	pl, err = NewPipeline(Config{Workers: 2}, src, nil, func(transport.Msg) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	pl.Close()
	if err := pl.Submit(context.Background(), 0); !errors.Is(err, livemig.ErrClosed) {
		t.Errorf("after Close: %v", err)
	}
}

func TestNewPipelineConfig(t *testing.T) {
	src := newMem(testPS, 16, 1)
	send := func(transport.Msg) error { return nil }
	for _, tc := range []struct {
		name   string
		cfg    Config
		digest *verify.Digest
	}{
		{"page size", Config{PageSize: 8192}, nil},
		{"cache too small", Config{XBZRLE: true, Workers: 4, Cache: delta.CacheConfig{Bytes: 8192}}, nil},
		{"digest too small", Config{}, verify.New(8, testPS)},
	} {
		if _, err := NewPipeline(tc.cfg, src, tc.digest, send); !errors.Is(err, ErrConfig) {
			t.Errorf("%s: %v, want ErrConfig", tc.name, err)
		}
	}
	if _, err := NewPipeline(Config{}, nil, nil, send); !errors.Is(err, ErrConfig) {
		t.Errorf("nil memory: %v", err)
	}
}

// TestIsZero: IsZero, the OR loop, the AVX-512 check (where the CPU has
// it; BenchmarkIsZeroRatio measures it) and the workers' isZeroCopied agree on zero pages and on
// pages with one byte set, at every offset of a 4 KiB page.
func TestIsZero(t *testing.T) {
	if !hasAVX512 {
		if os.Getenv("LIVEMIG_REQUIRE_AVX512") == "1" {
			t.Fatal("LIVEMIG_REQUIRE_AVX512=1 but this CPU or build has no AVX-512 zero check")
		}
		t.Log("no AVX-512 here (CPU or purego build): the AVX-512 check is not tested")
	}
	vec := func(p []byte) bool { return !hasAVX512 || isZeroVec(p) }
	novec := func(p []byte) bool { return hasAVX512 && isZeroVec(p) }
	page := make([]byte, 4096)
	for i := range page {
		page[i] = 1
		if IsZero(page) || isZeroWords(page) || novec(page) || isZeroCopied(page) {
			t.Fatalf("4096 bytes with byte %d set: zero", i)
		}
		page[i] = 0
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for _, n := range []int{0, 1, 7, 63, 64, 65, 127, 128, 255, 256, 320, 4096, 8191, 70000, 200000} {
		p := make([]byte, n)
		if !IsZero(p) || !isZeroWords(p) || !vec(p) || !isZeroCopied(p) {
			t.Fatalf("%d zero bytes: not zero", n)
		}
		for range 20 {
			if n == 0 {
				break
			}
			i := rng.IntN(n)
			p[i] = byte(1 + rng.IntN(255))
			if IsZero(p) || isZeroWords(p) || novec(p) || isZeroCopied(p) {
				t.Fatalf("%d bytes with byte %d set: zero", n, i)
			}
			p[i] = 0
		}
	}
}

// The batches in flight hold at most batchBytes of pages each, so a
// pipeline of 2 MiB pages on 8 workers takes tens of MiB, not the 4 GiB
// that 64-page batches took; and its pages still arrive whole.
func TestLargePagesBoundBatchMemory(t *testing.T) {
	const ps, pages = 2 << 20, 16
	src := newMem(ps, pages, 5)
	for n := range pages {
		fillPage(rand.New(rand.NewPCG(uint64(n), 2)), src.page(uint64(n)), 1)
	}
	dst := newSink(ps, pages)
	dec := NewDecoder(Config{PageSize: ps})
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	pl, err := NewPipeline(Config{PageSize: ps, LZ4: true, Workers: 8, NoAdapt: true}, src, nil, func(m transport.Msg) error {
		_, err := dec.Apply(dst, m.Page, m.Enc, m.Data)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	runtime.ReadMemStats(&after)
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 256<<20 {
		t.Fatalf("a pipeline of %d-byte pages on 8 workers allocated %d MiB", ps, grew>>20)
	}
	ctx := context.Background()
	pl.StartRound(1, false)
	for n := range uint64(pages) {
		if err := pl.Submit(ctx, n); err != nil {
			t.Fatal(err)
		}
	}
	if err := pl.Barrier(ctx); err != nil {
		t.Fatal(err)
	}
	if err := pl.Close(); err != nil {
		t.Fatal(err)
	}
	for n := range pages {
		if !bytes.Equal(src.page(uint64(n)), dst.page(uint64(n))) {
			t.Fatalf("page %d differs at the destination", n)
		}
	}
}

// StartOff starts with the codecs off; SetCodecs turns on those the Config
// allows, for the pages submitted after it, and refuses the others.
func TestSetCodecs(t *testing.T) {
	ctx := context.Background()
	src := newMem(testPS, 8, 5)
	for n := range uint64(8) {
		fillPage(rand.New(rand.NewPCG(n, 9)), src.page(n), 2) // text: LZ4 pays
	}
	var encs []transport.Encoding
	pl, err := NewPipeline(Config{LZ4: true, StartOff: true, Workers: 1}, src, nil, func(m transport.Msg) error {
		encs = append(encs, m.Enc)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	defer pl.Close()
	if c := pl.Codecs(); c != (Codecs{}) {
		t.Fatalf("started with %s, want none", c)
	}
	pl.StartRound(1, false)
	submit := func(from, to uint64) {
		for n := from; n < to; n++ {
			if err := pl.Submit(ctx, n); err != nil {
				t.Fatal(err)
			}
		}
	}
	submit(0, 4)
	if err := pl.SetCodecs(Codecs{XBZRLE: true}); !errors.Is(err, ErrConfig) {
		t.Fatalf("XBZRLE, not configured, turned on: %v", err)
	}
	if err := pl.SetCodecs(Codecs{LZ4: true}); err != nil {
		t.Fatal(err)
	}
	submit(4, 8)
	if err := pl.Barrier(ctx); err != nil {
		t.Fatal(err)
	}
	want := []transport.Encoding{transport.EncRaw, transport.EncRaw, transport.EncRaw, transport.EncRaw,
		transport.EncLZ4, transport.EncLZ4, transport.EncLZ4, transport.EncLZ4}
	if !equalEncs(encs, want) || pl.Codecs() != (Codecs{LZ4: true}) {
		t.Fatalf("encodings %v, codecs %s; want 4 raw then 4 LZ4", encs, pl.Codecs())
	}
}
