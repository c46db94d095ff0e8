package codec

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/transport"
	"github.com/pierrec/lz4/v4"
)

// entropyPage fills p with 64-byte lines that are random with probability
// e and otherwise repeat one of four words (as package sim's guests do):
// LZ4 shrinks it less the higher e is.
func entropyPage(rng *rand.Rand, p []byte, e float64) {
	var w [4]byte
	for i := range w {
		w[i] = byte(rng.Uint32())
	}
	for l := 0; l < len(p); l += 64 {
		line := p[l:min(l+64, len(p))]
		random := rng.Float64() < e
		b := w[rng.IntN(4)]
		for i := range line {
			if random {
				line[i] = byte(rng.Uint32())
			} else {
				line[i] = b ^ byte(i%8)
			}
		}
	}
}

// fullBlock is the LZ4 block of page with no size limit.
func fullBlock(page []byte) int {
	var c lz4.Compressor
	dst := make([]byte, lz4.CompressBlockBound(len(page)))
	return lz4Compress(&c, dst, page)
}

func TestMaxLZ4(t *testing.T) {
	for _, c := range []struct{ ps, want int }{
		{4096, 4032}, {65536, 64512}, {256, 252}, {64, 63}, {1, 0},
	} {
		if got := MaxLZ4(c.ps); got != c.want {
			t.Errorf("MaxLZ4(%d) = %d, want %d", c.ps, got, c.want)
		}
	}
}

// A PageEncoder sends zero pages as such, a page as LZ4 exactly when its
// block is at most MaxLZ4 bytes (compared with an unlimited compression of
// the same page), the rest raw; every record decodes back to the page.
func TestPageEncoder(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 7))
	page := make([]byte, testPS)
	dec := make([]byte, testPS)
	var e PageEncoder
	var sawLZ4, sawRaw, sawNear int
	for i := range 400 {
		e.LZ4 = i%5 != 0
		switch i % 8 {
		case 0:
			clear(page)
		case 1:
			fillPage(rng, page, 2) // text
		default: // around the limit
			entropyPage(rng, page, 0.9+0.1*rng.Float64())
		}
		prefix := []byte("hdr")
		dst := append(make([]byte, 0, 3+testPS), prefix...)
		enc, data := e.Encode(dst, page)
		k := fullBlock(page)
		want := transport.EncRaw
		switch {
		case IsZero(page):
			want = transport.EncZero
		case e.LZ4 && k > 0 && k <= MaxLZ4(testPS):
			want = transport.EncLZ4
		}
		if enc != want {
			t.Fatalf("page %d (LZ4 %v, block %d): encoding %d, want %d", i, e.LZ4, k, enc, want)
		}
		if e.LZ4 && k > 0 && k < testPS && k > MaxLZ4(testPS) {
			sawNear++
		}
		switch enc {
		case transport.EncLZ4:
			sawLZ4++
			if !bytes.Equal(data[:3], prefix) || &data[0] != &dst[:1][0] || len(data)-3 != k {
				t.Fatalf("page %d: the block is not dst with %d bytes appended", i, k)
			}
			data = data[3:]
		case transport.EncRaw:
			sawRaw++
			if &data[0] != &page[0] {
				t.Fatalf("page %d: raw data is not the page itself", i)
			}
		case transport.EncZero:
			if data != nil {
				t.Fatalf("page %d: zero page with data", i)
			}
		}
		got, err := DecodePage(dec, 5, enc, data, nil)
		if err != nil {
			t.Fatalf("page %d: %v", i, err)
		}
		if (got == nil) != (enc == transport.EncZero) || (got != nil && !bytes.Equal(got, page)) {
			t.Fatalf("page %d: decodes to other contents", i)
		}
	}
	if sawLZ4 == 0 || sawRaw == 0 || sawNear == 0 {
		t.Fatalf("pages LZ4 %d, raw %d, with a block between MaxLZ4 and the page %d: want each", sawLZ4, sawRaw, sawNear)
	}
}

