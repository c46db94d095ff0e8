package transport

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"time"

	"github.com/livemig/livemig"
)

// ProtocolVersion is the version of the wire protocol this package speaks.
const ProtocolVersion = 2

// HelloSize is the length of a hello on the wire: magic "LVMG", u16 version,
// u32 page size, u64 page count, u64 features, u16 streams, u16 stream,
// 16 bytes of session, u32 liveness in milliseconds (0: off), u32 CRC32C of
// the preceding bytes; little-endian. Every version begins with the magic
// and the version.
const HelloSize = 4 + 2 + 4 + 8 + 8 + 2 + 2 + 16 + 4 + 4

// helloPrefix is what every version's hello begins with: magic and version.
const helloPrefix = 6

// helloSizeV1 is the length of a version-1 hello (no liveness field).
const helloSizeV1 = HelloSize - 4

const helloMagic = "LVMG"

// AppendHello appends h's wire form to dst and returns the extended slice.
// A zero h.Version is written as ProtocolVersion.
func AppendHello(dst []byte, h Hello) []byte {
	if h.Version == 0 {
		h.Version = ProtocolVersion
	}
	start := len(dst)
	dst = append(dst, helloMagic...)
	dst = binary.LittleEndian.AppendUint16(dst, h.Version)
	dst = binary.LittleEndian.AppendUint32(dst, h.PageSize)
	dst = binary.LittleEndian.AppendUint64(dst, h.PageCount)
	dst = binary.LittleEndian.AppendUint64(dst, uint64(h.Features))
	dst = binary.LittleEndian.AppendUint16(dst, h.Streams)
	dst = binary.LittleEndian.AppendUint16(dst, h.Stream)
	dst = append(dst, h.Session[:]...)
	dst = binary.LittleEndian.AppendUint32(dst, livenessMillis(h.Liveness))
	return binary.LittleEndian.AppendUint32(dst, crc32.Checksum(dst[start:], castagnoli))
}

// ParseHello decodes a hello from the first HelloSize bytes of b. It checks
// the magic, the version and the CRC, not whether the peer is compatible
// (Handshake does). A hello of another version is an error wrapping
// livemig.ErrVersion, with the returned Hello's Version set (its layout may
// differ: nothing else is read). Otherwise a short b, a bad magic or a bad
// CRC is an error wrapping livemig.ErrCorrupt.
func ParseHello(b []byte) (Hello, error) {
	if len(b) < helloPrefix {
		return Hello{}, &livemig.StreamError{What: "hello", Err: fmt.Errorf("%d bytes, want %d: %w", len(b), HelloSize, livemig.ErrCorrupt)}
	}
	if string(b[:4]) != helloMagic {
		return Hello{}, &livemig.StreamError{What: "hello", Err: fmt.Errorf("transport: not a livemig peer (magic %q): %w", b[:4], livemig.ErrCorrupt)}
	}
	var h Hello
	h.Version = binary.LittleEndian.Uint16(b[4:])
	if h.Version != ProtocolVersion {
		return h, versionErr(h.Version)
	}
	if len(b) < HelloSize {
		return Hello{}, &livemig.StreamError{What: "hello", Err: fmt.Errorf("%d bytes, want %d: %w", len(b), HelloSize, livemig.ErrCorrupt)}
	}
	want := binary.LittleEndian.Uint32(b[HelloSize-4:])
	if got := crc32.Checksum(b[:HelloSize-4], castagnoli); got != want {
		return Hello{}, &livemig.StreamError{What: "hello", Err: fmt.Errorf("transport: not a livemig peer (bad CRC): %w", livemig.ErrCorrupt)}
	}
	h.PageSize = binary.LittleEndian.Uint32(b[6:])
	h.PageCount = binary.LittleEndian.Uint64(b[10:])
	h.Features = Features(binary.LittleEndian.Uint64(b[18:]))
	h.Streams = binary.LittleEndian.Uint16(b[26:])
	h.Stream = binary.LittleEndian.Uint16(b[28:])
	copy(h.Session[:], b[30:46])
	h.Liveness = time.Duration(binary.LittleEndian.Uint32(b[46:])) * time.Millisecond
	return h, nil
}

