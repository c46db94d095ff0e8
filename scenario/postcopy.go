package scenario

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math/bits"
	"slices"
	"time"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/bitmap"
	"github.com/livemig/livemig/codec"
	"github.com/livemig/livemig/postcopy"
	"github.com/livemig/livemig/precopy"
	"github.com/livemig/livemig/sim"
	"github.com/livemig/livemig/transport"
)

// Defaults of PostCopy's model parameters.
const (
	// DefaultQueueBytes is PostCopy.QueueBytes' default: the push data a
	// source has written into its connection but not yet onto the wire
	// (the socket's send buffer), ahead of a requested page that goes on
	// the same connection. Linux grows a bulk TCP sender's buffer to a few
	// MiB; 1 MiB is a modest figure.
	DefaultQueueBytes = 1 << 20
	// DefaultQuantum is PostCopy.Quantum's default: the step in which the
	// destination's vCPU runs the workload.
	DefaultQuantum = 10 * time.Microsecond
)

// PostCopy is a post-copy migration in the simulated world, or with
// PreCopyRounds > 0 a hybrid one; its Migrate method is a Migrator.
//
// It is a discrete-event model, not package postcopy's engine: the engine
// runs a push, a return-path reader and (with an urgent connection) a
// request server as goroutines on one end, and over a transport.SimLink
// which of them reads or writes first, and so the virtual times, would
// depend on the Go scheduler. The model makes the engine's decisions with
// the engine's own pieces — the push in the Order's order, the pages a
// request brings (postcopy.Prepager), the discard of stale copies, a page
// sent once unless re-sent urgently — in one goroutine, over a model of
// the link and of the destination's vCPU:
//
//   - The link carries one record at a time at the scenario's bandwidth;
//     each arrives a latency after its last byte left. The source keeps
//     QueueBytes of push written ahead of the wire. A requested page on the
//     main connection joins the end of that queue; with Urgent it goes on
//     the wire next, after the record being sent (QEMU's
//     postcopy-preempt).
//   - Without Urgent the source handles a request when its push next gets
//     room to write (the push was blocked in a send); with Urgent, or when
//     the push is idle, at once.
//   - The destination runs one vCPU: from the resume on, the workload's
//     writes (continuing from the running time the guest had at the pause)
//     are its accesses, made in steps of Quantum. An access to a page that
//     has not arrived is a demand fault: the vCPU stops, a request crosses
//     the return path, and the vCPU runs again when the page lands. Its
//     running time stands still meanwhile; the time lost is
//     PostCopyStats.WaitTotal. Reads are not modelled, so faults are a
//     lower bound for a guest that reads more than it writes; one vCPU
//     makes the wait an upper bound for a guest whose other vCPUs run on.
//
// One difference from the engine: a hybrid engine names most stale copies
// before the pause and waits for the destination to discard them (so that
// the destination's madvise per page stays out of the downtime); the model
// names them all at the switchover, charging their list to the link (about
// 0.3 ms for a 4 GiB guest at 1 Gbit/s) and, like the engine, no time for
// the destination to discard.
//
// Pages carry the simulated guest's real contents, zero pages cost only
// their record (LZ4 blocks their size, with LZ4), and the destination is a sim.Sink that Run checks page by
// page against the paused source. The figures are the engine's: Report
// with Rounds (pre-copy rounds, then the post-copy phase), Downtime from
// the pause to the destination's Ack(Resumed) at the source, and PostCopy.
type PostCopy struct {
	// Prepage, PreCopyRounds and PushBandwidth are as in postcopy.Config.
	Prepage       int
	PreCopyRounds int
	PushBandwidth int64
	// Urgent sends requested pages (and their pre-paged neighbours) ahead
	// of the push, as postcopy.Config.Urgent does.
	Urgent bool
	// LZ4 compresses the pages sent, as postcopy.Config.LZ4 does (with the
	// engine's codec.PageEncoder, so the same pages go compressed). The
	// source's CPU time is not modelled: the link is the bottleneck.
	LZ4 bool
	// Order, if set, makes the push order (and the order of the pre-copy
	// rounds after the first) for a guest of pages pages; once per Run.
	Order func(pages uint64) (precopy.Order, error)
	// QueueBytes is how much push may sit written but unsent ahead of a
	// requested page on the main connection; DefaultQueueBytes if 0.
	QueueBytes int
	// Quantum is the vCPU's step; DefaultQuantum if 0.
	Quantum time.Duration
}

