//go:build linux

package main

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/livemig/livemig/examples/qemu/internal/qemutest"
	"github.com/livemig/livemig/internal/testkit"
	"github.com/livemig/livemig/transport"
)

// startHalves starts the relay's two halves in this process, over TCP
// loopback between them: the source half listens for the source QEMU on the
// address it returns, the destination half dials the destination QEMU at to.
func startHalves(t testing.TB, to string, rate float64, cfg sourceConfig) (string, <-chan sourceResult, <-chan destResult) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	tl, err := transport.Listen(ctx, "127.0.0.1:0", transport.ListenConfig{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tl.Close() })
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	dd := make(chan destResult, 1)
	go func() {
		st, err := relayDest(ctx, tl, to)
		dd <- destResult{st, err}
	}()
	sd := make(chan sourceResult, 1)
	go func() {
		st, err := relaySource(ctx, ln, tl.Addr().String(), rate, cfg)
		sd <- sourceResult{st, err}
	}()
	return ln.Addr().String(), sd, dd
}

type sourceResult struct {
	st  sourceStats
	err error
}

type destResult struct {
	st  destStats
	err error
}

// halvesDone waits for both halves to end, up to 20 s.
func halvesDone(t testing.TB, sd <-chan sourceResult, dd <-chan destResult) (sourceResult, destResult) {
	t.Helper()
	timeout := time.After(20 * time.Second)
	var s sourceResult
	var d destResult
	for got := 0; got < 2; got++ {
		select {
		case s = <-sd:
			t.Log(s.st)
		case d = <-dd:
			t.Log(d.st)
		case <-timeout:
			t.Fatal("the relay's halves are still running 20 s after the migration ended")
		}
	}
	return s, d
}

// relayRate is the link's rate between the halves in the tests: 8 MiB/s,
// a third of the 24 MiB/s QEMU sends at while it is held for several
// passes, so that the relay only keeps up by sending fewer bytes.
const relayRate = 8 << 20

// migrateThroughHalves migrates a running guest, held for 4 passes, from a
// source QEMU (with QEMU's xbzrle capability if qx) through the relay's
// halves (cfg, over a relayRate link) to a destination QEMU, and returns
// both VMs, the source's last query-migrate and the source half's result.
// Both halves must succeed.
func migrateThroughHalves(t testing.TB, qx bool, cfg sourceConfig) (src, dst *qemutest.VM, mig qemutest.Migration, s sourceResult) {
	t.Helper()
	addr, err := qemutest.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	dst, err = qemutest.Start(t, fixDir, qemutest.Options{Incoming: "tcp:" + addr})
	if err != nil {
		t.Fatal(err)
	}
	raddr, sd, dd := startHalves(t, addr, relayRate, cfg)
	src, mig, err = qemutest.MigrateOnce(t, fixDir, "tcp:"+raddr, qemutest.SaveOptions{Live: true, Passes: 4, XBZRLE: qx})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dst.WaitMigration(20*time.Second, qemutest.Completed); err != nil {
		t.Fatalf("destination: %v", err)
	}
	s, d := halvesDone(t, sd, dd)
	if s.err != nil || d.err != nil {
		t.Fatalf("source half: %v; destination half: %v", s.err, d.err)
	}
	return src, dst, mig, s
}

// TestQEMURelayHalves migrates a running guest between two QEMUs through
// the relay's two halves, over livemig's transport on a rate-limited link
// (XBZRLE against the relay's cache and LZ4), with and without QEMU's own
// xbzrle capability: the migration completes, the guest runs on at the
// destination, and the link between the halves carried fewer bytes than
// QEMU's own stream of the same migration. A post-copy migration through
// the halves completes too, its return path (pings, page requests, the
// final status) carried back over the same livemig connection.
func TestQEMURelayHalves(t *testing.T) {
	needQEMU(t)
	for _, qx := range []bool{false, true} {
		name := "qemu-plain"
		if qx {
			name = "qemu-xbzrle"
		}
		t.Run(name, func(t *testing.T) {
			src, dst, mig, s := migrateThroughHalves(t, qx, sourceConfig{XBZRLE: true, LZ4: true})
			if s.st.LinkBytes >= uint64(s.st.QEMUBytes) {
				t.Errorf("the link carried %d bytes for QEMU's %d", s.st.LinkBytes, s.st.QEMUBytes)
			}
			t.Logf("QEMU sent %d bytes in %d dirty syncs (xbzrle %v); the link between the halves carried %d (%.1f%%)",
				s.st.QEMUBytes, mig.RAM.DirtySyncCount, qx, s.st.LinkBytes, 100*float64(s.st.LinkBytes)/float64(s.st.QEMUBytes))
			_, counters := src.Log()
			guestRunsOn(t, dst, counters)
		})
	}
	t.Run("postcopy", func(t *testing.T) {
		var sd <-chan sourceResult
		var dd <-chan destResult
		res, err := qemutest.PostcopyVia(t, fixDir, func(to string) (string, error) {
			var addr string
			addr, sd, dd = startHalves(t, to, relayRate, sourceConfig{XBZRLE: true, LZ4: true})
			return addr, nil
		})
		if err != nil {
			t.Fatal(err)
		}
		s, d := halvesDone(t, sd, dd)
		if s.err != nil || d.err != nil {
			t.Fatalf("source half: %v; destination half: %v", s.err, d.err)
		}
		if s.st.ReturnBytes == 0 || d.st.ReturnBytes != s.st.ReturnBytes {
			t.Errorf("return path: %d bytes from the destination QEMU, %d to the source QEMU", d.st.ReturnBytes, s.st.ReturnBytes)
		}
		_, counters := res.Src.Log()
		guestRunsOn(t, res.Dst, counters)
	})
}

