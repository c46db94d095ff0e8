package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/faultmem"
	"github.com/livemig/livemig/internal/testkit"
	"github.com/livemig/livemig/transport"
)

// migrate runs a destination and a source of mode in this process over
// loopback TCP and returns their errors.
func migrate(t *testing.T, o options) (srcErr, dstErr error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pages, err := geometry(o)
	if err != nil {
		t.Fatal(err)
	}
	pc, err := o.postCopy()
	if err != nil {
		t.Fatal(err)
	}
	l, err := transport.Listen(ctx, "127.0.0.1:0", transport.ListenConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	done := make(chan error, 1)
	dst := o
	go func() { done <- serve(ctx, dst, l, pages, pc) }()
	o.connect = l.Addr().String()
	srcErr = source(ctx, o)
	return srcErr, <-done
}

// Both ends of memmigrate, in one process: pre-copy, and post-copy and
// hybrid into userfaultfd memory whose writers run from the resume.
func TestMemmigrate(t *testing.T) {
	for _, mode := range []string{"precopy", "postcopy", "hybrid"} {
		t.Run(mode, func(t *testing.T) {
			if mode != "precopy" && !uffdUsable(t) {
				return
			}
			o := options{sizeMiB: 16, writers: 2, rate: 5000, downtime: 300 * time.Millisecond, maxRounds: 30,
				policy: "stop", timeout: time.Minute, mode: mode, lz4: mode == "hybrid"}
			if srcErr, dstErr := migrate(t, o); srcErr != nil || dstErr != nil {
				t.Fatalf("source: %v; destination: %v", srcErr, dstErr)
			}
		})
	}
	// The two sides must agree on the mode: a post-copy source and a
	// pre-copy destination refuse each other in the handshake.
	o := options{sizeMiB: 4, writers: 1, rate: 1000, downtime: 300 * time.Millisecond, maxRounds: 30, policy: "stop", mode: "postcopy"}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	l, err := transport.Listen(ctx, "127.0.0.1:0", transport.ListenConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	done := make(chan error, 1)
	pre := o
	pre.mode = "precopy"
	go func() { done <- serve(ctx, pre, l, 1024, false) }()
	o.connect = l.Addr().String()
	if err, derr := source(ctx, o), <-done; err == nil || derr == nil || !strings.Contains(err.Error(), "-mode") ||
		!strings.Contains(derr.Error(), "-mode") {
		t.Fatalf("mismatched modes: source %v, destination %v", err, derr)
	}
}

// uffdUsable says whether userfaultfd works here; where it does not the
// test is skipped, or fails with LIVEMIG_REQUIRE_UFFD=1.
func uffdUsable(t *testing.T) bool {
	r, err := faultmem.New(livemig.DefaultPageSize, 1, faultmem.Config{})
	if err == nil {
		r.Close()
		return true
	}
	testkit.SkipOrFail(t, err, "userfaultfd", "LIVEMIG_REQUIRE_UFFD")
	return false
}

func TestModes(t *testing.T) {
	for mode, want := range map[string]bool{"precopy": false, "postcopy": true, "hybrid": true} {
		if pc, err := (options{mode: mode}).postCopy(); err != nil || pc != want {
			t.Errorf("%s: %v %v", mode, pc, err)
		}
	}
	if _, err := (options{mode: "copy"}).postCopy(); err == nil {
		t.Error("unknown mode accepted")
	}
}