// Migrate runs the model on e; see PostCopy. It closes e's connections,
// which it does not use.
func (p PostCopy) Migrate(ctx context.Context, e Endpoints) Outcome {
	e.Source.Close()
	e.Dest.Close()
	if p.QueueBytes == 0 {
		p.QueueBytes = DefaultQueueBytes
	}
	if p.Quantum == 0 {
		p.Quantum = DefaultQuantum
	}
	if p.QueueBytes < 0 || p.Quantum < 0 || p.PreCopyRounds < 0 || p.PushBandwidth < 0 {
		err := fmt.Errorf("scenario: post-copy model: negative parameter (QueueBytes %d, Quantum %v, PreCopyRounds %d, PushBandwidth %d)",
			p.QueueBytes, p.Quantum, p.PreCopyRounds, p.PushBandwidth)
		return Outcome{Err: err, DestErr: err}
	}
	m := &pcModel{cfg: p, e: e, g: e.Guest, sink: e.Sink, pages: e.Pages, ps: e.PageSize,
		bw: e.Scenario.Bandwidth, lat: max(e.Scenario.Latency, 0)}
	if p.Order != nil {
		o, err := p.Order(e.Pages)
		if err != nil {
			err = fmt.Errorf("scenario: post-copy model: page order: %w", err)
			return Outcome{Err: err, DestErr: err}
		}
		m.order = o
	}
	err := m.run(ctx)
	if err != nil && m.resumed {
		err = fmt.Errorf("scenario: post-copy model: guest handed over, memory not all at the destination: %w (%w)",
			livemig.ErrIncomplete, err)
	}
	return Outcome{Report: m.report, Err: err, DestResumed: m.resumed}
}

type evKind uint8

const (
	evWire    evKind = iota // the wire finished a record
	evArrive                // a record reached the destination
	evRequest               // a request reached the source
	evGuest                 // the vCPU runs
	evPush                  // the rate-capped push may write again
)

type event struct {
	at   time.Time
	seq  uint64
	kind evKind
	rec  record
}

// evHeap is a binary min-heap of events by (at, seq): typed, so that a
// push does not box the event (container/heap would allocate per event).
type evHeap []event

func (h evHeap) less(i, j int) bool {
	if !h[i].at.Equal(h[j].at) {
		return h[i].at.Before(h[j].at)
	}
	return h[i].seq < h[j].seq
}

func (h *evHeap) push(e event) {
	*h = append(*h, e)
	q := *h
	for i := len(q) - 1; i > 0; {
		p := (i - 1) / 2
		if !q.less(i, p) {
			break
		}
		q[i], q[p] = q[p], q[i]
		i = p
	}
}

func (h *evHeap) pop() event {
	q := *h
	top := q[0]
	n := len(q) - 1
	q[0] = q[n]
	q = q[:n]
	for i := 0; ; {
		l, m := 2*i+1, i
		if l < n && q.less(l, m) {
			m = l
		}
		if r := l + 1; r < n && q.less(r, m) {
			m = r
		}
		if m == i {
			break
		}
		q[i], q[m] = q[m], q[i]
		i = m
	}
	*h = q
	return top
}

// recQueue is a FIFO of records and the bytes they hold.
type recQueue struct {
	q     []record
	head  int
	bytes int
}

func (f *recQueue) len() int { return len(f.q) - f.head }

func (f *recQueue) push(r record) {
	f.q = append(f.q, r)
	f.bytes += r.bytes
}