// readHello reads a hello from r into b (HelloSize bytes, of which the
// first have are already read) and parses it. It reads the magic and the
// version first and stops there for another version, whose hello may be
// shorter: such a peer is refused (ErrVersion) without waiting for bytes it
// never sends. n is how many bytes of b hold what was read.
func readHello(r io.Reader, b []byte, have int) (h Hello, n int, err error) {
	n = have
	if n < helloPrefix {
		k, err := io.ReadFull(r, b[n:helloPrefix])
		n += k
		if err != nil {
			return Hello{}, n, err
		}
	}
	if v := binary.LittleEndian.Uint16(b[4:]); string(b[:4]) != helloMagic || v != ProtocolVersion {
		h, err := ParseHello(b[:helloPrefix]) // the error for a stranger or another version
		if v == 1 && err != nil && n < helloSizeV1 {
			// Take the rest of a version-1 hello, so that a peer writing
			// it whole into a small buffer goes on to read our answer.
			k, _ := io.ReadFull(r, b[n:helloSizeV1])
			n += k
		}
		return h, n, err
	}
	k, err := io.ReadFull(r, b[n:HelloSize])
	n += k
	if err != nil {
		return Hello{}, n, err
	}
	h, err = ParseHello(b[:HelloSize])
	return h, n, err
}

// livenessMillis is d in whole milliseconds for the hello, at least 1 when
// d is positive, 0 when it is not.
func livenessMillis(d time.Duration) uint32 {
	if d <= 0 {
		return 0
	}
	return uint32(min(max(d.Milliseconds(), 1), 1<<32-1))
}

// agreedLiveness is the bound both sides of a Conn use: the longer of the
// two, or none if either side has it off (a side that sends no heartbeats
// cannot be held to a bound, and one that allows a longer silence must not
// be cut by a shorter one).
func agreedLiveness(local, peer time.Duration) time.Duration {
	if local <= 0 || peer <= 0 {
		return 0
	}
	return max(local, peer)
}

func versionErr(v uint16) error {
	return fmt.Errorf("transport: peer speaks protocol %d, we speak %d: %w", v, ProtocolVersion, livemig.ErrVersion)
}

// checkPeer refuses a peer that speaks another version or has another page
// geometry; a side whose PageCount is 0 takes the other's.
func checkPeer(local, peer Hello) error {
	switch {
	case peer.Version != ProtocolVersion:
		return versionErr(peer.Version)
	case local.PageCount == 0 || peer.PageCount == 0:
		return nil // one side adopts the other's geometry
	case peer.PageSize != local.PageSize:
		return fmt.Errorf("transport: peer page size %d, ours %d: %w", peer.PageSize, local.PageSize, livemig.ErrVersion)
	case peer.PageCount != local.PageCount:
		return fmt.Errorf("transport: peer has %d pages, we have %d: %w", peer.PageCount, local.PageCount, livemig.ErrVersion)
	}
	return nil
}

// Agreed returns the features both sides announced.
func Agreed(local, peer Hello) Features { return local.Features & peer.Features }

// Handshake sends local's hello on link and reads the peer's, both at once
// (the write runs in its own goroutine, so two peers on an unbuffered link do
// not deadlock). local.Version is set to ProtocolVersion.
//
// It returns the peer's hello. A peer that speaks another protocol version or
// has another page size or page count is refused with an error wrapping
// livemig.ErrVersion that names both values; bytes that are not a livemig
// hello give an error wrapping livemig.ErrCorrupt; a link that ends early
// gives io.ErrUnexpectedEOF (or io.EOF if the peer sent nothing). Streams,
// Stream and Session are returned as sent, unchecked: a multi-stream session
// checks them.
//
// A peer that has not sent its whole hello within DefaultLiveness (a silent
// peer, a client of another protocol that waits for the server to speak) is
// refused with an error wrapping ErrStalled; on a link in virtual time there
// is no such bound. A listener answers only when its AcceptConn takes the
// connection, so the bound also times the listening application. If ctx
// ends before the handshake is done, the link is closed and the error wraps
// ctx.Err() (context.Cause(ctx)). On
// any error Handshake closes the link; on success the link is positioned at
// the first frame.
func Handshake(ctx context.Context, link Link, local Hello) (peer Hello, err error) {
	return handshake(ctx, link, local, liveness(Config{}, link))
}

