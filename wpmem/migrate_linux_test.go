//go:build linux

package wpmem_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/sys/unix"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/internal/testkit"
	"github.com/livemig/livemig/precopy"
	"github.com/livemig/livemig/region"
	"github.com/livemig/livemig/transport"
	"github.com/livemig/livemig/wpmem"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func newOrSkip(t testing.TB, pages uint64) *wpmem.Region {
	t.Helper()
	r, err := wpmem.New(pages)
	if err != nil {
		testkit.SkipOrFail(t, err, "userfaultfd asynchronous write-protect", "LIVEMIG_REQUIRE_UFFD")
	}
	t.Cleanup(func() {
		if err := r.Close(); err != nil {
			t.Error(err)
		}
	})
	return r
}

// gateVM is the control of a process's writers: each holds the gate
// shared around a few writes, and Pause takes it exclusively, so it returns
// once every write under way has finished; the kernel has recorded them.
type gateVM struct {
	gate   sync.RWMutex
	paused atomic.Bool
	state  []byte
}

func (v *gateVM) Pause(ctx context.Context) error {
	if v.paused.Load() {
		return nil
	}
	done := make(chan struct{})
	go func() { v.gate.Lock(); close(done) }()
	select {
	case <-done:
		v.paused.Store(true)
		return nil
	case <-ctx.Done():
		go func() { <-done; v.gate.Unlock() }()
		return ctx.Err()
	}
}

func (v *gateVM) Resume(context.Context) error {
	if v.paused.CompareAndSwap(true, false) {
		v.gate.Unlock()
	}
	return nil
}

func (v *gateVM) SaveState(_ context.Context, dst []byte) ([]byte, error) {
	return append(dst, v.state...), nil
}

// LoadState accepts only the state the source holds: it serves as a
// source, and changes nothing.
func (v *gateVM) LoadState(_ context.Context, state []byte) error {
	if !bytes.Equal(state, v.state) {
		return errors.New("gateVM: a source, not a destination: it loads no other state")
	}
	return nil
}

// writers starts three writers of mem (of which they write only the pages
// below hot) that never tell the Region: plain Go stores, copy() of a
// block, and read(2) from a pipe that a feeder keeps full. stop ends them
// (resuming vm) and waits; total counts their writes.
func writers(t *testing.T, mem []byte, ps, hot int, vm *gateVM) (stop func(), total func() uint64) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var count atomic.Uint64
	pages := hot
	mem = mem[:hot*ps]
	write := func(seed uint64, f func(rng *rand.Rand, i uint64)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, 99))
			for ctx.Err() == nil {
				vm.gate.RLock()
				for range 16 {
					f(rng, count.Add(1))
				}
				vm.gate.RUnlock()
			}
		}()
	}
	write(1, func(rng *rand.Rand, i uint64) { // plain stores
		binary.LittleEndian.PutUint64(mem[rng.IntN(pages)*ps+rng.IntN(ps/8)*8:], i)
	})
	var block [256]byte
	write(2, func(rng *rand.Rand, i uint64) { // copy: the runtime's memmove
		binary.LittleEndian.PutUint64(block[:], i)
		copy(mem[rng.IntN(len(mem)-len(block)):], block[:])
	})
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	wg.Add(1)
	go func() { // the feeder: no region writes of its own
		defer wg.Done()
		defer unix.Close(p[1])
		var buf [512]byte
		for i := uint64(0); ctx.Err() == nil; i++ {
			binary.LittleEndian.PutUint64(buf[:], i)
			if _, err := unix.Write(p[1], buf[:]); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	wg.Add(1)
	go func() { // read(2) into the region: the kernel writes it
		defer wg.Done()
		defer unix.Close(p[0])
		rng := rand.New(rand.NewPCG(3, 99))
		for {
			vm.gate.RLock()
			at := rng.IntN(len(mem) - 100)
			n, err := unix.Read(p[0], mem[at:at+100])
			vm.gate.RUnlock()
			if n <= 0 || err != nil {
				return // the feeder closed its end
			}
			count.Add(1)
		}
	}()
	return func() {
		cancel()
		_ = vm.Resume(context.Background())
		wg.Wait()
	}, count.Load
}

// A live migration of a kernel-tracked region by the pre-copy engine, over
// a pipe and over loopback TCP, while three writers that never tell the
// Region write its first hot pages: the destination ends equal to the source at pause time,
// byte for byte, the state arrived, and the end-to-end digest matched.
func TestLiveMigration(t *testing.T) {
	for _, tcp := range []bool{false, true} {
		name := map[bool]string{false: "pipe", true: "tcp"}[tcp]
		t.Run(name, func(t *testing.T) { testLiveMigration(t, tcp) })
	}
}

func testLiveMigration(t *testing.T, tcp bool) {
	const pages, hot = 8192, 1024 // 32 MiB of 4 KiB pages, 4 MiB written
	src := newOrSkip(t, pages)
	ps := src.PageSize()
	mem := src.Bytes()
	for off := 0; off < len(mem); off += 64 {
		binary.LittleEndian.PutUint64(mem[off:], uint64(off)|1)
	}
	dst, err := region.New(ps, pages)
	if err != nil {
		t.Fatal(err)
	}
	defer dst.Close()
	vm := &gateVM{state: []byte("registers of the migrated process")}
	stop, total := writers(t, mem, ps, hot, vm)
	defer stop()

	a, b := testkit.LinkPair(t, tcp)
	ctx := context.Background()
	hello := transport.Hello{PageSize: uint32(ps), PageCount: pages, Features: transport.FeatDigest}
	ca, cb, err := testkit.OpenPair(ctx, a, b, hello)
	if err != nil {
		t.Fatal(err)
	}
	var drep *precopy.ReceiveReport
	var derr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		drep, derr = precopy.Receive(ctx, cb, precopy.Destination{Sink: dst, VM: dst, Pages: pages, PageSize: ps}, precopy.Config{})
	}()
	rep, err := precopy.Migrate(ctx, ca, livemig.Source{Memory: src, Dirty: src, VM: vm},
		precopy.Config{DowntimeTarget: 50 * time.Millisecond, MaxRounds: 10})
	<-done
	if err != nil || derr != nil {
		t.Fatalf("source: %v; destination: %v", err, derr)
	}
	if !vm.paused.Load() {
		t.Fatal("source running after a completed migration")
	}
	if n, first := testkit.DiffPages(mem, dst.Bytes(), ps); n != 0 {
		t.Fatalf("destination differs from the source at pause time in %d pages, first %d", n, first)
	}
	if !bytes.Equal(dst.State(), vm.state) || !rep.Verified || !drep.Verified || !drep.Resumed {
		t.Fatalf("state %q, verified %v/%v, resumed %v", dst.State(), rep.Verified, drep.Verified, drep.Resumed)
	}
	// Only the hot pages come back after the bulk round: the log is exact.
	if total() == 0 || len(rep.Rounds) < 2 || rep.Rounds[1].DirtyPages > hot {
		t.Fatalf("writes %d, rounds %d, %d pages dirty after the bulk round (%d written)",
			total(), len(rep.Rounds), rep.Rounds[min(1, len(rep.Rounds)-1)].DirtyPages, hot)
	}
	t.Logf("%d writes during the migration\n%v", total(), rep)
}