func (f *recQueue) pop() record {
	r := f.q[f.head]
	f.q[f.head] = record{}
	f.bytes -= r.bytes
	if f.head++; f.head == len(f.q) {
		f.q, f.head = f.q[:0], 0
	} else if f.head >= 1024 && 2*f.head >= len(f.q) {
		k := copy(f.q, f.q[f.head:])
		f.q, f.head = f.q[:k], 0
	}
	return r
}

// record is what crosses the source-to-destination wire.
type record struct {
	page  uint64
	bytes int
	done  bool // the Done message, not a page
}

const (
	recOverhead = transport.RecordOverhead
	// reqBytes is a request's record on the return path.
	reqBytes = transport.RecordOverhead
)

type pcModel struct {
	cfg   PostCopy
	e     Endpoints
	g     *sim.Guest
	sink  *sim.Sink
	pages uint64
	ps    int
	bw    float64
	lat   time.Duration
	order precopy.Order

	report  *livemig.Report
	resumed bool

	// Source.
	sent, usent, ever []uint64
	dirty, plan       []uint64
	push              []uint64 // the push order, fixed at the switchover
	pushAt            int
	pushDone          bool
	nextPush          time.Time
	pushTimer         bool
	pending           []uint64 // requests waiting for the blocked push (main connection)
	prepager          *postcopy.Prepager
	buf, out          []byte
	enc               *codec.PageEncoder

	// Wire, source to destination.
	events evHeap
	seq    uint64
	busy   bool
	mainQ  recQueue // written on the main connection, not yet on the wire
	urgQ   recQueue // requested pages on the urgent connection

	// Destination.
	present  []uint64
	held     uint64
	asked    []uint64
	vrun     time.Duration // the vCPU's running time
	acc      []uint64
	touch    sim.WriteFunc // appends to acc; bound once
	accAt    int
	stalled  bool
	stallOn  uint64
	faultAt  time.Time
	waits    []time.Duration
	lastAt   time.Time
	resumeAt time.Time

	nSent, nBytes, nZero, nResent, nPushed, nPulled uint64
	nRaw, nEncoded, nLZ4                            uint64 // with LZ4
	err                                             error  // the first failure in the event loop
}

func (m *pcModel) tx(n int) time.Duration {
	if m.bw <= 0 {
		return 0
	}
	return time.Duration(float64(n) * 8 * 1e9 / m.bw)
}

func has(b []uint64, n uint64) bool { return b[n>>6]&(1<<(n&63)) != 0 }
func set(b []uint64, n uint64)      { b[n>>6] |= 1 << (n & 63) }

