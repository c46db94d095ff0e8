package codec_test

import (
	"bytes"
	"context"
	"fmt"

	"github.com/livemig/livemig/codec"
	"github.com/livemig/livemig/transport"
)

// pages is a tiny guest memory and destination sink in one.
type pages struct{ data [][]byte }

func (p *pages) PageSize() int     { return 4096 }
func (p *pages) PageCount() uint64 { return uint64(len(p.data)) }
func (p *pages) ReadPage(n uint64, dst []byte) error {
	copy(dst, p.data[n])
	return nil
}
func (p *pages) WritePage(n uint64, data []byte) error {
	copy(p.data[n], data)
	return nil
}
func (p *pages) ZeroPage(n uint64) error {
	clear(p.data[n])
	return nil
}

func newPages(n int) *pages {
	p := &pages{}
	for range n {
		p.data = append(p.data, make([]byte, 4096))
	}
	return p
}

// Example sends three pages over three rounds. Pages 0 and 2 are zero
// pages. Page 1 compresses: it goes as LZ4 in round 1 (no cache yet) and
// round 2 (a cache miss, which caches it), and once changed in round 3 as
// an XBZRLE delta, which the destination applies to its copy.
func Example() {
	ctx := context.Background()
	src, dst := newPages(3), newPages(3)
	copy(src.data[1], bytes.Repeat([]byte("guest memory "), 300))
	dec := codec.NewDecoder(codec.Config{})
	send := func(m transport.Msg) error { // stands in for transport.Conn.Send
		fmt.Printf("page %d: encoding %d, %d bytes\n", m.Page, m.Enc, len(m.Data))
		_, err := dec.Apply(dst, m.Page, m.Enc, m.Data)
		return err
	}
	pl, err := codec.NewPipeline(codec.Config{XBZRLE: true, LZ4: true, Workers: 1}, src, nil, send)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer pl.Close()
	for round := 1; round <= 3; round++ {
		pl.StartRound(round, false)
		if round == 3 {
			copy(src.data[1][100:], "GUEST")
		}
		for n := range src.PageCount() {
			if err := pl.Submit(ctx, n); err != nil {
				fmt.Println(err)
				return
			}
		}
		if err := pl.Barrier(ctx); err != nil {
			fmt.Println(err)
			return
		}
	}
	fmt.Println(bytes.Equal(src.data[1], dst.data[1]))
	s := pl.Stats()
	fmt.Printf("%d LZ4 pages, %d delta pages, %d cache hits\n", s.LZ4Pages, s.DeltaPages, s.CacheHits)
	// Output:
	// page 0: encoding 1, 0 bytes
	// page 1: encoding 3, 52 bytes
	// page 2: encoding 1, 0 bytes
	// page 0: encoding 1, 0 bytes
	// page 1: encoding 3, 52 bytes
	// page 2: encoding 1, 0 bytes
	// page 0: encoding 1, 0 bytes
	// page 1: encoding 2, 7 bytes
	// page 2: encoding 1, 0 bytes
	// true
	// 2 LZ4 pages, 1 delta pages, 1 cache hits
}

// ExamplePageEncoder encodes pages one at a time, as an engine that sends
// every page once does (post-copy), and decodes each record on its own at
// the destination, where the engine places the page itself.
func ExamplePageEncoder() {
	text := bytes.Repeat([]byte("guest memory "), 316)[:4096]
	random := make([]byte, 4096)
	for i := range random {
		random[i] = byte(i * i * 2654435761 >> 13)
	}
	enc := &codec.PageEncoder{LZ4: true} // one per sending goroutine
	out := make([]byte, 0, 4096)         // the encoder's output buffer
	page := make([]byte, 4096)           // the decoder's
	for _, p := range [][]byte{make([]byte, 4096), text, random} {
		e, data := enc.Encode(out[:0], p)
		got, err := codec.DecodePage(page, 7, e, data, nil)
		if got == nil {
			got = make([]byte, 4096) // a zero page
		}
		fmt.Printf("encoding %d, %d bytes, decoded %v\n", e, len(data), err == nil && bytes.Equal(got, p))
	}
	fmt.Println(codec.MaxLZ4(4096))
	// Output:
	// encoding 1, 0 bytes, decoded true
	// encoding 3, 47 bytes, decoded true
	// encoding 0, 4096 bytes, decoded true
	// 4032
}

// A simulated engine charges each page it sends what the cost model says:
// here a page with data sent as an LZ4 block, on the default model.
func ExampleCostModel() {
	m := codec.DefaultCost()
	lz4 := codec.Outcome{LZ4: codec.LZ4Sent}
	enc, dec := m.Encode(lz4, 4096), m.Decode(lz4, 4096)
	fmt.Println("source:", enc, "destination:", dec)
	// The link one core keeps up with: a raw page and its record header
	// in the time it takes to compress one.
	fmt.Printf("one core keeps up with a %.1f Gbit/s link\n", float64((4096+13)*8)/enc.Seconds()/1e9)
	// On four cores at each end, a stage takes a quarter of the time.
	m.Workers, m.DecodeWorkers = 4, 4
	e, d := m.Stage(lz4, 4096)
	fmt.Println("stages:", e, d)
	// Output:
	// source: 4.682µs destination: 1.279µs
	// one core keeps up with a 7.0 Gbit/s link
	// stages: 1.171µs 320ns
}
