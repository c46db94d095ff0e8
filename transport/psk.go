package transport

// Pre-shared-key authentication.
//
// When ListenConfig.PSK is set, every connection the listener accepts runs
// this exchange (after the TLS handshake, if TLS is configured too) before
// Accept or AcceptConn hands it out; Dial with DialConfig.PSK runs the
// dialer's side inside Dial. Every message has a fixed size, so there is no
// length for a peer to lie about:
//
//	listener -> dialer  challenge  "LVKC", Nl: 32 random bytes               36 bytes
//	dialer -> listener  offer      "LVKO", Nd: 32 random bytes               36 bytes
//	dialer -> listener  proof      HMAC-SHA256(key, "livemig psk v1 dialer" || Nl || Nd)    32 bytes
//	listener -> dialer  verdict    1, HMAC-SHA256(key, "livemig psk v1 listener" || Nd || Nl)
//	                               or 0 (refused), 32 zero bytes             33 bytes
//
// The challenge and the offer cross (each side writes its own first); the
// listener checks the proof with hmac.Equal, answers with the verdict, and on
// a refusal closes the connection. The dialer checks the listener's proof,
// so each side knows the other holds the key. The nonces are fresh from
// crypto/rand on both sides, so a recorded exchange cannot be replayed, and
// the two directions use different labels, so a proof cannot be reflected.
//
// What it does not do: the key authenticates the two peers at the start of
// the connection only. It neither encrypts the stream nor protects it
// afterwards: an active attacker on the path can let the exchange through
// and then read, change or inject frames (the frames' CRCs catch accidents,
// not attackers). For confidentiality and integrity of the stream, combine
// the key with TLS (ListenConfig.TLS, DialConfig.TLS): the exchange then
// runs inside the TLS session.
//
// Telling failures apart on the dialer's side: a listener that refuses the
// key (a wrong key), a listener that has a key when the dialer has none, and
// one that has none when the dialer has one, are all errors wrapping ErrAuth
// that say which. A link cut or silent during the exchange is not: its error
// wraps io.EOF, io.ErrUnexpectedEOF or the net error (a timeout).

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net"

	"github.com/livemig/livemig"
)

// ErrAuth is wrapped by the errors of a failed pre-shared-key
// authentication: on the listener's side (Accept) for a dialer that did not
// prove it holds the key, naming its address; on the dialer's side (Dial,
// or the first Read of a Link dialed without a key) for a listener that
// refused the key, asks for one the dialer does not have, does not ask for
// one the dialer has, or did not prove it holds the same key.
var ErrAuth = errors.New("transport: authentication failed")

// MinPSKLen is the shortest pre-shared key Listen and Dial take: a short key
// could be found by trying keys against one recorded exchange.
const MinPSKLen = 16

const (
	pskNonceLen   = 32
	pskMACLen     = sha256.Size
	pskMsgLen     = 4 + pskNonceLen // challenge, offer, no-key notice
	pskVerdictLen = 1 + pskMACLen

	pskChallenge = "LVKC" // listener: a challenge
	pskOffer     = "LVKO" // dialer: an offer
	pskNoKey     = "LVKN" // listener without a key, to a dialer with one

	pskDialerLabel   = "livemig psk v1 dialer"
	pskListenerLabel = "livemig psk v1 listener"
)

// checkPSK refuses a key too short to be one.
func checkPSK(key []byte, where string) error {
	if key != nil && len(key) < MinPSKLen {
		return fmt.Errorf("transport: %s: pre-shared key of %d bytes, want at least %d: %w", where, len(key), MinPSKLen, ErrInvalid)
	}
	return nil
}

func pskMAC(key []byte, label string, a, b []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(label))
	m.Write(a)
	m.Write(b)
	return m.Sum(make([]byte, 0, pskMACLen))
}