func (m *pcModel) run(ctx context.Context) error {
	clock := m.e.SourceClock
	alg := "post-copy"
	if m.cfg.PreCopyRounds > 0 {
		alg = "hybrid"
	}
	m.report = &livemig.Report{Algorithm: alg, GuestPages: m.pages, PageSize: m.ps}
	words := livemig.WordsFor(m.pages)
	m.sent, m.usent, m.ever = make([]uint64, words), make([]uint64, words), make([]uint64, words)
	m.dirty, m.present, m.asked = make([]uint64, words), make([]uint64, words), make([]uint64, words)
	m.buf, m.out, m.enc = make([]byte, m.ps), make([]byte, 0, m.ps), &codec.PageEncoder{LZ4: m.cfg.LZ4}
	m.prepager = postcopy.NewPrepager(prepageBase(m.cfg.Prepage))
	m.touch = func(page uint64, _ bool) { m.acc = append(m.acc, page) }
	start := clock.Now()
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("scenario: post-copy model: %w", err)
	}
	if m.cfg.PreCopyRounds > 0 {
		if err := m.precopy(ctx, start); err != nil {
			return err
		}
	}

	// Switchover: pause, discard stale copies, state, Ack(Ready), Commit.
	pauseAt := clock.Now()
	if err := m.g.Pause(ctx); err != nil {
		return fmt.Errorf("scenario: post-copy model: pause: %w", err)
	}
	var ctl int
	if m.cfg.PreCopyRounds > 0 {
		if err := m.syncDirty(); err != nil {
			return err
		}
		ctl += postcopy.DiscardSize(m.dirty)
		for i, w := range m.dirty {
			m.sent[i] &^= w
		}
		clear(m.dirty)
	}
	copy(m.present, m.sent)
	m.held = bitmap.CountWords(m.present)
	toPush := m.pages - m.held
	preSent, preBytes, preZero := m.nSent, m.nBytes, m.nZero
	state, err := m.g.SaveState(ctx, nil)
	if err != nil {
		return fmt.Errorf("scenario: post-copy model: save state: %w", err)
	}
	m.report.StateBytes = uint64(len(state))
	m.nBytes += uint64(len(state)) + 2*recOverhead
	ctl += len(state) + 2*recOverhead
	stateAt := pauseAt.Add(m.tx(ctl) + m.lat)
	if err := m.sink.LoadState(ctx, state); err != nil {
		return fmt.Errorf("scenario: post-copy model: destination load state: %w", err)
	}
	readyAt := stateAt.Add(m.tx(recOverhead) + m.lat) // Ack(Ready) at the source
	m.resumeAt = readyAt.Add(m.tx(recOverhead) + m.lat)
	if err := m.sink.Resume(ctx); err != nil {
		return fmt.Errorf("scenario: post-copy model: destination resume: %w", err)
	}
	m.resumed = true
	ackResumed := m.resumeAt.Add(m.tx(recOverhead) + m.lat)
	m.report.Downtime = ackResumed.Sub(pauseAt)

	// Post-copy: the push starts behind the Commit, the vCPU at the resume.
	if m.order != nil {
		unsent := make([]uint64, words)
		for i, w := range m.sent {
			unsent[i] = ^w
		}
		if rem := m.pages % 64; rem != 0 {
			unsent[words-1] &= 1<<rem - 1
		}
		m.push = m.order.Plan(nil, unsent)
	} else {
		m.push = make([]uint64, 0, toPush)
		for n := uint64(0); n < m.pages; n++ {
			if !has(m.sent, n) {
				m.push = append(m.push, n)
			}
		}
	}
	for _, n := range m.push {
		if n >= m.pages {
			return fmt.Errorf("scenario: post-copy model: order planned page %d of %d: %w", n, m.pages, livemig.ErrPageRange)
		}
	}
	commitAt := readyAt.Add(m.tx(recOverhead))
	m.vrun = m.g.Stats().RunTime
	m.nextPush = commitAt
	m.schedule(m.resumeAt, evGuest, record{})
	if m.held == m.pages {
		m.lastAt = m.resumeAt
	}
	m.pusher(commitAt)
	if m.err != nil {
		return m.err
	}
	endAt, err := m.loop(ctx)
	if err != nil {
		return err
	}
	clock.AdvanceTo(endAt)

	pc := livemig.Round{Index: len(m.report.Rounds) + 1, Final: true, Start: pauseAt.Sub(start), Duration: endAt.Sub(pauseAt),
		DirtyPages: toPush, PagesSent: m.nSent - preSent, ZeroPages: m.nZero - preZero, Bytes: m.nBytes - preBytes}
	m.report.Rounds = append(m.report.Rounds, pc)
	m.report.TotalTime = endAt.Sub(start)
	m.report.BytesSent, m.report.PagesSent, m.report.PagesResent, m.report.ZeroPages = m.nBytes, m.nSent, m.nResent, m.nZero
	m.report.Converged = true
	m.report.Verified = m.sink.Received() == m.pages
	if m.cfg.LZ4 {
		m.report.Codec = &livemig.CodecStats{RawBytes: m.nRaw, EncodedBytes: m.nEncoded, LZ4Pages: m.nLZ4}
	}
	st := &livemig.PostCopyStats{PagesPushed: m.nPushed, PagesPulled: m.nPulled, DemandFaults: uint64(len(m.waits)),
		LastPage: m.lastAt.Sub(m.resumeAt)}
	if len(m.waits) > 0 {
		slices.Sort(m.waits)
		at := func(q float64) time.Duration { return m.waits[int(q*float64(len(m.waits)-1)+0.5)] }
		st.FaultP50, st.FaultP99, st.FaultMax = at(0.5), at(0.99), m.waits[len(m.waits)-1]
		for _, w := range m.waits {
			st.WaitTotal += w
		}
	}
	m.report.PostCopy = st
	return nil
}

