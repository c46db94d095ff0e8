package transport

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/livemig/livemig"
)

// The migration protocol's kinds (package wire defines them; it imports
// transport, so this package's own tests cannot import it). The tests use
// the same numbers, names and classes, so that the streams they write, and
// the fuzz corpora, are the protocol's; DefineKind panics if wire's
// definitions, in the same test binary, differ.
const (
	kindPage       Kind = 1
	kindEndRound   Kind = 2
	kindState      Kind = 3
	kindSwitchover Kind = 4
	kindDone       Kind = 5
	kindCommit     Kind = 6
	kindError      Kind = 7
	kindRequest    Kind = 8
	kindAck        Kind = 9
	kindDiscard    Kind = 10
	kindRecvBitmap Kind = 11
	kindResume     Kind = 12

	ackReady = 2 // wire.AckReady
)

// appendWords appends words to dst as a bitmap message's Data.
func appendWords(dst []byte, words []uint64) []byte {
	for _, w := range words {
		dst = binary.LittleEndian.AppendUint64(dst, w)
	}
	return dst
}

// Kinds of a second protocol, to show that the framing follows the classes
// and not the kind numbers.
const (
	testRecords Kind = 200
	testBlob    Kind = 201
	testBitmap  Kind = 202
	testPrio    Kind = 203
)

func init() {
	DefineKind(kindPage, "Page", ClassRecords)
	DefineKind(kindEndRound, "EndRound", ClassControl)
	DefineKind(kindState, "State", ClassBlob)
	DefineKind(kindSwitchover, "Switchover", ClassControl)
	DefineKind(kindDone, "Done", ClassControl)
	DefineKind(kindCommit, "Commit", ClassControl)
	DefineKind(kindError, "Error", ClassPriority)
	DefineKind(kindRequest, "Request", ClassPriority)
	DefineKind(kindAck, "Ack", ClassPriority)
	DefineKind(kindDiscard, "Discard", ClassBitmap)
	DefineKind(kindRecvBitmap, "RecvBitmap", ClassBitmap)
	DefineKind(kindResume, "Resume", ClassControl)

	DefineKind(testRecords, "TestRecords", ClassRecords)
	DefineKind(testBlob, "TestBlob", ClassBlob)
	DefineKind(testBitmap, "TestBitmap", ClassBitmap)
	DefineKind(testPrio, "TestPriority", ClassPriority)
}

func TestDefineKind(t *testing.T) {
	if c := KindHeartbeat.Class(); c != ClassHeartbeat {
		t.Errorf("KindHeartbeat.Class() = %v", c)
	}
	if c, s := Kind(250).Class(), Kind(250).String(); c != ClassNone || s != "Kind(250)" {
		t.Errorf("an undefined kind: %v %q", c, s)
	}
	if c, s := testBlob.Class(), testBlob.String(); c != ClassBlob || s != "TestBlob" {
		t.Errorf("testBlob: %v %q", c, s)
	}
	DefineKind(testBlob, "TestBlob", ClassBlob) // the same again: nothing happens
	for _, tc := range []struct {
		name string
		k    Kind
		n    string
		c    Class
	}{
		{"zero", 0, "Zero", ClassControl},
		{"heartbeat", KindHeartbeat, "Beat", ClassControl},
		{"no class", 251, "None", ClassNone},
		{"heartbeat class", 251, "Beat", ClassHeartbeat},
		{"unknown class", 251, "Odd", ClassHeartbeat + 1},
		{"no name", 251, "", ClassControl},
		{"other class", testBlob, "TestBlob", ClassControl},
		{"other name", testBlob, "Blob2", ClassBlob},
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("%s: DefineKind(%d, %q, %v) did not panic", tc.name, tc.k, tc.n, tc.c)
				}
			}()
			DefineKind(tc.k, tc.n, tc.c)
		}()
	}
	if c := Kind(251).Class(); c != ClassNone {
		t.Errorf("a refused definition left kind 251 of class %v", c)
	}
}

// TestClassesNotNumbers sends kinds of a second protocol: records of two
// kinds batch apart, a blob of another kind is reassembled, a bitmap kind
// gets the bitmap rule.
func TestClassesNotNumbers(t *testing.T) {
	cfg := Config{PageSize: 64, PageCount: 100, MaxFrame: 1000, MaxState: 5000}
	msgs := []Msg{
		{Kind: testRecords, Enc: EncRaw, Page: 1, Data: seq(64, 1)},
		{Kind: testRecords, Enc: EncZero, Page: 2},
		{Kind: kindPage, Enc: EncZero, Page: 3},
		{Kind: testRecords, Enc: EncZero, Page: 4},
		{Kind: testBlob, Page: 5, Arg: 6, Data: seq(3000, 2)},
		{Kind: testBitmap, Page: 64, Data: seq(16, 3)},
		{Kind: testPrio, Arg: 7},
	}
	stream := encode(t, cfg, msgs...)
	got, err := decode(stream, cfg)
	if err != io.EOF || len(got) != len(msgs) {
		t.Fatalf("decoded %d messages and %v, want %d and io.EOF", len(got), err, len(msgs))
	}
	for i, w := range msgs {
		g := got[i]
		if g.Kind != w.Kind || g.Enc != w.Enc || g.Page != w.Page || g.Arg != w.Arg || !bytes.Equal(g.Data, w.Data) {
			t.Errorf("message %d: got %v page %d arg %d, %d bytes; want %v page %d arg %d, %d bytes",
				i, g.Kind, g.Page, g.Arg, len(g.Data), w.Kind, w.Page, w.Arg, len(w.Data))
		}
	}
	c := NewConn(&bufLink{r: bytes.NewReader(nil)}, cfg)
	if err := c.Send(bg, Msg{Kind: testBitmap, Data: seq(9, 0)}); !errors.Is(err, ErrInvalid) {
		t.Errorf("a bitmap of 9 bytes: %v, want ErrInvalid", err)
	}
	if err := c.Send(bg, Msg{Kind: testRecords, Enc: EncZero, Page: 100}); !errors.Is(err, livemig.ErrPageRange) {
		t.Errorf("a record past the guest: %v, want ErrPageRange", err)
	}
	if err := c.Send(bg, Msg{Kind: testPrio, Data: seq(1000, 0)}); !errors.Is(err, ErrTooLarge) {
		t.Errorf("a priority message over a frame: %v, want ErrTooLarge", err)
	}
	// A blob continued by a frame of another blob kind is corrupt.
	bad := cat(frame(testBlob, frameFlagMore, 0, control(0, 0, seq(10, 0))), frame(kindState, 0, 0, control(0, 0, nil)))
	_, err = decode(bad, cfg)
	if !errors.Is(err, livemig.ErrCorrupt) || !strings.Contains(err.Error(), "State frame inside a TestBlob blob") {
		t.Errorf("a blob cut by another blob kind: %v", err)
	}
}
