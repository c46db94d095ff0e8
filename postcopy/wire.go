package postcopy

import (
	"encoding/binary"
	"fmt"
	"math/bits"
	"time"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/transport"
	"github.com/livemig/livemig/wire"
)

// statsLen is the size of the figures an Ack(AckComplete) carries: eight
// little-endian uint64s.
const statsLen = 64

// destStats are the destination's post-copy figures, sent back to the source
// in Ack(AckComplete)'s Data so that the source's Report has them.
type destStats struct {
	Faults     uint64
	P50, P99   time.Duration
	Max        time.Duration
	WaitTotal  time.Duration
	LastPage   time.Duration // resume to the last page placed
	Placed     uint64        // pages placed after the resume
	Duplicates uint64        // copies dropped because the page was present
}

// appendStats appends s in the wire layout: faults, p50, p99, max,
// wait total, last page (nanoseconds), placed, duplicates.
func appendStats(dst []byte, s destStats) []byte {
	for _, v := range [...]uint64{s.Faults, uint64(s.P50), uint64(s.P99), uint64(s.Max),
		uint64(s.WaitTotal), uint64(s.LastPage), s.Placed, s.Duplicates} {
		dst = binary.LittleEndian.AppendUint64(dst, v)
	}
	return dst
}

// parseStats decodes appendStats' layout. Durations that do not fit a
// time.Duration, or a length other than statsLen, are corrupt.
func parseStats(b []byte) (destStats, error) {
	if len(b) != statsLen {
		return destStats{}, fmt.Errorf("postcopy: destination figures of %d bytes, want %d: %w", len(b), statsLen, livemig.ErrCorrupt)
	}
	var v [8]uint64
	for i := range v {
		v[i] = binary.LittleEndian.Uint64(b[8*i:])
	}
	for i := 1; i <= 5; i++ {
		if v[i] > 1<<63-1 {
			return destStats{}, fmt.Errorf("postcopy: destination figure %d is %d ns: %w", i, v[i], livemig.ErrCorrupt)
		}
	}
	return destStats{v[0], time.Duration(v[1]), time.Duration(v[2]), time.Duration(v[3]),
		time.Duration(v[4]), time.Duration(v[5]), v[6], v[7]}, nil
}

// applyBitmap checks a bitmap message for a guest of pages pages and calls
// f for every page it names, in ascending order, stopping at f's first
// error.
func applyBitmap(m transport.Msg, pages uint64, f func(n uint64) error) error {
	words, err := wire.CheckBitmap(m, pages)
	if err != nil {
		return err
	}
	for i := range words {
		w := wire.BitmapWord(m, i)
		for w != 0 {
			b := bits.TrailingZeros64(w)
			w &= w - 1
			if err := f(m.Page + 64*uint64(i) + uint64(b)); err != nil {
				return err
			}
		}
	}
	return nil
}

// bitmapChunks calls send for each chunk of at most transport.MaxBitmapWords
// words of bm holding a set bit, with the chunk's first page and its Data
// (built in buf, which it returns for reuse).
func bitmapChunks(bm []uint64, buf []byte, send func(first uint64, data []byte) error) ([]byte, error) {
	for i := 0; i < len(bm); i += transport.MaxBitmapWords {
		chunk := bm[i:min(i+transport.MaxBitmapWords, len(bm))]
		// Trim zero words at both ends; skip an all-zero chunk.
		lo, hi := 0, len(chunk)
		for lo < hi && chunk[lo] == 0 {
			lo++
		}
		for hi > lo && chunk[hi-1] == 0 {
			hi--
		}
		if lo == hi {
			continue
		}
		buf = wire.AppendBitmap(buf[:0], chunk[lo:hi])
		if err := send(uint64(i+lo)*64, buf); err != nil {
			return buf, err
		}
	}
	return buf, nil
}

// discardSize is how many bytes the discard messages take on the wire when
// a hybrid migration names the stale pages set in stale (KVM bitmap
// layout): the chunks the source sends, each a frame of its bitmap words.
func discardSize(stale []uint64) int {
	fr := transport.NewFraming(0, 0)
	_, _ = bitmapChunks(stale, nil, func(_ uint64, data []byte) error {
		fr.Control(len(data), 0)
		return nil
	})
	return int(fr.Written())
}
