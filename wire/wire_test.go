package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"testing"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/transport"
)

// TestKinds pins the protocol's kind numbers, names and classes: a peer
// built from another version of this table would not understand this one.
func TestKinds(t *testing.T) {
	for _, tc := range []struct {
		k     transport.Kind
		n     uint8
		name  string
		class transport.Class
	}{
		{KindPage, 1, "Page", transport.ClassRecords},
		{KindEndRound, 2, "EndRound", transport.ClassControl},
		{KindState, 3, "State", transport.ClassBlob},
		{KindSwitchover, 4, "Switchover", transport.ClassControl},
		{KindDone, 5, "Done", transport.ClassControl},
		{KindCommit, 6, "Commit", transport.ClassControl},
		{KindError, 7, "Error", transport.ClassPriority},
		{KindRequest, 8, "Request", transport.ClassPriority},
		{KindAck, 9, "Ack", transport.ClassPriority},
		{KindDiscard, 10, "Discard", transport.ClassBitmap},
		{KindRecvBitmap, 11, "RecvBitmap", transport.ClassBitmap},
		{KindResume, 12, "Resume", transport.ClassControl},
		{transport.KindHeartbeat, 13, "Heartbeat", transport.ClassHeartbeat},
		{14, 14, "Kind(14)", transport.ClassNone},
	} {
		if uint8(tc.k) != tc.n || tc.k.String() != tc.name || tc.k.Class() != tc.class {
			t.Errorf("kind %d %q %v, want %d %q %v", tc.k, tc.k, tc.k.Class(), tc.n, tc.name, tc.class)
		}
	}
	if FlagUrgent&(1<<32-1) != 0 || FlagAck&(1<<32-1) != 0 || FlagUrgent&FlagAck != 0 {
		t.Errorf("flags %#x and %#x overlap each other or a round number", uint64(FlagUrgent), uint64(FlagAck))
	}
}

func TestPeerError(t *testing.T) {
	const session = 0xfeed
	m := ErrorMsg(errors.New("disk full"), session)
	if m.Kind != KindError || m.Arg != ErrorNotResumed || m.Page != session || string(m.Data) != "disk full" {
		t.Fatalf("ErrorMsg = %+v", m)
	}
	for _, tc := range []struct {
		name    string
		m       transport.Msg
		session uint64
		want    bool
	}{
		{"promise for our session", m, session, true},
		{"promise for another session", m, session + 1, false},
		{"no session of ours", m, 0, false},
		{"no promise", ErrorMsg(errors.New("disk full"), 0), session, false},
	} {
		pe := PeerErrorOf(tc.m, tc.session)
		err := fmt.Errorf("receive: %w", pe)
		if pe.NotResumed != tc.want || NotResumed(err) != tc.want || !errors.Is(err, livemig.ErrPeer) || pe.Message != "disk full" {
			t.Errorf("%s: PeerErrorOf = %+v (NotResumed %v, %v), want the promise %v", tc.name, pe, NotResumed(err), err, tc.want)
		}
	}
	if NotResumed(errors.New("peer failed")) {
		t.Error("NotResumed of an error without a PeerError")
	}
}

func TestCheckBitmap(t *testing.T) {
	words := func(ws ...uint64) []byte { return AppendBitmap(nil, ws) }
	for _, tc := range []struct {
		name  string
		m     transport.Msg
		pages uint64
		words int
		want  error
	}{
		{"one word", transport.Msg{Kind: KindDiscard, Data: words(1)}, 64, 1, nil},
		{"second chunk", transport.Msg{Kind: KindRecvBitmap, Page: 128, Data: words(1, 1<<9)}, 266, 2, nil},
		{"last page", transport.Msg{Kind: KindDiscard, Page: 64, Data: words(1 << 35)}, 100, 1, nil},
		{"bit past the end", transport.Msg{Kind: KindDiscard, Page: 64, Data: words(1 << 36)}, 100, 0, livemig.ErrPageRange},
		{"chunk past the end", transport.Msg{Kind: KindDiscard, Page: 64, Data: words(1, 0)}, 100, 0, livemig.ErrPageRange},
		{"far past the end", transport.Msg{Kind: KindDiscard, Page: 1 << 63, Data: words(1)}, 100, 0, livemig.ErrPageRange},
		{"unaligned", transport.Msg{Kind: KindDiscard, Page: 3, Data: words(1)}, 100, 0, livemig.ErrCorrupt},
		{"empty", transport.Msg{Kind: KindDiscard}, 100, 0, livemig.ErrCorrupt},
		{"torn word", transport.Msg{Kind: KindDiscard, Data: make([]byte, 12)}, 100, 0, livemig.ErrCorrupt},
		{"too long", transport.Msg{Kind: KindDiscard, Data: make([]byte, 8*transport.MaxBitmapWords+8)}, 1 << 30, 0, livemig.ErrCorrupt},
		{"not a bitmap", transport.Msg{Kind: KindDone, Data: words(1)}, 100, 0, livemig.ErrCorrupt},
	} {
		n, err := CheckBitmap(tc.m, tc.pages)
		if n != tc.words || (tc.want == nil && err != nil) || (tc.want != nil && !errors.Is(err, tc.want)) {
			t.Errorf("%s: CheckBitmap = %d, %v; want %d, %v", tc.name, n, err, tc.words, tc.want)
		}
		if err == nil && BitmapWord(tc.m, n-1) != binary.LittleEndian.Uint64(tc.m.Data[len(tc.m.Data)-8:]) {
			t.Errorf("%s: BitmapWord disagrees with the layout", tc.name)
		}
	}
}