// prepageBase is the Prepager's base window for a Config.Prepage value.
func prepageBase(p int) int {
	switch {
	case p == 0:
		return postcopy.DefaultPrepage
	case p < 0:
		return 0
	}
	return p
}

func (m *pcModel) syncDirty() error {
	if err := m.g.SyncDirty(m.dirty); err != nil {
		return fmt.Errorf("scenario: post-copy model: sync dirty log: %w", err)
	}
	if m.order != nil {
		m.order.Observe(m.dirty)
	}
	return nil
}

// precopy runs the pre-copy rounds of a hybrid migration: the source
// writes page after page as the link takes them (nothing comes back before
// the switchover), the destination stores them.
func (m *pcModel) precopy(ctx context.Context, start time.Time) error {
	clock := m.e.SourceClock
	if err := m.g.SyncDirty(m.dirty); err != nil {
		return fmt.Errorf("scenario: post-copy model: start dirty log: %w", err)
	}
	clear(m.dirty)
	var left, prev uint64
	for round := 1; ; round++ {
		r := livemig.Round{Index: round, Start: clock.Now().Sub(start), DirtyPages: m.pages}
		if round > 1 {
			r.DirtyPages = left
		}
		t0 := clock.Now()
		s0, b0, z0 := m.nSent, m.nBytes, m.nZero
		send := func(n uint64) error {
			if (m.nSent-s0)%4096 == 0 {
				if err := ctx.Err(); err != nil {
					return fmt.Errorf("scenario: post-copy model: %w", err)
				}
			}
			set(m.sent, n)
			size, err := m.sendPage(n)
			if err != nil {
				return err
			}
			clock.Advance(m.tx(size))
			return nil
		}
		if round == 1 {
			for n := uint64(0); n < m.pages; n++ {
				if err := send(n); err != nil {
					return err
				}
			}
		} else {
			var list []uint64
			if m.order != nil {
				m.plan = m.order.Plan(m.plan[:0], m.dirty)
				list = m.plan
			} else {
				m.plan = m.plan[:0]
				for i, w := range m.dirty {
					for w != 0 {
						m.plan = append(m.plan, uint64(i)*64+uint64(bits.TrailingZeros64(w)))
						w &= w - 1
					}
				}
				list = m.plan
			}
			clear(m.dirty)
			for _, n := range list {
				if n >= m.pages {
					return fmt.Errorf("scenario: post-copy model: order planned page %d of %d: %w", n, m.pages, livemig.ErrPageRange)
				}
				if err := send(n); err != nil {
					return err
				}
			}
		}
		clock.Advance(m.tx(recOverhead)) // EndRound
		r.Duration = clock.Now().Sub(t0)
		r.PagesSent, r.Bytes, r.ZeroPages = m.nSent-s0, m.nBytes-b0, m.nZero-z0
		m.report.Rounds = append(m.report.Rounds, r)
		if err := m.syncDirty(); err != nil {
			return err
		}
		prev, left = left, bitmap.CountWords(m.dirty)
		if round >= m.cfg.PreCopyRounds || left == 0 || (round > 1 && left >= prev) {
			return nil
		}
	}
}

