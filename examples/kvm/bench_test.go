package main

import (
	"encoding/binary"
	"io"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/livemig/livemig/internal/kvm"
)

// BenchmarkPostCopyFault migrates the guest by post-copy (an 8 MiB guest
// writing flat out, the push capped at 8 MiB/s so that the guest's vCPU
// faults on pages not yet pushed) and reports the engine's demand-fault
// latency at the destination (fault to page placed, which wakes the vCPU:
// inside KVM_RUN on KVM), the downtime and the bytes sent, next to the p50
// and p99 of a raw 4 KiB request/response round trip over loopback TCP
// measured in the same run. The sub-benchmark is named by what ran the
// guest: kvm, or standin (the Go stand-in vCPU, where /dev/kvm is absent:
// a goroutine's fault, not a vCPU's).
func BenchmarkPostCopyFault(b *testing.B) {
	if !uffdUsable(b) {
		return
	}
	hw := "kvm"
	if _, err := kvm.Open(); err != nil {
		hw = "standin"
		useStandIn(b)
	}
	b.Run(hw, func(b *testing.B) {
		var p50, p99, down, mb []float64
		var faults uint64
		for range b.N {
			o := testOptions("postcopy", "bitmap")
			o.memMiB, o.rate, o.pushBandwidth, o.jsonOut = 8, 0, 8<<20, true
			out := migrate(b, o)
			wantMigrated(b, out)
			r := out.res
			p50, p99 = append(p50, 1000*r.FaultP50MS), append(p99, 1000*r.FaultP99MS)
			down, mb = append(down, r.DowntimeMS), append(mb, float64(r.BytesSent)/1e6)
			faults += r.DemandFaults
		}
		b.StopTimer()
		rtt50, rtt99 := loopbackRTT(b, 2000)
		b.ReportMetric(median(p50), "fault-p50-µs")
		b.ReportMetric(median(p99), "fault-p99-µs")
		b.ReportMetric(float64(faults)/float64(b.N), "faults/op")
		b.ReportMetric(median(down), "downtime-ms")
		b.ReportMetric(median(mb), "MB-sent")
		b.ReportMetric(rtt50, "rtt4k-p50-µs")
		b.ReportMetric(rtt99, "rtt4k-p99-µs")
	})
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

// loopbackRTT measures n round trips of an 8-byte request answered by a
// 4 KiB page over loopback TCP, as a page request is, and returns their
// p50 and p99 in µs.
func loopbackRTT(b *testing.B, n int) (p50, p99 float64) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	served := make(chan error, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			served <- err
			return
		}
		defer c.Close()
		req, page := make([]byte, 8), make([]byte, 4096)
		for {
			if _, err := io.ReadFull(c, req); err != nil {
				served <- nil
				return
			}
			copy(page, req)
			if _, err := c.Write(page); err != nil {
				served <- err
				return
			}
		}
	}()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	req, page := make([]byte, 8), make([]byte, 4096)
	times := make([]float64, 0, n)
	for i := range n {
		binary.LittleEndian.PutUint64(req, uint64(i))
		start := time.Now()
		if _, err := c.Write(req); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, page); err != nil {
			b.Fatal(err)
		}
		times = append(times, float64(time.Since(start))/float64(time.Microsecond))
	}
	c.Close()
	if err := <-served; err != nil {
		b.Fatal(err)
	}
	slices.Sort(times)
	return times[len(times)/2], times[len(times)*99/100]
}
