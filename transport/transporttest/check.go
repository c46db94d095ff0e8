package transporttest

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"

	"github.com/livemig/livemig/transport"
	"github.com/livemig/livemig/wire"
)

// gen makes seeded random messages.
type gen struct {
	r   *rand.Rand
	src *rand.ChaCha8
}

func newGen(seed uint64) *gen {
	var s [32]byte
	s[0], s[1] = byte(seed), byte(seed>>8)
	src := rand.NewChaCha8(s)
	return &gen{r: rand.New(src), src: src}
}

func (g *gen) bytes(n int) []byte {
	b := make([]byte, n)
	g.src.Read(b)
	return b
}

// page returns a page record of a random encoding: raw, zero, or codec data
// of a random length (the Conn does not decode it).
func (g *gen) page(n uint64) transport.Msg {
	m := transport.Msg{Kind: wire.KindPage, Page: n}
	switch x := g.r.IntN(20); {
	case x < 10:
		m.Enc, m.Data = transport.EncRaw, g.bytes(PageSize)
	case x < 14:
		m.Enc = transport.EncZero
	case x < 17:
		m.Enc, m.Data = transport.EncXBZRLE, g.bytes(1+g.r.IntN(PageSize))
	default:
		m.Enc, m.Data = transport.EncLZ4, g.bytes(1+g.r.IntN(PageSize+PageSize/2))
	}
	return m
}

// pages returns n page records over pages [0, span), pages repeating.
func (g *gen) pages(n int, span uint64) []transport.Msg {
	ms := make([]transport.Msg, n)
	for i := range ms {
		ms[i] = g.page(g.r.Uint64N(span))
	}
	return ms
}

// sendAll sends msgs on c and flushes.
func sendAll(ctx context.Context, c transport.Conn, msgs []transport.Msg) error {
	for i, m := range msgs {
		if err := c.Send(ctx, m); err != nil {
			return fmt.Errorf("send %d of %d (%v): %w", i, len(msgs), m.Kind, err)
		}
	}
	if err := c.Flush(ctx); err != nil {
		return fmt.Errorf("flush after %d messages: %w", len(msgs), err)
	}
	return nil
}

// recvN receives n messages from c, copying their data. It returns those
// received before an error, and the error.
func recvN(ctx context.Context, c transport.Conn, n int) ([]transport.Msg, error) {
	out := make([]transport.Msg, 0, n)
	for len(out) < n {
		var m transport.Msg
		if err := c.Recv(ctx, &m); err != nil {
			return out, err
		}
		m.Data = bytes.Clone(m.Data)
		out = append(out, m)
	}
	return out, nil
}

func sameMsg(a, b transport.Msg) bool {
	return a.Kind == b.Kind && a.Enc == b.Enc && a.Page == b.Page && a.Arg == b.Arg && bytes.Equal(a.Data, b.Data)
}

func describe(m transport.Msg) string {
	return fmt.Sprintf("{%v enc %d page %d arg %d, %d bytes}", m.Kind, m.Enc, m.Page, m.Arg, len(m.Data))
}

// checkOrder says what is wrong with got as the messages received for want,
// or returns nil. strict demands the exact order; otherwise page records
// must keep their order for each page, control messages their order, and a
// control message must come after everything sent before it. A prefix of
// want is acceptable if prefix is set.
func checkOrder(want, got []transport.Msg, strict, prefix bool) error {
	if len(got) > len(want) || (!prefix && len(got) != len(want)) {
		return fmt.Errorf("received %d messages, sent %d", len(got), len(want))
	}
	if strict {
		for i := range got {
			if !sameMsg(want[i], got[i]) {
				return fmt.Errorf("message %d: got %s, sent %s", i, describe(got[i]), describe(want[i]))
			}
		}
		return nil
	}
	queues := map[uint64][]int{}
	var controls []int
	for i, m := range want {
		if m.Kind == wire.KindPage {
			queues[m.Page] = append(queues[m.Page], i)
		} else {
			controls = append(controls, i)
		}
	}
	received := make([]bool, len(want))
	low := 0
	for j, g := range got {
		var i int
		if g.Kind == wire.KindPage {
			q := queues[g.Page]
			if len(q) == 0 {
				return fmt.Errorf("message %d: %s: no such page record pending", j, describe(g))
			}
			i, queues[g.Page] = q[0], q[1:]
		} else {
			if len(controls) == 0 {
				return fmt.Errorf("message %d: %s: no control message pending", j, describe(g))
			}
			i, controls = controls[0], controls[1:]
			for low < i && received[low] {
				low++
			}
			if low < i {
				return fmt.Errorf("message %d: %s arrived before %s sent ahead of it", j, describe(g), describe(want[low]))
			}
		}
		if !sameMsg(want[i], g) {
			return fmt.Errorf("message %d: got %s, sent %s (message %d)", j, describe(g), describe(want[i]), i)
		}
		received[i] = true
	}
	return nil
}
