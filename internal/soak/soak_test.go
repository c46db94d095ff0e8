package soak

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/codec"
	"github.com/livemig/livemig/delta"
	"github.com/livemig/livemig/hybrid"
	"github.com/livemig/livemig/internal/testkit"
	"github.com/livemig/livemig/postcopy"
	"github.com/livemig/livemig/precopy"
	"github.com/livemig/livemig/region"
	"github.com/livemig/livemig/transport"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// rssGrowthMax bounds the growth of the resident set from the warm-up's end
// (the median of migrations 6-10) to the last (the median of 46-50), each
// figure taken after runtime.GC and debug.FreeOSMemory. A leak worth
// finding holds a guest's copy or a migration's buffers, 1 MiB or more per
// migration: 40 MiB or more over the 40 migrations. The bounds sit above
// the noise measured on the shared 2-core EPYC, 150 migrations in a row,
// with a margin of three or more. Without the race detector single figures
// were 9.9-12.6 MiB after the warm-up (a few 2-3 MiB above the rest, which
// the median drops) and medians of five 40 migrations apart differed by at
// most 0.8 MiB: 4 MiB. Under the race detector (its shadow memory and
// allocator) single figures swung between 41 and 53 MiB with no trend, and
// medians of five 40 migrations apart differed by -4.9 to +6.6 MiB (+10.3
// MiB with guests of 1-4 MiB): 20 MiB.
var rssGrowthMax int64 = 4 << 20

func init() {
	if raceEnabled {
		rssGrowthMax = 20 << 20
	}
}

const (
	pageSize   = 4096
	migrations = 50
	// warmUp is the migration after which the resident memory is taken as
	// the baseline: by then the heap, the race detector's shadow and the
	// allocator's caches have grown to what the mix of migrations needs.
	warmUp = 10
	// listenerGoroutines are the goroutines a listener keeps while open
	// once AcceptConn has been called: its accept loop and its dispatcher.
	listenerGoroutines = 2
	// settle bounds how long the goroutines and descriptors of a finished
	// migration may take to go (a closed Conn's reader, a subtest's
	// goroutine on its way out).
	settle = 5 * time.Second
	// rssWindow is how many migrations' resident-set figures are taken
	// together (their median) at the warm-up's end and at the last: a
	// single figure after runtime.GC and debug.FreeOSMemory swings by a few
	// MiB from one migration to the next (see rssGrowthMax).
	rssWindow = 5
)

type engine int

const (
	preCopy engine = iota
	postCopy
	hybridCopy
)

func (e engine) String() string { return [...]string{"precopy", "postcopy", "hybrid"}[e] }

// plan is what migration i (from 0) does: the engines take turns, the guest
// is 1 or 2 MiB, and the extras are on for six migrations in twelve: for
// pre-copy XBZRLE and LZ4 (an XBZRLE cache and encoding workers), for
// post-copy and hybrid an urgent connection. Every twelve migrations run
// each engine at each size with and without extras. The guests are small,
// and post-copy goes without LZ4, so that 50 migrations take about 10-15 s
// under the race detector on two shared cores (post-copy's LZ4 made a
// hybrid migration of 1 MiB take a second there); each guest is still
// written to while it migrates.
type plan struct {
	e      engine
	pages  uint64
	extras bool
}

func planFor(i int) plan {
	return plan{e: engine(i % 3), pages: uint64(256 * (1 + i%2)), extras: (i/6)%2 == 0}
}

func (p plan) String() string {
	s := fmt.Sprintf("%v-%dMiB", p.e, p.pages*pageSize>>20)
	if p.extras {
		s += "-extras"
	}
	return s
}

// sample is the process's figures after a migration. fds and rssKiB are -1
// where /proc/self is not there (not Linux).
type sample struct {
	goroutines int
	fds        int
	rssKiB     int64
}

// outcome is what one verified migration saw.
type outcome struct {
	took     time.Duration
	writes   uint64 // guest writes at the source while it migrated
	faults   uint64 // destination guest accesses that found their page missing
	verified bool   // every check passed
}

