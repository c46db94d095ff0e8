//go:build linux

package main

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/examples/qemu/internal/qemutest"
)

// TestQEMURelayRefusesChannels migrates from a source QEMU with multifd, and
// with post-copy's preempt channel, through each relay (one process; the
// two halves). Either opens a second connection to the relay (QEMU 7.2
// opens both at setup), which the relay does not carry: it refuses the
// migration with an error wrapping livemig.ErrNotSupported that names the
// capability, the source QEMU's migration fails and its guest runs on, and
// the destination QEMU fails the load and never runs the guest.
func TestQEMURelayRefusesChannels(t *testing.T) {
	needQEMU(t)
	// The destination half gives up on a QEMU that waits for channels
	// and takes no bytes after 3 s, not 30.
	saved := qemuStall
	qemuStall = 3 * time.Second
	t.Cleanup(func() { qemuStall = saved })
	for _, c := range []struct {
		cap  string
		caps []string
	}{
		{"multifd", []string{"multifd"}},
		{"postcopy-preempt", []string{"postcopy-ram", "postcopy-preempt"}},
	} {
		for _, halves := range []bool{false, true} {
			name := c.cap + "/one-process"
			if halves {
				name = c.cap + "/halves"
			}
			t.Run(name, func(t *testing.T) {
				addr, err := qemutest.FreePort()
				if err != nil {
					t.Fatal(err)
				}
				// The destination has the same capabilities, as a user
				// would set them.
				dst, err := qemutest.Start(t, fixDir, qemutest.Options{Incoming: "defer"})
				if err != nil {
					t.Fatal(err)
				}
				if err := dst.SetCapabilities(c.caps...); err != nil {
					t.Fatal(err)
				}
				if _, err := dst.Cmd("migrate-incoming", map[string]any{"uri": "tcp:" + addr}); err != nil {
					t.Fatal(err)
				}
				var raddr string
				var relayErr func() error
				if halves {
					var sd <-chan sourceResult
					var dd <-chan destResult
					raddr, sd, dd = startHalves(t, addr, 0, sourceConfig{XBZRLE: true})
					relayErr = func() error {
						s, d := halvesDone(t, sd, dd)
						if d.err == nil {
							t.Errorf("the destination half succeeded")
						}
						return s.err
					}
				} else {
					var done <-chan relayResult
					raddr, done = startRelay(t, addr, convertXBZRLE)
					relayErr = func() error {
						select {
						case r := <-done:
							return r.err
						case <-time.After(20 * time.Second):
							t.Fatal("the relay is still running 20 s after the migration failed")
						}
						return nil
					}
				}
				src, _, err := qemutest.MigrateOnce(t, fixDir, "tcp:"+raddr, qemutest.SaveOptions{Live: true, Capabilities: c.caps})
				if err == nil {
					t.Fatal("the source QEMU completed the migration")
				}
				t.Logf("source QEMU: %v", err)
				rerr := relayErr()
				if !errors.Is(rerr, livemig.ErrNotSupported) || !strings.Contains(rerr.Error(), "capability "+c.cap) {
					t.Fatalf("relay: %v; want an error wrapping ErrNotSupported naming capability %s", rerr, c.cap)
				}
				t.Logf("relay: %v", rerr)
				if st, err := src.Status(); err != nil || st != "running" {
					t.Errorf("source guest: %q, %v; want running", st, err)
				}
				_, before := src.Log()
				if _, _, err := src.WaitCounter(20*time.Second, len(before)+2); err != nil {
					t.Errorf("the source guest stopped counting: %v", err)
				}
				destNeverRan(t, dst)
			})
		}
	}
}

// destNeverRan checks that the destination QEMU of a failed migration
// never ran the guest: it exits with a failure (QEMU 7.2 exits when a load
// fails) or, when it waits for the multifd or preempt channels that never
// came, stays in "inmigrate" (QEMU does not notice the main channel's end
// then).
func destNeverRan(t *testing.T, dst *qemutest.VM) {
	t.Helper()
	err := dst.Wait(5 * time.Second)
	if ex, _ := dst.Exited(); !ex {
		st, serr := dst.Status()
		if serr != nil || st != "inmigrate" {
			t.Errorf("the destination QEMU, still running: status %q (%v), want inmigrate", st, serr)
		}
		t.Logf("the destination QEMU still waits: status %q", st)
	} else {
		if err == nil {
			t.Error("the destination QEMU exited cleanly")
		}
		t.Logf("the destination QEMU exited: %v: %s", err, strings.TrimSpace(dst.Stderr()))
	}
	if boots, counters := dst.Log(); boots != 0 || len(counters) != 0 {
		t.Errorf("the destination guest ran: %d boots, %d counters", boots, len(counters))
	}
}

