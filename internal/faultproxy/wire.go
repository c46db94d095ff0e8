package faultproxy

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/livemig/livemig/transport"
	"github.com/livemig/livemig/wire"
)

// What the proxy knows of livemig's wire format, taken from packages
// transport (the framing) and wire (the kinds and Ack codes) so that they
// cannot drift apart. The proxy still finds the
// frames' boundaries with its own parser (pump.go), an oracle independent
// of transport's; TestTransportFrames checks that the two agree.
const (
	// HelloSize is the hello each side sends first (magic "LVMG", ...).
	HelloSize = transport.HelloSize
	// TrailerSize is the u32 CRC32C of header and payload after the payload.
	TrailerSize = 4
	// HeaderSize is a frame header: u32 payload length, u8 kind, u8 flags,
	// u16 record count, u32 CRC32C of those 8 bytes; little-endian.
	HeaderSize = transport.FrameOverhead - TrailerSize
	// MaxFrame is the largest payload the proxy takes for a frame; a header
	// announcing more means the stream is not livemig's, and the proxy
	// forwards that direction as plain bytes from there on.
	MaxFrame = 16 << 20

	helloMagic = "LVMG"
	// controlHead is the u64 page and u64 arg at the start of a control
	// frame's payload.
	controlHead = 16
)

// Kind is a frame's kind, the fifth byte of its header: transport's Kind.
type Kind = transport.Kind

// Frame kinds: the migration protocol's (package wire) and the transport's
// heartbeat. In a Trigger, 0 (AnyKind) matches every frame.
const (
	AnyKind        Kind = 0
	KindPage            = wire.KindPage // a batch of page records
	KindEndRound        = wire.KindEndRound
	KindState           = wire.KindState
	KindSwitchover      = wire.KindSwitchover
	KindDone            = wire.KindDone
	KindCommit          = wire.KindCommit
	KindError           = wire.KindError
	KindRequest         = wire.KindRequest
	KindAck             = wire.KindAck // Arg: one of the Ack codes below
	KindDiscard         = wire.KindDiscard
	KindRecvBitmap      = wire.KindRecvBitmap
	KindResume          = wire.KindResume
	KindHeartbeat       = transport.KindHeartbeat
)

// Ack codes, the Arg of a KindAck frame: package wire's.
const (
	AckRound    = wire.AckRound
	AckReady    = wire.AckReady
	AckResumed  = wire.AckResumed
	AckComplete = wire.AckComplete
	AckHeld     = wire.AckHeld
	AckReleased = wire.AckReleased
)

// ParseKind reads a kind by its name (transport.Kind.String),
// case-insensitively ("commit", "Ack", "Kind(14)"), or by number ("6");
// "any" and "" are AnyKind.
func ParseKind(s string) (Kind, error) {
	if s == "" || strings.EqualFold(s, "any") {
		return AnyKind, nil
	}
	for k := Kind(1); k != 0; k++ {
		if strings.EqualFold(s, k.String()) {
			return k, nil
		}
	}
	if n, err := strconv.ParseUint(s, 10, 8); err == nil {
		return Kind(n), nil
	}
	return 0, fmt.Errorf("faultproxy: unknown frame kind %q", s)
}

// Dir is a direction of a proxied connection.
type Dir int

const (
	// SrcToDst is from the client that dialled the proxy (the migration
	// source) to the target (the destination).
	SrcToDst Dir = iota
	// DstToSrc is the return path, from the target to the client.
	DstToSrc
)

// String returns "s2d" or "d2s".
func (d Dir) String() string {
	switch d {
	case SrcToDst:
		return "s2d"
	case DstToSrc:
		return "d2s"
	}
	return "dir" + strconv.Itoa(int(d))
}

// ParseDir reads "s2d" or "d2s".
func ParseDir(s string) (Dir, error) {
	switch strings.ToLower(s) {
	case "s2d":
		return SrcToDst, nil
	case "d2s":
		return DstToSrc, nil
	}
	return 0, fmt.Errorf("faultproxy: unknown direction %q (want s2d or d2s)", s)
}

// Fault is what a rule does to its connection when its trigger matches.
type Fault int

const (
	// Close closes both sockets of the connection at once (each peer sees
	// an orderly end of stream, or a reset if it had sent bytes the proxy
	// had not read).
	Close Fault = iota + 1
	// Stall stops forwarding in both directions and stops reading from
	// both sockets, so that TCP back-pressure builds as on a dead path;
	// the sockets stay open until Proxy.Close. A
	// direction blocked in a read when the stall fires may still take one
	// buffer from its socket, which it then holds and does not forward.
	Stall
	// FlipHeader flips one bit of the matched frame's header length field:
	// bit Rule.Bit (0-31) of the u32.
	FlipHeader
	// FlipPayload flips one bit of the matched frame's payload: bit
	// Rule.Bit counted from the payload's first byte (bit i is bit i%8 of
	// byte i/8), taken modulo the payload's bits; in the u32 trailer
	// instead when the payload is empty. With an AfterBytes trigger, it
	// flips bit Rule.Bit%8 of the byte at stream offset AfterBytes.
	FlipPayload
	// HalfOpen stops forwarding the trigger's direction, silently: the
	// proxy stops reading it and never sends its FIN; the other direction
	// keeps flowing. The connection stays open until Proxy.Close.
	HalfOpen
	// Drop leaves out the matched frame, whole, and forwards the rest.
	Drop
)

var faultNames = [...]string{
	Close:       "close",
	Stall:       "stall",
	FlipHeader:  "flip-header",
	FlipPayload: "flip-payload",
	HalfOpen:    "half-open",
	Drop:        "drop",
}

// String returns the fault's name as the command takes it ("flip-header").
func (f Fault) String() string {
	if f > 0 && int(f) < len(faultNames) {
		return faultNames[f]
	}
	return "fault" + strconv.Itoa(int(f))
}

// ParseFault reads a fault by name ("close", "stall", "flip-header",
// "flip-payload", "half-open", "drop").
func ParseFault(s string) (Fault, error) {
	for f, name := range faultNames {
		if f > 0 && strings.EqualFold(s, name) {
			return Fault(f), nil
		}
	}
	return 0, fmt.Errorf("faultproxy: unknown fault %q", s)
}