// pskListen runs the listener's side of the exchange on c, whose deadline
// the caller has set. remote names the peer in errors. Every error wraps
// ErrAuth; after an error the caller closes c.
func pskListen(c net.Conn, key []byte, remote string) error {
	var out [pskMsgLen]byte
	copy(out[:], pskChallenge)
	nl := out[4:]
	if _, err := rand.Read(nl); err != nil {
		return fmt.Errorf("%w: %s: drawing a nonce: %w", ErrAuth, remote, err)
	}
	if _, err := c.Write(out[:]); err != nil {
		return fmt.Errorf("%w: %s: sending the key challenge: %w", ErrAuth, remote, err)
	}
	var in [pskMsgLen + pskMACLen]byte
	if _, err := io.ReadFull(c, in[:4]); err != nil {
		return fmt.Errorf("%w: %s sent no key offer: %w", ErrAuth, remote, err)
	}
	switch string(in[:4]) {
	case pskOffer:
	case helloMagic:
		pskRefuse(c)
		return fmt.Errorf("%w: %s sent a hello without a key (the dialer has no pre-shared key)", ErrAuth, remote)
	default:
		pskRefuse(c)
		return fmt.Errorf("%w: %s sent %q, not a key offer", ErrAuth, remote, in[:4])
	}
	if _, err := io.ReadFull(c, in[4:]); err != nil {
		return fmt.Errorf("%w: %s: reading the key offer and proof: %w", ErrAuth, remote, err)
	}
	nd, proof := in[4:pskMsgLen], in[pskMsgLen:]
	if !hmac.Equal(proof, pskMAC(key, pskDialerLabel, nl, nd)) {
		pskRefuse(c)
		return fmt.Errorf("%w: %s presented a wrong pre-shared key", ErrAuth, remote)
	}
	var v [pskVerdictLen]byte
	v[0] = 1
	copy(v[1:], pskMAC(key, pskListenerLabel, nd, nl))
	if _, err := c.Write(v[:]); err != nil {
		return fmt.Errorf("%w: %s: sending the verdict: %w", ErrAuth, remote, err)
	}
	return nil
}

// pskRefuse sends the refusal verdict, and then reads what the dialer still
// sends (up to 64 KiB, within c's deadline) until it closes: closing a
// socket with unread bytes sends a reset, which may destroy the verdict
// before the dialer reads it.
func pskRefuse(c net.Conn) {
	var v [pskVerdictLen]byte
	lastWord(c, v[:])
}

// lastWord writes msg to c, shuts c's write side and reads (up to 64 KiB)
// until the peer closes, so that a reset does not destroy msg in transit.
func lastWord(c net.Conn, msg []byte) {
	if _, err := c.Write(msg); err != nil {
		return
	}
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(c, 64<<10))
}

// pskDial runs the dialer's side of the exchange on c, whose deadline the
// caller has set. A refusal or a listener without a key wraps ErrAuth; a cut
// or silent link wraps the read's error (io.EOF, io.ErrUnexpectedEOF, a net
// error); after an error the caller closes c.
func pskDial(c net.Conn, key []byte) error {
	var out [pskMsgLen]byte
	copy(out[:], pskOffer)
	nd := out[4:]
	if _, err := rand.Read(nd); err != nil {
		return fmt.Errorf("transport: key exchange: drawing a nonce: %w", err)
	}
	if _, err := c.Write(out[:]); err != nil {
		return fmt.Errorf("transport: key exchange: sending the key offer: %w", err)
	}
	var in [pskMsgLen]byte
	if _, err := io.ReadFull(c, in[:4]); err != nil {
		return fmt.Errorf("transport: key exchange: no key challenge from the listener: %w", err)
	}
	switch string(in[:4]) {
	case pskChallenge:
	case pskNoKey, helloMagic:
		return fmt.Errorf("%w: the listener does not ask for a pre-shared key (it has none) and we have one", ErrAuth)
	default:
		return &livemig.StreamError{What: "key challenge", Err: fmt.Errorf("transport: the listener sent %q, not a key challenge: %w", in[:4], livemig.ErrCorrupt)}
	}
	if _, err := io.ReadFull(c, in[4:]); err != nil {
		return fmt.Errorf("transport: key exchange: reading the key challenge: %w", err)
	}
	nl := in[4:]
	if _, err := c.Write(pskMAC(key, pskDialerLabel, nl, nd)); err != nil {
		return fmt.Errorf("transport: key exchange: sending our proof: %w", err)
	}
	var v [pskVerdictLen]byte
	if _, err := io.ReadFull(c, v[:]); err != nil {
		return fmt.Errorf("transport: key exchange: no verdict from the listener: %w", err)
	}
	switch v[0] {
	case 0:
		return fmt.Errorf("%w: the listener refused our pre-shared key (the keys differ)", ErrAuth)
	case 1:
	default:
		return &livemig.StreamError{What: "key verdict", Err: fmt.Errorf("transport: verdict %d, want 0 or 1: %w", v[0], livemig.ErrCorrupt)}
	}
	if !hmac.Equal(v[1:], pskMAC(key, pskListenerLabel, nd, nl)) {
		return fmt.Errorf("%w: the listener accepted us but did not prove it holds our pre-shared key", ErrAuth)
	}
	return nil
}

// pskNoKeyNotice tells a dialer that offered a key that this listener has
// none, so that its Dial fails with ErrAuth instead of waiting; the caller
// then closes c.
func pskNoKeyNotice(c net.Conn) {
	var out [pskMsgLen]byte
	copy(out[:], pskNoKey)
	lastWord(c, out[:])
}