// TestQEMURelayHalvesCut cuts the link between the halves in the middle of
// a migration: both halves fail, the source QEMU's migration fails and its
// guest runs on, and the destination QEMU fails the load and never runs
// the guest.
func TestQEMURelayHalvesCut(t *testing.T) {
	needQEMU(t)
	addr, err := qemutest.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	dst, err := qemutest.Start(t, fixDir, qemutest.Options{Incoming: "tcp:" + addr})
	if err != nil {
		t.Fatal(err)
	}
	cut := sourceConfig{XBZRLE: true, LZ4: true, wrap: func(l transport.Link) transport.Link {
		c := testkit.NewCut(l)
		c.Arm(256 << 10)
		return c
	}}
	raddr, sd, dd := startHalves(t, addr, relayRate, cut)
	src, _, err := qemutest.MigrateOnce(t, fixDir, "tcp:"+raddr, qemutest.SaveOptions{Live: true, Passes: 4})
	if err == nil {
		t.Fatal("the source QEMU completed a migration whose link was cut")
	}
	t.Logf("source QEMU: %v", err)
	s, d := halvesDone(t, sd, dd)
	if s.err == nil || d.err == nil {
		t.Errorf("source half: %v; destination half: %v; want both to fail", s.err, d.err)
	}
	t.Logf("source half: %v", s.err)
	t.Logf("destination half: %v", d.err)
	if st, err := src.Status(); err != nil || st != "running" {
		t.Errorf("source guest: %q, %v; want running", st, err)
	}
	_, before := src.Log()
	if _, _, err := src.WaitCounter(20*time.Second, len(before)+2); err != nil {
		t.Errorf("the source guest stopped counting: %v", err)
	}
	if err := dst.Wait(20 * time.Second); err == nil {
		t.Error("the destination QEMU exited cleanly")
	}
	if boots, counters := dst.Log(); boots != 0 || len(counters) != 0 {
		t.Errorf("the destination guest ran: %d boots, %d counters", boots, len(counters))
	}
	t.Logf("destination QEMU: %s", dst.Stderr())
}

// BenchmarkQEMURelayHalves migrates a running guest through the relay's
// halves, one migration per iteration (run it with -benchtime 1x or a few
// x), for each choice of the relay's codecs, with QEMU's xbzrle capability
// off and on. It reports QEMU's own stream bytes and the bytes the livemig
// link between the halves carried for the same migration (qemu-B/op,
// link-B/op, link-%), and the migration's dirty syncs.
func BenchmarkQEMURelayHalves(b *testing.B) {
	needQEMU(b)
	for _, qx := range []bool{false, true} {
		for _, c := range []struct {
			name string
			cfg  sourceConfig
		}{
			{"zero", sourceConfig{}},
			{"xbzrle", sourceConfig{XBZRLE: true}},
			{"lz4", sourceConfig{LZ4: true}},
			{"xbzrle+lz4", sourceConfig{XBZRLE: true, LZ4: true}},
		} {
			name := "qemu-plain/" + c.name
			if qx {
				name = "qemu-xbzrle/" + c.name
			}
			b.Run(name, func(b *testing.B) {
				var qemu, link, syncs float64
				for b.Loop() {
					_, _, mig, s := migrateThroughHalves(b, qx, c.cfg)
					qemu += float64(s.st.QEMUBytes)
					link += float64(s.st.LinkBytes)
					syncs += float64(mig.RAM.DirtySyncCount)
				}
				n := float64(b.N)
				b.ReportMetric(qemu/n, "qemu-B/op")
				b.ReportMetric(link/n, "link-B/op")
				b.ReportMetric(100*link/qemu, "link-%")
				b.ReportMetric(syncs/n, "syncs/op")
			})
		}
	}
}
