package codec

import (
	"time"

	"github.com/livemig/livemig"
)

// streamAhead is how many records each stage of the modelled stream may
// hold between it and the next: 256 records, 1 MiB of raw 4 KiB pages, a
// socket buffer's worth (the post-copy model's push buffer too).
const streamAhead = 256

// stream is the virtual-time model of a pipeline's records on their way:
// three stages in a row — the source's encoders, the link, the
// destination's decoders — each working on one record at a time, with
// streamAhead records of buffer between two stages. A stream of records
// moves at the pace of its slowest stage, and a stage's slowness passes
// back to the earlier ones when the buffer between them fills (TCP's flow
// control passes a slow receiver back to the sender).
//
// The link is the simulated link itself (transport.SimLink): a write
// starts no earlier than the writer's clock and the end of the previous
// transmission, and moves the writer's clock to the end of its own. The
// stream advances the clock, before each send, to when the record may
// start: once the encoders have it and the destination has room for it.
// Times are picoseconds from base, on the source's clock; the destination's
// decoders are modelled on the source's clock too, a record reaching them
// when its transmission ends (the latency, a constant shift, is left out).
//
// Only the goroutine that calls send uses a stream, and the engine's once
// the pipeline is idle (StartRound, Barrier).
type stream struct {
	clock *livemig.VirtualClock
	base  time.Time
	start int64 // the round's start: its pages are known from here
	enc   int64 // when the encoders finish the last record
	dec   int64 // when the decoders finish the last record
	n     uint64
	sent  [streamAhead]int64 // end of transmission of record i, at i % streamAhead
	done  [streamAhead]int64 // end of decoding of record i
	// decPs is the decoding time of the record being sent.
	decPs int64
}

func newStream(clock *livemig.VirtualClock) *stream {
	return &stream{clock: clock, base: clock.Now()}
}

func (s *stream) now() int64 { return int64(s.clock.Now().Sub(s.base)) * 1000 }

func (s *stream) advance(ps int64) { s.clock.AdvanceTo(s.base.Add(time.Duration((ps + 999) / 1000))) }

// startRound marks the start of a round: the encoders may start on its
// pages from now.
func (s *stream) startRound() { s.start = s.now() }

// before charges the record about to be sent, which took encPs in the
// encoders and will take decPs in the decoders: the encoders start on it
// once they are done with the previous one and the buffer after them has
// room (the record streamAhead before it is off the link), and the link
// starts on it once it is encoded and the destination has room for it
// (the record streamAhead before it is decoded).
func (s *stream) before(encPs, decPs int64) {
	i := s.n % streamAhead
	s.enc = max(s.enc, s.start, s.sent[i]) + encPs
	s.advance(max(s.enc, s.done[i]))
	s.decPs = decPs
}

// after records that the record charged by before was sent: its
// transmission ended at the clock's time.
func (s *stream) after() {
	i := s.n % streamAhead
	f := s.now()
	s.sent[i] = f
	s.dec = max(s.dec, f) + s.decPs
	s.done[i] = s.dec
	s.n++
}

// skip charges a page that sends nothing (unchanged since its cached
// copy): encoder time only.
func (s *stream) skip(encPs int64) { s.enc = max(s.enc, s.start) + encPs }

// barrier ends a round at the source: the clock moves to when the encoders
// are done (the link's time is on it already). The destination's decoding
// of the last records overlaps what the source sends next and is not
// charged.
func (s *stream) barrier() { s.advance(s.enc) }