// Encode grows a dst too short for a block, and allocates nothing with one
// long enough.
func TestPageEncoderBuffers(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 8))
	page := make([]byte, testPS)
	fillPage(rng, page, 2)
	e := &PageEncoder{LZ4: true}
	enc, data := e.Encode(nil, page)
	if enc != transport.EncLZ4 {
		t.Fatalf("encoding %d", enc)
	}
	got, err := DecodePage(make([]byte, testPS), 0, enc, data, nil)
	if err != nil || !bytes.Equal(got, page) {
		t.Fatalf("a block appended to nil: %v", err)
	}
	buf := make([]byte, 0, testPS)
	random := make([]byte, testPS)
	fillPage(rng, random, 1)
	if n := testing.AllocsPerRun(100, func() {
		e.Encode(buf, page)
		e.Encode(buf, random)
	}); n != 0 {
		t.Errorf("%v allocations per Encode", n)
	}
}

// DecodePage without a PageReader refuses XBZRLE, wraps the reader's
// errors, and returns raw data without copying it.
func TestDecodePage(t *testing.T) {
	dst := make([]byte, testPS)
	_, err := DecodePage(dst, 4, transport.EncXBZRLE, []byte{1, 1, 7}, nil)
	var pe *livemig.PageError
	if !errors.Is(err, livemig.ErrNotSupported) || !errors.As(err, &pe) || pe.Page != 4 {
		t.Fatalf("XBZRLE without a reader: %v", err)
	}
	s := newSink(testPS, 2)
	_, err = DecodePage(dst, 4, transport.EncXBZRLE, []byte{1, 1, 7}, s)
	if !errors.Is(err, livemig.ErrPageRange) || !errors.As(err, &pe) || pe.Op != "read" || pe.Page != 4 {
		t.Fatalf("XBZRLE with a failing reader: %v", err)
	}
	s.page(1)[0] = 9
	got, err := DecodePage(dst, 1, transport.EncXBZRLE, []byte{1, 1, 7}, s)
	if err != nil || &got[0] != &dst[0] || got[0] != 9 || got[1] != 7 {
		t.Fatalf("XBZRLE: %v", err)
	}
	raw := make([]byte, testPS)
	got, err = DecodePage(dst, 1, transport.EncRaw, raw, nil)
	if err != nil || &got[0] != &raw[0] {
		t.Fatalf("raw: %v", err)
	}
}

// BenchmarkLZ4Limit is the measurement behind MaxLZ4: for pages that LZ4
// shrinks by little (64-byte lines random with probability e, the others a
// repeated word), how long decompressing the block takes against copying
// the raw page, which the destination does anyway. ratio is block bytes
// over page bytes.
func BenchmarkLZ4Limit(b *testing.B) {
	const n = 256
	rng := rand.New(rand.NewPCG(1, 2))
	for _, e := range []float64{0.9, 0.95, 0.98, 0.99} {
		pages := make([][]byte, n)
		blocks := make([][]byte, n)
		total := 0
		for i := range pages {
			pages[i] = make([]byte, testPS)
			entropyPage(rng, pages[i], e)
			buf := make([]byte, lz4.CompressBlockBound(testPS))
			blocks[i] = buf[:lz4Compress(new(lz4.Compressor), buf, pages[i])]
			total += len(blocks[i])
		}
		ratio := float64(total) / (n * testPS)
		name := fmt.Sprintf("e%.2f", e)
		b.Run(name+"/decompress", func(b *testing.B) {
			page := make([]byte, testPS)
			b.SetBytes(testPS)
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				if k, err := lz4Decompress(page, blocks[i]); err != nil || k != testPS {
					b.Fatal(k, err)
				}
				i = (i + 1) % n
			}
			b.ReportMetric(ratio, "ratio")
		})
		b.Run(name+"/memcpy", func(b *testing.B) {
			page := make([]byte, testPS)
			b.SetBytes(testPS)
			b.ReportAllocs()
			i := 0
			for b.Loop() {
				copy(page, pages[i])
				i = (i + 1) % n
			}
		})
	}
}