// TestSoak runs 50 back-to-back migrations into one listener and checks,
// after each, that the process holds exactly the goroutines and file
// descriptors it held before the first (plus the listener's own), and at
// the end that its resident memory grew by at most rssGrowthMax from the
// tenth to the last. Run with -v for the figures.
func TestSoak(t *testing.T) {
	if testing.Short() {
		t.Skip("the soak takes seconds; not in -short")
	}
	ctx := context.Background()
	ln, err := transport.Listen(ctx, "127.0.0.1:0", transport.ListenConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()

	before := sample{goroutines: runtime.NumGoroutine(), fds: countFDs(), rssKiB: rssKiB()}
	baseFDs := listFDs()
	want := before
	want.goroutines += listenerGoroutines
	samples := make([]sample, migrations+1) // samples[i]: after migration i
	samples[0] = before
	outcomes := make([]outcome, 0, migrations)
	start := time.Now()
	for i := range migrations {
		p := planFor(i)
		var o outcome
		if !t.Run(fmt.Sprintf("%02d-%v", i+1, p), func(t *testing.T) { o = migrate(t, ln, p, i) }) {
			t.FailNow()
		}
		if !o.verified {
			t.Fatalf("migration %d (%v) returned without being verified", i+1, p)
		}
		outcomes = append(outcomes, o)
		settleTo(t, want, baseFDs, i+1, p)
		samples[i+1] = measure()
	}
	total := time.Since(start)

	if len(outcomes) != migrations {
		t.Fatalf("%d migrations verified, want %d", len(outcomes), migrations)
	}
	var writes uint64
	for _, o := range outcomes {
		writes += o.writes
	}
	if writes == 0 {
		t.Fatal("no guest wrote to its memory while it migrated: the soak ran idle guests")
	}
	logFigures(t, outcomes, samples, total)

	if samples[warmUp].rssKiB >= 0 {
		from, to := rssMedian(samples, warmUp), rssMedian(samples, migrations)
		t.Logf("RSS median of migrations %d-%d: %.1f MiB; of %d-%d: %.1f MiB; growth %.1f MiB (bound %.0f MiB)",
			warmUp-rssWindow+1, warmUp, float64(from)/1024, migrations-rssWindow+1, migrations, float64(to)/1024,
			float64(to-from)/1024, float64(rssGrowthMax)/(1<<20))
		if growth := (to - from) << 10; growth > rssGrowthMax {
			t.Errorf("resident memory grew by %.1f MiB from migration %d to %d, want at most %.1f MiB (per migration: %v)",
				float64(growth)/(1<<20), warmUp, migrations, float64(rssGrowthMax)/(1<<20), rssSeries(samples))
		}
	}
}

// rssMedian is the median resident set, in KiB, after the rssWindow
// migrations that end with migration k.
func rssMedian(s []sample, k int) int64 {
	var w []int64
	for _, x := range s[k-rssWindow+1 : k+1] {
		w = append(w, x.rssKiB)
	}
	slices.Sort(w)
	return w[len(w)/2]
}

// migrate runs migration p (the i-th, from 0) into ln and checks that it
// completed, verified at both ends, with the destination holding the
// source's memory and state as at its pause.
func migrate(t *testing.T, ln *transport.Listener, p plan, i int) outcome {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	src := testkit.NewSource(t, pageSize, p.pages)
	stopWriters, writes := testkit.Writers(src, 1)
	defer stopWriters()

	hello := transport.Hello{PageSize: pageSize, PageCount: p.pages,
		Features: transport.FeatDigest | transport.FeatXBZRLE | transport.FeatLZ4}
	var tcfg transport.Config
	dial := testkit.Dialer(ln.Addr().String(), hello, tcfg)
	urgent := p.e != preCopy && p.extras
	dvm := &destVM{resumed: make(chan struct{})}

	var (
		wg         sync.WaitGroup
		rep        *livemig.Report
		serr, derr error
		dok        bool // the destination's report says verified and resumed
		dmem       []byte
		faults     uint64
	)
	fail := func(err *error, e error) {
		*err = e
		cancel() // the other side stops waiting
	}
	start := time.Now()
	wg.Add(2)
	go func() { // destination
		defer wg.Done()
		conn, _, err := ln.AcceptConn(ctx, hello, tcfg)
		if err != nil {
			fail(&derr, err)
			return
		}
		var ucn transport.Conn
		if urgent {
			if ucn, _, err = ln.AcceptConn(ctx, hello, tcfg); err != nil {
				conn.Close()
				fail(&derr, err)
				return
			}
		}
		if p.e == preCopy {
			dst, err := region.New(pageSize, p.pages)
			if err != nil {
				conn.Close()
				fail(&derr, err)
				return
			}
			defer dst.Close()
			drep, err := precopy.Receive(ctx, conn, precopy.Destination{Sink: dst, VM: dvm, Pages: p.pages, PageSize: pageSize}, precopy.Config{})
			if err != nil {
				fail(&derr, err)
				return
			}
			dok = drep.Verified && drep.Resumed
			dmem = bytes.Clone(dst.Bytes())
			return
		}
		fq := postcopy.NewFaultQueue(p.pages, nil)
		mem, err := postcopy.NewHeapMemory(pageSize, p.pages, fq.Fault)
		if err != nil {
			conn.Close()
			if ucn != nil {
				ucn.Close()
			}
			fail(&derr, err)
			return
		}
		// The guest at the destination: once resumed it reads 64 pages in
		// a seeded random order, each access waiting for its page and
		// requesting it if it is still missing.
		gctx, gcancel := context.WithCancel(ctx)
		defer gcancel()
		guestDone := make(chan struct{})
		go func() {
			defer close(guestDone)
			select {
			case <-dvm.resumed:
			case <-gctx.Done():
				return
			}
			order := rand.New(rand.NewPCG(uint64(i), 1)).Perm(int(p.pages))
			for _, n := range order[:64] {
				if mem.Access(gctx, uint64(n), func(pg []byte) { _ = pg[0] }) != nil {
					return
				}
			}
		}()
		dst := postcopy.Destination{Memory: mem, VM: dvm, Faults: fq, Pages: p.pages, PageSize: pageSize}
		cfg := postcopy.Config{Urgent: ucn}
		var drep *postcopy.ReceiveReport
		if p.e == hybridCopy {
			drep, err = hybrid.Receive(ctx, conn, dst, hybrid.Config{Config: cfg})
		} else {
			drep, err = postcopy.Receive(ctx, conn, dst, cfg)
		}
		if err != nil {
			gcancel()
		}
		<-guestDone
		if err != nil {
			fail(&derr, err)
			return
		}
		dok = drep.Verified && drep.Resumed && drep.Complete
		faults = mem.Faults()
		dmem = bytes.Clone(mem.Bytes())
	}()
	go func() { // source
		defer wg.Done()
		conn, err := dial(ctx)
		if err != nil {
			fail(&serr, err)
			return
		}
		s := precopy.Source{Memory: src, Dirty: src, VM: src}
		if p.e == preCopy {
			cfg := precopy.Config{}
			if p.extras {
				cfg.Codec = codec.Config{PageSize: pageSize, XBZRLE: true, LZ4: true, Cache: delta.CacheConfig{Bytes: 1 << 20}}
			}
			if rep, err = precopy.Migrate(ctx, conn, s, cfg); err != nil {
				fail(&serr, err)
			}
			return
		}
		var ucn transport.Conn
		if urgent {
			if ucn, err = dial(ctx); err != nil {
				conn.Close()
				fail(&serr, err)
				return
			}
		}
		cfg := postcopy.Config{Urgent: ucn}
		if p.e == hybridCopy {
			rep, err = hybrid.Migrate(ctx, conn, s, hybrid.Config{Rounds: 2, Config: cfg})
		} else {
			rep, err = postcopy.Migrate(ctx, conn, s, cfg)
		}
		if err != nil {
			fail(&serr, err)
		}
	}()
	wg.Wait()
	o := outcome{took: time.Since(start), writes: writes(), faults: faults}
	if serr != nil || derr != nil {
		t.Fatalf("migration failed: source: %v; destination: %v", serr, derr)
	}
	// The source is still paused, so its memory is as at the pause.
	if !src.Paused() || rep == nil || !rep.Verified || !dok || dvm.resumes.Load() != 1 {
		t.Fatalf("completed with the source paused %v, source report %+v, destination verified and resumed %v, %d resumes",
			src.Paused(), rep, dok, dvm.resumes.Load())
	}
	if n, first := testkit.DiffPages(src.Bytes(), dmem, pageSize); n != 0 {
		t.Fatalf("completed but %d pages differ (first %d)", n, first)
	}
	if got := dvm.loaded(); !bytes.Equal(got, src.State()) {
		t.Fatalf("destination loaded state %q, want %q", got, src.State())
	}
	o.verified = true
	return o
}

// destVM is a destination guest's control: it records the state loaded and
// the resumes, and closes resumed at the first.
type destVM struct {
	mu      sync.Mutex
	state   []byte
	resumes atomic.Int32
	resumed chan struct{}
}

func (v *destVM) Pause(context.Context) error { return nil }
func (v *destVM) Resume(context.Context) error {
	if v.resumes.Add(1) == 1 {
		close(v.resumed)
	}
	return nil
}
func (v *destVM) SaveState(_ context.Context, dst []byte) ([]byte, error) { return dst, nil }
func (v *destVM) LoadState(_ context.Context, s []byte) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.state = append(v.state[:0], s...)
	return nil
}

