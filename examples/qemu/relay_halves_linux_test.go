//go:build linux

package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/examples/qemu/stream"

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

// relayFile runs the relay's halves in this process over an in-memory
// transport.Pipe on the stream in b, given as the source QEMU's output,
// and returns the stream the destination half wrote and both results.
func relayFile(t *testing.T, b []byte, cfg sourceConfig) ([]byte, sourceResult, destResult) {
	t.Helper()
	ctx := context.Background()
	la, lb := transport.Pipe(0)
	ca, cb, err := testkit.OpenPair(ctx, la, lb, relayHello)
	if err != nil {
		t.Fatal(err)
	}
	srcQEMU, srcRelay := tcpPair(t)
	dstRelay, dstQEMU := tcpPair(t)
	go func() { // the source QEMU: its stream, then it closes
		_, _ = srcQEMU.Write(b)
		srcQEMU.Close()
	}()
	out := make(chan []byte, 1)
	go func() { // the destination QEMU: reads it all (to the relay's CloseWrite), then closes
		got, _ := io.ReadAll(dstQEMU)
		dstQEMU.Close()
		out <- got
	}()
	dd := make(chan destResult, 1)
	go func() {
		st, err := runDest(ctx, cb, dstRelay)
		dd <- destResult{st, err}
	}()
	st, err := runSource(ctx, srcRelay, ca, cfg)
	d := <-dd
	return <-out, sourceResult{st, err}, d
}

// tcpPair returns the two ends of a TCP loopback connection (the halves
// shut a QEMU's write side, which a net.Pipe cannot).
func tcpPair(t *testing.T) (a, b net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	a, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	if b, err = ln.Accept(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// imageOf applies every record of the stream in b to an image.
func imageOf(t *testing.T, b []byte) *stream.Image {
	t.Helper()
	img, _ := stream.NewImage(nil, stream.ImageConfig{})
	r := stream.NewReader(bytes.NewReader(b), stream.Config{})
	for {
		rec, err := r.Next()
		if err == io.EOF {
			return img
		}
		if err != nil {
			t.Fatal(err)
		}
		if err := img.Apply(&rec); err != nil {
			t.Fatal(err)
		}
	}
}

// TestRelayHalvesRebuildStream relays QEMU's saved 5-pass streams, with
// and without QEMU's XBZRLE, through the two halves over an in-memory link,
// with no codec but zero pages and with all of them: the destination
// half's stream parses, leaves every page of every RAM block as QEMU's own
// stream does (XBZRLE between the halves decodes against exactly what the
// source half's cache held), and carries the device state byte for byte.
// A stream cut short fails both halves with the stream offset.
func TestRelayHalvesRebuildStream(t *testing.T) {
	for _, name := range []string{streamLive, streamXBZRLE} {
		b, err := os.ReadFile(saved(t, name).file)
		if err != nil {
			t.Fatal(err)
		}
		want := imageOf(t, b)
		// No codec but zero pages; and both, on a 1 MiB cache that evicts.
		for _, cfg := range []sourceConfig{{}, {XBZRLE: true, LZ4: true, Cache: 1 << 20}} {
			t.Run(fmt.Sprintf("%s/xbzrle=%v,lz4=%v", name, cfg.XBZRLE, cfg.LZ4), func(t *testing.T) {
				got, s, d := relayFile(t, b, cfg)
				if s.err != nil || d.err != nil {
					t.Fatalf("source half: %v; destination half: %v", s.err, d.err)
				}
				t.Log(s.st)
				if s.st.QEMUBytes != int64(len(b)) || d.st.QEMUBytes != int64(len(got)) {
					t.Errorf("source half read %d of %d bytes; destination half wrote %d of %d", s.st.QEMUBytes, len(b), d.st.QEMUBytes, len(got))
				}
				img := imageOf(t, got)
				l := want.Layout()
				if !l.Equal(img.Layout()) {
					t.Fatal("the rebuilt stream's block list differs")
				}
				p, q := make([]byte, stream.PageSize), make([]byte, stream.PageSize)
				for n := range l.Pages() {
					_ = want.ReadPage(n, p)
					_ = img.ReadPage(n, q)
					if !bytes.Equal(p, q) {
						t.Fatalf("page %d differs", n)
					}
				}
				if ws, gs := devices(t, b), devices(t, got); ws != gs {
					t.Errorf("device state differs: %d bytes in QEMU's stream, %d in the rebuilt one", len(ws), len(gs))
				}
			})
		}
	}
	t.Run("cut", func(t *testing.T) {
		b, err := os.ReadFile(saved(t, streamStopped).file)
		if err != nil {
			t.Fatal(err)
		}
		_, s, d := relayFile(t, b[:len(b)/2], sourceConfig{XBZRLE: true})
		var se *livemig.StreamError
		if !errors.As(s.err, &se) || !errors.Is(s.err, io.ErrUnexpectedEOF) || se.Offset > int64(len(b)/2) {
			t.Errorf("source half: %v, want a cut stream at an offset", s.err)
		}
		if d.err == nil {
			t.Error("the destination half ended cleanly on a cut stream")
		}
		t.Logf("source half: %v", s.err)
		t.Logf("destination half: %v", d.err)
	})
}

// devices returns the stream's device sections, JSON description and
// commands, concatenated: what the relay carries as it is.
func devices(t *testing.T, b []byte) string {
	t.Helper()
	var out []byte
	r := stream.NewReader(bytes.NewReader(b), stream.Config{})
	for {
		rec, err := r.Next()
		if err == io.EOF {
			return string(out)
		}
		if err != nil {
			t.Fatal(err)
		}
		if rec.Kind == stream.KindDevice || rec.Kind == stream.KindVMDesc || rec.Kind == stream.KindCommand {
			out = append(out, rec.Name...)
			out = append(out, rec.Data...)
		}
	}
}
