package codec

import (
	"bytes"
	"errors"
	"testing"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/transport"
)

// FuzzApply applies any record to a small sink: Apply must not panic, must
// return a PageError on bad data, and must not write the page then.
func FuzzApply(f *testing.F) {
	const ps = 256
	f.Add(uint8(transport.EncRaw), make([]byte, ps))
	f.Add(uint8(transport.EncZero), []byte{})
	f.Add(uint8(transport.EncXBZRLE), []byte{0x05, 0x02, 0xaa, 0xbb})
	f.Add(uint8(transport.EncLZ4), []byte{0x1f, 0x61, 0x01, 0x00, 0xe7, 0x50, 0x61, 0x61, 0x61, 0x61, 0x61})
	f.Fuzz(func(t *testing.T, enc uint8, data []byte) {
		s := newSink(ps, 2)
		for i := range s.data {
			s.data[i] = byte(i * 7)
		}
		before := append([]byte(nil), s.data...)
		page, err := NewDecoder(Config{PageSize: ps}).Apply(s, 1, transport.Encoding(enc), data)
		if err != nil {
			var pe *livemig.PageError
			if !errors.As(err, &pe) || pe.Page != 1 {
				t.Fatalf("error %v is not a PageError for page 1", err)
			}
			if !errors.Is(err, livemig.ErrCorrupt) && !errors.Is(err, livemig.ErrNotSupported) {
				t.Fatalf("error %v wraps neither ErrCorrupt nor ErrNotSupported", err)
			}
			if s.writes != 0 || !bytes.Equal(s.data, before) {
				t.Fatal("the sink was written despite the error")
			}
			return
		}
		if !bytes.Equal(s.data[:ps], before[:ps]) {
			t.Fatal("another page was written")
		}
		if page == nil {
			if !IsZero(s.page(1)) {
				t.Fatal("zero record but the page is not zero")
			}
		} else if !bytes.Equal(page, s.page(1)) {
			t.Fatal("returned contents differ from the page written")
		}
	})
}

// FuzzDecodePage decodes any record on its own, with and without a
// PageReader: DecodePage must not panic, must return a PageError on bad
// data, and otherwise a page of the page size (or nil for a zero page)
// that equals what Apply writes for the same record.
func FuzzDecodePage(f *testing.F) {
	const ps = 256
	f.Add(uint8(transport.EncRaw), make([]byte, ps))
	f.Add(uint8(transport.EncZero), []byte{})
	f.Add(uint8(transport.EncXBZRLE), []byte{0x05, 0x02, 0xaa, 0xbb})
	f.Add(uint8(transport.EncLZ4), []byte{0x1f, 0x61, 0x01, 0x00, 0xe7, 0x50, 0x61, 0x61, 0x61, 0x61, 0x61})
	f.Fuzz(func(t *testing.T, enc uint8, data []byte) {
		s := newSink(ps, 2)
		for i := range s.data {
			s.data[i] = byte(i * 7)
		}
		for _, r := range []livemig.PageReader{nil, s} {
			page, err := DecodePage(make([]byte, ps), 1, transport.Encoding(enc), data, r)
			if err != nil {
				var pe *livemig.PageError
				if !errors.As(err, &pe) || pe.Page != 1 {
					t.Fatalf("error %v is not a PageError for page 1", err)
				}
				if !errors.Is(err, livemig.ErrCorrupt) && !errors.Is(err, livemig.ErrNotSupported) {
					t.Fatalf("error %v wraps neither ErrCorrupt nor ErrNotSupported", err)
				}
				continue
			}
			if transport.Encoding(enc) == transport.EncZero {
				if page != nil {
					t.Fatal("zero record with contents")
				}
			} else if len(page) != ps {
				t.Fatalf("decoded %d bytes, page size %d", len(page), ps)
			}
			if r == nil {
				continue
			}
			want, err := NewDecoder(Config{PageSize: ps}).Apply(s, 1, transport.Encoding(enc), data)
			if err != nil || !bytes.Equal(page, want) {
				t.Fatalf("Apply differs: %v", err)
			}
		}
	})
}

// FuzzPageEncoder encodes any page, with and without LZ4: the record must
// decode back to the page, and an LZ4 block must be at most MaxLZ4 bytes.
func FuzzPageEncoder(f *testing.F) {
	f.Add([]byte("migration page migration page migration page migration page"), true)
	f.Add(make([]byte, 64), true)
	f.Add([]byte{1}, false)
	f.Fuzz(func(t *testing.T, page []byte, lz bool) {
		if len(page) == 0 {
			return
		}
		e := &PageEncoder{LZ4: lz}
		enc, data := e.Encode(nil, page)
		if enc == transport.EncLZ4 && (!lz || len(data) > MaxLZ4(len(page))) {
			t.Fatalf("LZ4 block of %d bytes for a page of %d (LZ4 %v)", len(data), len(page), lz)
		}
		got, err := DecodePage(make([]byte, len(page)), 0, enc, data, nil)
		if err != nil {
			t.Fatal(err)
		}
		if got == nil {
			got = make([]byte, len(page))
		}
		if !bytes.Equal(got, page) {
			t.Fatal("the record does not decode to the page")
		}
	})
}

// FuzzIsZero: IsZero, the OR loop, the workers' isZeroCopied and the
// AVX-512 check (where the CPU has it) agree, on the fuzzer's bytes and on
// a zero page of its size with at most one byte set.
func FuzzIsZero(f *testing.F) {
	f.Add([]byte{0, 0, 1}, uint16(4096), uint16(4095), byte(1))
	f.Add([]byte{}, uint16(300), uint16(299), byte(0))
	f.Fuzz(func(t *testing.T, data []byte, size, pos uint16, val byte) {
		page := make([]byte, int(size)%(5*4096))
		if int(pos) < len(page) {
			page[pos] = val
		}
		for _, p := range [][]byte{data, page} {
			want := isZeroWords(p)
			if IsZero(p) != want || isZeroCopied(p) != want || (hasAVX512 && isZeroVec(p) != want) {
				t.Fatalf("%d bytes: IsZero %v, isZeroCopied %v, OR loop %v", len(p), IsZero(p), isZeroCopied(p), want)
			}
		}
	})
}
