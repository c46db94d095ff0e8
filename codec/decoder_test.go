package codec

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"testing"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/delta"
	"github.com/livemig/livemig/transport"
	"github.com/pierrec/lz4/v4"
)

func lz4Block(t testing.TB, page []byte) []byte {
	t.Helper()
	var c lz4.Compressor
	dst := make([]byte, lz4.CompressBlockBound(len(page)))
	n := lz4Compress(&c, dst, page)
	if n == 0 {
		t.Fatal("page does not compress")
	}
	return dst[:n]
}

func TestDecoderApply(t *testing.T) {
	rng := rand.New(rand.NewPCG(4, 4))
	text := make([]byte, testPS)
	fillPage(rng, text, 2)
	old := make([]byte, testPS)
	fillPage(rng, old, 1)
	new := append([]byte(nil), old...)
	new[10]++
	d, err := delta.Encode(nil, old, new, 0)
	if err != nil {
		t.Fatal(err)
	}
	long := make([]byte, 2*testPS) // compresses to an LZ4 block of two pages
	fillPage(rng, long[:testPS], 2)
	copy(long[testPS:], long[:testPS])
	short := text[:testPS-1]

	for _, tc := range []struct {
		name    string
		enc     transport.Encoding
		data    []byte
		noRead  bool
		want    []byte // the page afterwards; nil: zero
		wantErr error
	}{
		{"raw", transport.EncRaw, text, false, text, nil},
		{"raw short", transport.EncRaw, text[:100], false, nil, livemig.ErrCorrupt},
		{"zero", transport.EncZero, nil, false, nil, nil},
		{"zero with data", transport.EncZero, []byte{0}, false, nil, livemig.ErrCorrupt},
		{"xbzrle", transport.EncXBZRLE, d, false, new, nil},
		{"xbzrle empty", transport.EncXBZRLE, nil, false, old, nil},
		{"xbzrle bad", transport.EncXBZRLE, []byte{0}, false, nil, livemig.ErrCorrupt},
		{"xbzrle too long", transport.EncXBZRLE, make([]byte, testPS+1), false, nil, livemig.ErrCorrupt},
		{"xbzrle no reader", transport.EncXBZRLE, d, true, nil, livemig.ErrNotSupported},
		{"lz4", transport.EncLZ4, lz4Block(t, text), false, text, nil},
		{"lz4 short page", transport.EncLZ4, lz4Block(t, short), false, nil, livemig.ErrCorrupt},
		{"lz4 long page", transport.EncLZ4, lz4Block(t, long), false, nil, livemig.ErrCorrupt},
		{"lz4 garbage", transport.EncLZ4, []byte{0xff, 1, 2}, false, nil, livemig.ErrCorrupt},
		{"lz4 huge", transport.EncLZ4, make([]byte, 2*testPS), false, nil, livemig.ErrCorrupt},
		{"unknown", 9, text, false, nil, livemig.ErrNotSupported},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newSink(testPS, 4)
			copy(s.page(3), old)
			var ps livemig.PageSink = s
			if tc.noRead {
				ps = writeOnly{s}
			}
			got, err := NewDecoder(Config{}).Apply(ps, 3, tc.enc, tc.data)
			if tc.wantErr != nil {
				var pe *livemig.PageError
				if !errors.Is(err, tc.wantErr) || !errors.As(err, &pe) || pe.Page != 3 {
					t.Fatalf("error %v, want a PageError for page 3 wrapping %v", err, tc.wantErr)
				}
				if s.writes != 0 || !bytes.Equal(s.page(3), old) {
					t.Fatal("the page was written despite the error")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tc.want == nil {
				if got != nil || !IsZero(s.page(3)) {
					t.Fatal("zero page: not zeroed, or contents returned")
				}
				return
			}
			if !bytes.Equal(got, tc.want) || !bytes.Equal(s.page(3), tc.want) {
				t.Fatal("wrong contents")
			}
		})
	}
}

func TestDecoderSinkErrors(t *testing.T) {
	s := newSink(testPS, 2)
	dec := NewDecoder(Config{})
	for _, enc := range []transport.Encoding{transport.EncRaw, transport.EncZero, transport.EncXBZRLE} {
		var data []byte
		if enc == transport.EncRaw {
			data = make([]byte, testPS)
		}
		_, err := dec.Apply(s, 5, enc, data)
		var pe *livemig.PageError
		if !errors.Is(err, livemig.ErrPageRange) || !errors.As(err, &pe) || pe.Page != 5 {
			t.Errorf("encoding %d to page 5 of 2: %v", enc, err)
		}
	}
}

func TestDecoderAllocs(t *testing.T) {
	rng := rand.New(rand.NewPCG(4, 5))
	page := make([]byte, testPS)
	fillPage(rng, page, 2)
	block := lz4Block(t, page)
	s := newSink(testPS, 1)
	dec := NewDecoder(Config{})
	d := []byte{1, 1, 7}
	if n := testing.AllocsPerRun(100, func() {
		if _, err := dec.Apply(s, 0, transport.EncLZ4, block); err != nil {
			t.Fatal(err)
		}
		if _, err := dec.Apply(s, 0, transport.EncXBZRLE, d); err != nil {
			t.Fatal(err)
		}
	}); n != 0 {
		t.Errorf("%v allocations per Apply", n)
	}
}