func (v *destVM) loaded() []byte {
	v.mu.Lock()
	defer v.mu.Unlock()
	return bytes.Clone(v.state)
}

// settleTo waits, within settle, until the process holds want's goroutines
// and descriptors again after migration i, polling every millisecond;
// otherwise it fails, listing the goroutines and the descriptors that were
// not open before the first migration.
func settleTo(t *testing.T, want sample, baseFDs map[string]string, i int, p plan) {
	t.Helper()
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	deadline := time.Now().Add(settle)
	for {
		g, fds := runtime.NumGoroutine(), countFDs()
		if g == want.goroutines && fds == want.fds {
			return
		}
		if time.Now().After(deadline) {
			var stacks bytes.Buffer
			_ = pprof.Lookup("goroutine").WriteTo(&stacks, 1)
			t.Fatalf("%v after migration %d (%v): %d goroutines and %d open descriptors, want %d and %d as before the first (plus the listener's %d goroutines)\n"+
				"descriptors not open before the first: %v\ngoroutines:\n%s",
				settle, i, p, g, fds, want.goroutines, want.fds, listenerGoroutines, newFDs(baseFDs), stacks.String())
		}
		<-tick.C
	}
}

// measure takes the process's figures after a full collection that returns
// freed memory to the system.
func measure() sample {
	runtime.GC()
	debug.FreeOSMemory()
	return sample{goroutines: runtime.NumGoroutine(), fds: countFDs(), rssKiB: rssKiB()}
}

