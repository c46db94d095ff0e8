package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"strings"
	"testing"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/examples/qemu/stream"
	"github.com/livemig/livemig/transport"
)

// blockList encodes blocks as kindQBlocks carries them.
func blockList(blocks ...stream.Block) []byte {
	var b []byte
	for _, blk := range blocks {
		b = append(b, byte(len(blk.Name)))
		b = append(b, blk.Name...)
		b = binary.BigEndian.AppendUint64(b, blk.Size)
	}
	return b
}

// TestRelayDestRejects gives the destination half's writer messages no
// source half sends: each is an error naming the message and the page,
// wrapping livemig.ErrCorrupt or ErrPageRange, and nothing panics.
func TestRelayDestRejects(t *testing.T) {
	ram := blockList(stream.Block{Name: "pc.ram", Size: 4 * stream.PageSize})
	blocks := transport.Msg{Kind: kindQBlocks, Data: ram}
	page := bytes.Repeat([]byte{7}, stream.PageSize)
	cases := []struct {
		name string
		msgs []transport.Msg
		want error
		say  string
	}{
		{"page before blocks", []transport.Msg{{Kind: kindQPage, Enc: transport.EncRaw, Data: page}}, livemig.ErrCorrupt, "before the block list"},
		{"page past the blocks", []transport.Msg{blocks, {Kind: kindQPage, Page: 4, Enc: transport.EncZero}}, livemig.ErrPageRange, "page 4"},
		{"bad delta", []transport.Msg{blocks, {Kind: kindQPage, Page: 1, Enc: transport.EncXBZRLE, Data: []byte{0, 0}}}, livemig.ErrCorrupt, "page 1"},
		{"cut block list", []transport.Msg{{Kind: kindQBlocks, Data: ram[:len(ram)-1]}}, livemig.ErrCorrupt, "block list"},
		{"empty block name", []transport.Msg{{Kind: kindQBlocks, Data: make([]byte, 9)}}, livemig.ErrCorrupt, "block list"},
		{"odd block size", []transport.Msg{{Kind: kindQBlocks, Data: blockList(stream.Block{Name: "x", Size: 5})}}, livemig.ErrCorrupt, "size"},
		{"a return-path message", []transport.Msg{{Kind: kindQReturn, Data: []byte{1}}}, livemig.ErrCorrupt, "unexpected"},
		{"cut before the end", []transport.Msg{blocks}, nil, "unexpected EOF"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ctx := context.Background()
			a, b := transport.Pipe(0)
			src, dst := transport.NewConn(a, transport.Config{Liveness: -1}), transport.NewConn(b, transport.Config{Liveness: -1})
			go func() {
				defer src.Close()
				for _, m := range c.msgs {
					if err := src.Send(ctx, m); err != nil {
						t.Errorf("send: %v", err)
						return
					}
				}
				_ = src.Flush(ctx)
			}()
			var out bytes.Buffer
			d := &destWriter{out: &countWriter{w: &out}, buf: make([]byte, stream.PageSize)}
			d.w = stream.NewWriter(d.out)
			err := d.run(ctx, dst)
			dst.Close()
			if err == nil || (c.want != nil && !errors.Is(err, c.want)) || !strings.Contains(err.Error(), c.say) {
				t.Fatalf("got %v, want an error wrapping %v that says %q", err, c.want, c.say)
			}
			t.Log(err)
		})
	}
}