// handshake is Handshake bounded by timeout (none if 0).
func handshake(ctx context.Context, link Link, local Hello, timeout time.Duration) (peer Hello, err error) {
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeoutCause(ctx, timeout,
			fmt.Errorf("no hello from the peer within %v: %w", timeout, ErrStalled))
		defer cancel()
	}
	if ctx.Err() != nil {
		link.Close()
		return Hello{}, fmt.Errorf("transport: handshake: %w", context.Cause(ctx))
	}
	local.Version = ProtocolVersion
	out := AppendHello(make([]byte, 0, HelloSize), local)
	var stop func() bool
	if ctx.Done() != nil {
		stop = context.AfterFunc(ctx, func() { link.Close() })
	}
	wdone := make(chan error, 1)
	go func() {
		_, err := link.Write(out)
		wdone <- err
	}()

	var in [HelloSize]byte
	valid := false // the peer sent a well-formed hello, so it reads ours
	peer, _, err = readHello(link, in[:], 0)
	switch {
	case err == nil:
		valid = true
		err = checkPeer(local, peer)
	case errors.Is(err, livemig.ErrVersion):
		valid = true // a livemig peer of another version reads our hello
	case !errors.Is(err, livemig.ErrCorrupt):
		err = fmt.Errorf("transport: handshake: reading the peer's hello: %w", err)
	}
	if !valid {
		// The peer may not be reading: unblock our write. A TCP peer that
		// is reading (a dialer that offers a key, looking for a challenge)
		// gets our hello first: a close with its bytes unread here would
		// reset the connection and could lose the hello it reads.
		lingerClose(link, wdone)
	}
	werr := <-wdone
	if stop != nil && !stop() {
		// ctx ended (its cause says why: the timeout's is ErrStalled) and
		// closed the link under the exchange.
		return Hello{}, fmt.Errorf("transport: handshake: %w", context.Cause(ctx))
	}
	if err == nil && werr != nil {
		err = fmt.Errorf("transport: handshake: sending our hello: %w", werr)
	}
	if err != nil {
		link.Close()
		return peer, err
	}
	return peer, nil
}

// Open runs Handshake on link and returns a Conn over it for the agreed
// geometry (cfg.PageSize and cfg.PageCount are taken from local, or from
// the peer when local.PageCount is 0), with the peer's hello. A zero local.PageSize is livemig.DefaultPageSize. The
// handshake is bounded by cfg.Liveness (as Handshake is by DefaultLiveness;
// not at all when liveness is off). Each side announces its Liveness in the
// hello, and the Conn uses the agreed bound: the longer of the two, or none
// if either side has it off. On error the link is closed.
func Open(ctx context.Context, link Link, local Hello, cfg Config) (Conn, Hello, error) {
	if local.PageSize == 0 {
		local.PageSize = livemig.DefaultPageSize
	}
	local.Liveness = liveness(cfg, link)
	peer, err := handshake(ctx, link, local, local.Liveness)
	if err != nil {
		return nil, peer, err
	}
	cfg.PageSize = int(local.PageSize)
	cfg.PageCount = local.PageCount
	if local.PageCount == 0 {
		// Any geometry: the peer's.
		cfg.PageSize, cfg.PageCount = int(peer.PageSize), peer.PageCount
	}
	cfg.Liveness = agreedLiveness(local.Liveness, peer.Liveness)
	if cfg.Liveness == 0 {
		cfg.Liveness = -1
	}
	return NewConn(link, cfg), peer, nil
}

// lingerClose closes link once our hello is written (wdone says so; it
// gets the result back); a network link first stops writing and, for at
// most lingerTime, reads and drops what the peer sent, so that the close
// does not reset the connection under bytes the peer has still to read.
func lingerClose(link Link, wdone chan error) {
	if nc, ok := link.(NetConn); ok {
		t := time.NewTimer(lingerTime)
		defer t.Stop()
		select {
		case err := <-wdone:
			wdone <- err // for the caller
			c := nc.NetConn()
			if cw, ok := c.(interface{ CloseWrite() error }); ok && err == nil && c.SetReadDeadline(time.Now().Add(lingerTime)) == nil {
				_ = cw.CloseWrite()
				_, _ = io.Copy(io.Discard, io.LimitReader(c, 64<<10))
			}
		case <-t.C:
		}
	}
	link.Close()
}

// lingerTime bounds lingerClose's wait for the peer to read and close.
const lingerTime = 100 * time.Millisecond