// countFDs counts the entries of /proc/self/fd (the directory's own
// descriptor, open while it is read, included: the same at every count),
// or returns -1 if there is no such directory.
func countFDs() int {
	es, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return -1
	}
	return len(es)
}

// listFDs maps each open descriptor to what it refers to.
func listFDs() map[string]string {
	es, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return nil
	}
	m := make(map[string]string, len(es))
	for _, e := range es {
		m[e.Name()], _ = os.Readlink("/proc/self/fd/" + e.Name())
	}
	return m
}

// newFDs lists the descriptors open now that were not in base, or that
// refer to something else.
func newFDs(base map[string]string) []string {
	var out []string
	for fd, to := range listFDs() {
		if was, ok := base[fd]; !ok || was != to {
			out = append(out, fd+" → "+to)
		}
	}
	slices.Sort(out)
	return out
}

// rssKiB reads VmRSS from /proc/self/status, or returns -1.
func rssKiB() int64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return -1
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				return -1
			}
			return n
		}
	}
	return -1
}

func rssSeries(s []sample) string {
	var b strings.Builder
	for i, x := range s {
		fmt.Fprintf(&b, " %d:%.1f", i, float64(x.rssKiB)/1024)
	}
	return "MiB" + b.String()
}

// logFigures logs the wall time per migration (overall and by engine) and
// the process's figures before the first migration and after the first,
// the warm-up's last and the last.
func logFigures(t *testing.T, outs []outcome, s []sample, total time.Duration) {
	t.Helper()
	byEngine := map[engine][]time.Duration{}
	var all []time.Duration
	var faults uint64
	for i, o := range outs {
		e := planFor(i).e
		byEngine[e] = append(byEngine[e], o.took)
		all = append(all, o.took)
		faults += o.faults
	}
	stat := func(d []time.Duration) string {
		slices.Sort(d)
		var sum time.Duration
		for _, x := range d {
			sum += x
		}
		return fmt.Sprintf("mean %v, median %v, max %v (%d)", (sum / time.Duration(len(d))).Round(100*time.Microsecond),
			d[len(d)/2].Round(100*time.Microsecond), d[len(d)-1].Round(100*time.Microsecond), len(d))
	}
	t.Logf("%d migrations in %v, %v per migration; %d destination faults", len(outs), total.Round(time.Millisecond), (total / time.Duration(len(outs))).Round(100*time.Microsecond), faults)
	t.Logf("migration wall time: all: %s", stat(all))
	for _, e := range []engine{preCopy, postCopy, hybridCopy} {
		t.Logf("migration wall time: %v: %s", e, stat(byEngine[e]))
	}
	for _, i := range []int{0, 1, warmUp, migrations} {
		t.Logf("after migration %2d: %d goroutines, %d fds, RSS %.1f MiB", i, s[i].goroutines, s[i].fds, float64(s[i].rssKiB)/1024)
	}
	t.Logf("RSS per migration: %s", rssSeries(s))
}