// sendPage reads page n of the source, stores it at the destination's sink
// and counts it as sent; it returns the record's size.
func (m *pcModel) sendPage(n uint64) (int, error) {
	if err := m.g.ReadPage(n, m.buf); err != nil {
		return 0, &livemig.PageError{Op: "read", Page: n, Err: err}
	}
	enc, data := m.enc.Encode(m.out[:0], m.buf)
	size := recOverhead + len(data)
	var err error
	if enc == transport.EncZero {
		m.nZero++
		err = m.sink.ZeroPage(n)
	} else {
		if m.cfg.LZ4 {
			m.nRaw += uint64(m.ps)
			m.nEncoded += uint64(len(data))
			if enc == transport.EncLZ4 {
				m.nLZ4++
			}
		}
		err = m.sink.WritePage(n, m.buf)
	}
	if err != nil {
		return 0, fmt.Errorf("scenario: post-copy model: destination page %d: %w", n, err)
	}
	m.nSent++
	m.nBytes += uint64(size)
	if has(m.ever, n) {
		m.nResent++
	}
	set(m.ever, n)
	return size, nil
}

func (m *pcModel) schedule(at time.Time, k evKind, r record) {
	m.seq++
	m.events.push(event{at: at, seq: m.seq, kind: k, rec: r})
}

// send writes page n at time now on the main connection or, urgent, ahead
// of it, and returns its record's size. The destination's copy is stored at
// once (the guest is paused, so it is the copy that arrives); the page
// counts as held when it arrives. A failure is kept in m.err, which the
// event loop returns.
func (m *pcModel) send(now time.Time, n uint64, urgent bool) int {
	size, err := m.sendPage(n)
	if err != nil {
		m.err = cmp.Or(m.err, err)
		return 0
	}
	r := record{page: n, bytes: size}
	if urgent {
		m.urgQ.push(r)
	} else {
		m.mainQ.push(r)
	}
	m.startWire(now)
	return size
}

// startWire puts the next record on the idle wire: urgent ones first.
func (m *pcModel) startWire(now time.Time) {
	if m.busy {
		return
	}
	var r record
	switch {
	case m.urgQ.len() > 0:
		r = m.urgQ.pop()
	case m.mainQ.len() > 0:
		r = m.mainQ.pop()
	default:
		return
	}
	m.busy = true
	fin := now.Add(m.tx(r.bytes))
	m.schedule(fin, evWire, record{})
	m.schedule(fin.Add(m.lat), evArrive, r)
}

// pusher writes push pages while the queue has room (and the rate cap
// allows), handling first the requests that waited for it.
func (m *pcModel) pusher(now time.Time) {
	for {
		for _, n := range m.pending {
			m.serve(now, n)
		}
		m.pending = m.pending[:0]
		if m.pushDone || m.mainQ.bytes >= m.cfg.QueueBytes {
			return
		}
		n, ok := m.nextUnsent()
		if !ok {
			m.pushDone = true
			// Done follows every page on the main connection (with an
			// urgent one, after its end marker: urgent records go first).
			m.mainQ.push(record{done: true, bytes: recOverhead})
			m.startWire(now)
			return
		}
		if m.cfg.PushBandwidth > 0 {
			if now.Before(m.nextPush) {
				if !m.pushTimer {
					m.pushTimer = true
					m.schedule(m.nextPush, evPush, record{})
				}
				return
			}
			// Behind schedule: catch up, but by no more than the engine's
			// postcopy.PushSlack.
			if floor := now.Add(-postcopy.PushSlack); m.nextPush.Before(floor) {
				m.nextPush = floor
			}
		}
		set(m.sent, n)
		m.pushAt++
		m.nPushed++
		size := m.send(now, n, false)
		if m.cfg.PushBandwidth > 0 {
			// The cap counts the record's bytes, as the engine's does.
			m.nextPush = m.nextPush.Add(time.Duration(float64(size) * 1e9 / float64(m.cfg.PushBandwidth)))
		}
	}
}

// nextUnsent returns the next page of the push not yet sent.
func (m *pcModel) nextUnsent() (uint64, bool) {
	for m.pushAt < len(m.push) {
		n := m.push[m.pushAt]
		if !has(m.sent, n) {
			return n, true
		}
		m.pushAt++
	}
	return 0, false
}

