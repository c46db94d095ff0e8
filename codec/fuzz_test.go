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
