package soak

import (
	"bufio"
	"bytes"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// The process's figures, and the wait for them to come back.

const (
	// listenerGoroutines are the goroutines a listener keeps while open
	// once AcceptConn has been called: its accept loop and its dispatcher.
	listenerGoroutines = 2
	// settle bounds how long the goroutines and descriptors of a finished
	// migration may take to go (a closed Conn's reader, a subtest's
	// goroutine on its way out).
	settle = 5 * time.Second
)

// sample is the process's figures after a migration. fds and rssKiB are -1
// where /proc/self is not there (not Linux).
type sample struct {
	goroutines int
	fds        int
	rssKiB     int64
}

// baseline waits until no goroutine but the tests' own runs (those of an
// earlier test may still be on their way out) and returns the process's
// figures and its open descriptors, for settleTo. It is taken once the
// test's listener is open (its socket and the poller counted) and before
// its first AcceptConn, which starts its goroutines.
func baseline(t *testing.T) (sample, map[string]string) {
	t.Helper()
	if err := goleak.Find(); err != nil {
		t.Fatalf("before the test: %v", err)
	}
	return sample{goroutines: runtime.NumGoroutine(), fds: countFDs(), rssKiB: rssKiB()}, listFDs()
}

// settleTo waits, within settle, until the process holds want's goroutines
// and descriptors again after what it names, polling every millisecond;
// otherwise it fails, listing the goroutines and the descriptors that were
// not open at the baseline baseFDs.
func settleTo(t *testing.T, want sample, baseFDs map[string]string, after string) {
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
			t.Fatalf("%v after %s: %d goroutines and %d open descriptors, want %d and %d as before the first (plus the listener's %d goroutines)\n"+
				"descriptors not open before the first: %v\ngoroutines:\n%s",
				settle, after, g, fds, want.goroutines, want.fds, listenerGoroutines, newFDs(baseFDs), stacks.String())
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