// serve sends requested page n and its neighbours, as the engine does.
func (m *pcModel) serve(now time.Time, n uint64) {
	urgent := m.cfg.Urgent
	claim := func(p uint64, resend bool) bool {
		if resend {
			if has(m.usent, p) {
				return false
			}
			set(m.usent, p)
			set(m.sent, p)
			return true
		}
		if has(m.sent, p) {
			return false
		}
		set(m.sent, p)
		if urgent {
			set(m.usent, p)
		}
		return true
	}
	if claim(n, urgent) {
		m.nPulled++
		m.send(now, n, urgent)
	}
	dir, more := m.prepager.Next(n, m.pages)
	for i := 1; i <= more; i++ {
		p := n + uint64(i)
		if dir < 0 {
			p = n - uint64(i)
		}
		if claim(p, false) {
			m.nPulled++
			m.send(now, p, urgent)
		}
	}
}

// loop runs the events until the source has the destination's final Ack;
// it returns that instant.
func (m *pcModel) loop(ctx context.Context) (time.Time, error) {
	for steps := 0; ; steps++ {
		if steps%65536 == 0 {
			if err := ctx.Err(); err != nil {
				return time.Time{}, fmt.Errorf("scenario: post-copy model: %w", err)
			}
		}
		if len(m.events) == 0 {
			return time.Time{}, errors.New("scenario: post-copy model: stalled with pages missing (a model bug)")
		}
		ev := m.events.pop()
		now := ev.at
		switch ev.kind {
		case evWire:
			m.busy = false
			m.startWire(now)
			m.pusher(now)
		case evPush:
			m.pushTimer = false
			m.pusher(now)
		case evRequest:
			switch {
			case m.pushDone:
				// Every page is on its way: the engine has nothing to add
				// (an urgent server has sent its end marker).
			case m.cfg.Urgent || m.mainQ.bytes < m.cfg.QueueBytes:
				m.serve(now, ev.rec.page)
			default:
				// The push is blocked in a write; it handles the request
				// once the write returns. (Otherwise it is idle, waiting
				// on its rate cap.)
				m.pending = append(m.pending, ev.rec.page)
			}
		case evArrive:
			if ev.rec.done {
				if m.held != m.pages {
					return time.Time{}, fmt.Errorf("scenario: post-copy model: Done with %d of %d pages held (a model bug)", m.held, m.pages)
				}
				return now.Add(m.tx(recOverhead) + m.lat), nil
			}
			m.arrive(now, ev.rec.page)
		case evGuest:
			m.vcpu(now)
		}
		if m.err != nil {
			return time.Time{}, m.err
		}
	}
}

// arrive places page n at the destination if it is missing.
func (m *pcModel) arrive(now time.Time, n uint64) {
	if has(m.present, n) {
		return
	}
	set(m.present, n)
	if m.held++; m.held == m.pages {
		m.lastAt = now
	}
	if m.stalled && m.stallOn == n {
		m.stalled = false
		m.waits = append(m.waits, now.Sub(m.faultAt))
		m.schedule(now, evGuest, record{})
	}
}

// vcpu runs the destination's vCPU at now: the accesses left of its step,
// then the next step, until an access faults or every page is held.
func (m *pcModel) vcpu(now time.Time) {
	if m.held == m.pages {
		return // nothing can fault any more
	}
	if m.accAt == len(m.acc) {
		from := m.vrun
		m.vrun += m.cfg.Quantum
		m.acc, m.accAt = m.acc[:0], 0
		m.g.Workload().Writes(m.g.Env(), from, m.vrun, m.touch)
	}
	for ; m.accAt < len(m.acc); m.accAt++ {
		n := m.acc[m.accAt]
		if n >= m.pages || has(m.present, n) {
			continue
		}
		m.stalled, m.stallOn, m.faultAt = true, n, now
		if !has(m.asked, n) {
			set(m.asked, n)
			m.schedule(now.Add(m.tx(reqBytes)+m.lat), evRequest, record{page: n})
		}
		return
	}
	m.schedule(now.Add(m.cfg.Quantum), evGuest, record{})
}