// TestQEMURelayReturnPathNoVMDesc migrates through each relay from a source
// QEMU with a return path and no JSON description (return-path capability,
// suppress-vmdesc=on): the source sends its last device section, EOF, and
// waits for the destination's answer before it closes, so a relay that
// waited for the byte after EOF to be sure of that section's end would
// hang (it did, until the source gave up). The migration completes and the
// guest runs on.
func TestQEMURelayReturnPathNoVMDesc(t *testing.T) {
	needQEMU(t)
	hw := qemutest.Hardware{MachineOpts: "suppress-vmdesc=on"}
	for _, halves := range []bool{false, true} {
		name := "one-process"
		if halves {
			name = "halves"
		}
		t.Run(name, func(t *testing.T) {
			addr, err := qemutest.FreePort()
			if err != nil {
				t.Fatal(err)
			}
			dst, err := qemutest.Start(t, fixDir, qemutest.Options{Hardware: hw, Incoming: "tcp:" + addr})
			if err != nil {
				t.Fatal(err)
			}
			var raddr string
			var wait func()
			if halves {
				var sd <-chan sourceResult
				var dd <-chan destResult
				raddr, sd, dd = startHalves(t, addr, 0, sourceConfig{XBZRLE: true})
				wait = func() {
					if s, d := halvesDone(t, sd, dd); s.err != nil || d.err != nil {
						t.Fatalf("source half: %v; destination half: %v", s.err, d.err)
					}
				}
			} else {
				var done <-chan relayResult
				raddr, done = startRelay(t, addr, convertXBZRLE)
				wait = func() { relayDone(t, done) }
			}
			src, _, err := qemutest.MigrateOnce(t, fixDir, "tcp:"+raddr, qemutest.SaveOptions{Hardware: hw, Live: true, Capabilities: []string{"return-path"}})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := dst.WaitMigration(20*time.Second, qemutest.Completed); err != nil {
				t.Fatalf("destination: %v", err)
			}
			wait()
			_, counters := src.Log()
			guestRunsOn(t, dst, counters)
		})
	}
}

// TestQEMURelayConfigurations migrates live guests of other configurations
// (q35 with 128 MiB; eight RAM blocks with a VGA's and QEMU's XBZRLE on a
// 1 MiB cache; RAM in two NUMA backends) through each relay: the
// migration completes, the guest runs on at the destination, and the
// relay's output is no larger than QEMU's stream.
func TestQEMURelayConfigurations(t *testing.T) {
	needQEMU(t)
	for _, c := range hwCases[:3] {
		for _, halves := range []bool{false, true} {
			name := c.name + "/one-process"
			if halves {
				name = c.name + "/halves"
			}
			t.Run(name, func(t *testing.T) {
				addr, err := qemutest.FreePort()
				if err != nil {
					t.Fatal(err)
				}
				dst, err := qemutest.Start(t, fixDir, qemutest.Options{Hardware: c.save.Hardware, Incoming: "tcp:" + addr})
				if err != nil {
					t.Fatal(err)
				}
				var raddr string
				var wait func() (in, out int64)
				if halves {
					var sd <-chan sourceResult
					var dd <-chan destResult
					raddr, sd, dd = startHalves(t, addr, 0, sourceConfig{XBZRLE: true, LZ4: true})
					wait = func() (int64, int64) {
						s, d := halvesDone(t, sd, dd)
						if s.err != nil || d.err != nil {
							t.Fatalf("source half: %v; destination half: %v", s.err, d.err)
						}
						return s.st.QEMUBytes, int64(s.st.LinkBytes)
					}
				} else {
					var done <-chan relayResult
					raddr, done = startRelay(t, addr, convertXBZRLE)
					wait = func() (int64, int64) {
						st := relayDone(t, done)
						return st.In, st.Out
					}
				}
				src, _, err := qemutest.MigrateOnce(t, fixDir, "tcp:"+raddr, c.save)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := dst.WaitMigration(20*time.Second, qemutest.Completed); err != nil {
					t.Fatalf("destination: %v", err)
				}
				in, out := wait()
				if out > in {
					t.Errorf("the relay passed on %d bytes for QEMU's %d", out, in)
				}
				_, counters := src.Log()
				guestRunsOn(t, dst, counters)
			})
		}
	}
}
