package autopick

import (
	"errors"
	"fmt"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/codec"
	"github.com/livemig/livemig/transport"
)

// ErrMode marks a peer that runs another mode: retrying will not help.
var ErrMode = errors.New("mode mismatch")

// Hello is the commands' handshake for a guest of pages pages run in mode
// (precopy, postcopy, hybrid, adaptive, or auto before the source has
// chosen) with
// pre-copy's codecs: the post-copy feature for post-copy and hybrid; under
// auto a destination that follows the source announces every mode and
// codec, so that the features both sides agree on are the source's.
func Hello(pages uint64, mode string, codecs codec.Codecs) transport.Hello {
	h := transport.Hello{PageSize: livemig.DefaultPageSize, PageCount: pages, Features: transport.FeatDigest}
	switch mode {
	case "postcopy", "hybrid", "adaptive":
		h.Features |= transport.FeatPostCopy
	case "auto":
		h.Features |= transport.FeatPostCopy | transport.FeatXBZRLE | transport.FeatLZ4
	}
	if codecs.XBZRLE {
		h.Features |= transport.FeatXBZRLE
	}
	if codecs.LZ4 {
		h.Features |= transport.FeatLZ4
	}
	return h
}

// CheckPeer refuses a peer whose hello says it runs another mode than
// mode (the post-copy feature on both sides or neither), with an error
// wrapping ErrMode; auto (this side given -mode auto) takes either: the
// source decides, the destination follows.
func CheckPeer(mode string, auto bool, peer transport.Hello) error {
	if auto {
		return nil
	}
	pc := mode == "postcopy" || mode == "hybrid" || mode == "adaptive"
	if theirs := peer.Features&transport.FeatPostCopy != 0; theirs != pc {
		return fmt.Errorf("the peer runs %s, we run -mode %s: give both sides the same -mode: %w",
			map[bool]string{false: "pre-copy", true: "post-copy or hybrid"}[theirs], mode, ErrMode)
	}
	return nil
}
