package wire_test

import (
	"errors"
	"fmt"

	"github.com/livemig/livemig/transport"
	"github.com/livemig/livemig/wire"
)

// A destination that gives up before it resumed the guest promises, for the
// session it received, never to resume it; the source that reads the promise
// for its own session may resume its guest.
func ExampleErrorMsg() {
	const session = 0x5eed
	m := wire.ErrorMsg(errors.New("load state: bad CPU model"), session)
	fmt.Println(m.Kind, m.Kind.Class())

	err := fmt.Errorf("migrate: %w", wire.PeerErrorOf(m, session))
	fmt.Println(err)
	fmt.Println(wire.NotResumed(err))
	// Output:
	// Error Priority
	// migrate: destination failed, guest not resumed there: load state: bad CPU model
	// true
}

// A bitmap message names pages by bits, 64 to a word.
func ExampleCheckBitmap() {
	m := transport.Msg{Kind: wire.KindDiscard, Page: 64, Data: wire.AppendBitmap(nil, []uint64{1<<0 | 1<<5})}
	words, err := wire.CheckBitmap(m, 200)
	if err != nil {
		panic(err)
	}
	for i := range words {
		w := wire.BitmapWord(m, i)
		for b := range 64 {
			if w&(1<<b) != 0 {
				fmt.Println("page", m.Page+64*uint64(i)+uint64(b))
			}
		}
	}
	// Output:
	// page 64
	// page 69
}
