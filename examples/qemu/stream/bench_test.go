package stream_test

import (
	"bytes"
	"io"
	"testing"

	"github.com/livemig/livemig/delta"
	"github.com/livemig/livemig/examples/qemu/stream"
)

// benchStream returns a stream of n pages of one kind over a 64 MiB block.
func benchStream(b *testing.B, kind stream.Kind, n int) []byte {
	old, upd := pattern(1), pattern(1)
	for i := 0; i < len(upd); i += 512 {
		upd[i]++
	}
	d, err := delta.Encode(nil, old, upd, stream.PageSize)
	if err != nil {
		b.Fatal(err)
	}
	recs := []stream.Record{
		{Kind: stream.KindHeader},
		{Kind: stream.KindConfiguration, Machine: "pc-i440fx-7.2"},
		{Kind: stream.KindSection, Type: stream.SectionStart, ID: 2, Name: "ram", Version: 4},
		{Kind: stream.KindMemSize, Blocks: []stream.Block{{Name: "pc.ram", Size: 64 << 20}}},
		{Kind: stream.KindEOS},
		{Kind: stream.KindFooter, ID: 2},
		{Kind: stream.KindSection, Type: stream.SectionEnd, ID: 2},
	}
	for i := range n {
		r := stream.Record{Kind: kind, Block: "pc.ram", Addr: uint64(i%16384) * stream.PageSize}
		switch kind {
		case stream.KindPage:
			r.Data = upd
		case stream.KindXBZRLE:
			r.Data = d
		}
		recs = append(recs, r)
	}
	recs = append(recs, stream.Record{Kind: stream.KindEOS}, stream.Record{Kind: stream.KindFooter, ID: 2}, stream.Record{Kind: stream.KindEOF})
	return write(b, recs)
}

// BenchmarkReader reads records (no Image) of each kind: 0 allocations per
// record, the stream's bytes per second.
func BenchmarkReader(b *testing.B) {
	for _, k := range []stream.Kind{stream.KindPage, stream.KindXBZRLE, stream.KindZero} {
		in := benchStream(b, k, 16384)
		b.Run(k.String(), func(b *testing.B) {
			b.SetBytes(int64(len(in)))
			b.ReportAllocs()
			for b.Loop() {
				r := stream.NewReader(bytes.NewReader(in), stream.Config{})
				for {
					_, err := r.Next()
					if err == io.EOF {
						break
					}
					if err != nil {
						b.Fatal(err)
					}
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/16384, "ns/record")
		})
	}
}

// BenchmarkWriter writes the records of a page stream.
func BenchmarkWriter(b *testing.B) {
	in := benchStream(b, stream.KindPage, 16384)
	recs, err := readAll(in, stream.Config{})
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(in)))
	b.ReportAllocs()
	for b.Loop() {
		w := stream.NewWriter(io.Discard)
		for i := range recs {
			if err := w.Write(&recs[i]); err != nil {
				b.Fatal(err)
			}
		}
		w.Flush()
	}
}
