package transport

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/livemig/livemig"
)

// AcceptConn's background. Once AcceptConn has been called, a dispatcher
// takes the connections the accept loop has set up (TLS, key) and reads
// each one's hello in its own goroutine, within HandshakeTimeout. The hello
// is read, not answered: the answer depends on the local Hello of the
// AcceptConn call that takes the connection, which runs Open on it (the
// peer's hello is already buffered, so Open does not wait for the peer). A
// single connection, or the first stream of a new multi-stream session,
// goes to l.ready for any AcceptConn call; the other streams of a session
// go to the inbox of that session, keyed by its Session id, which the
// AcceptConn call that took its first stream gathers.

// arrival is a connection whose hello has been read. It holds a pending
// slot until a caller takes it.
type arrival struct {
	link   *netLink // link.pre holds the hello
	hello  Hello
	remote string
	sess   *gathering // a session's first stream: the session to gather
}

// gathering is a multi-stream session whose first stream has arrived.
type gathering struct {
	id    [16]byte
	inbox chan *arrival // its other streams; capacity n, overflow refused
}

// serve starts the dispatcher, once, and turns Accept off.
func (l *Listener) serve() {
	l.serveOnce.Do(func() {
		close(l.serving)
		l.start()
		l.goBackground(l.dispatch)
	})
}

func (l *Listener) dispatch() {
	for {
		select {
		case a := <-l.links:
			if a.err != nil {
				<-l.slots // refused and logged by setUp
				continue
			}
			l.wg.Add(1)
			go l.readHello(a.link)
		case <-l.closed:
			return
		}
	}
}

// readHello reads the peer's hello within HandshakeTimeout and routes the
// connection; a peer that sends something else, or nothing, is refused.
func (l *Listener) readHello(link *netLink) {
	defer l.wg.Done()
	remote := link.c.RemoteAddr().String()
	ctx, cancel := context.WithTimeout(l.base, l.cfg.HandshakeTimeout)
	defer cancel()
	b := make([]byte, HelloSize)
	var h Hello
	n := 0
	err := bounded(ctx, link.c, func() error {
		if _, err := io.ReadFull(link.c, b[:4]); err != nil {
			return fmt.Errorf("transport: %s sent no hello: %w", remote, err)
		}
		switch string(b[:4]) {
		case helloMagic:
		case pskOffer:
			pskNoKeyNotice(link.c)
			return fmt.Errorf("%w: %s offered a pre-shared key and this listener has none (ListenConfig.PSK)", ErrAuth, remote)
		default:
			return fmt.Errorf("transport: %s is not a livemig peer (it sent %q): %w", remote, b[:4], livemig.ErrCorrupt)
		}
		var err error
		h, n, err = readHello(link.c, b, 4)
		switch {
		case errors.Is(err, livemig.ErrVersion):
			// Another version: Open, in AcceptConn, answers it and
			// reports the mismatch to both sides.
			return nil
		case errors.Is(err, livemig.ErrCorrupt):
			return fmt.Errorf("transport: hello from %s: %w", remote, err)
		case err != nil:
			return fmt.Errorf("transport: %s: reading its hello: %w", remote, err)
		}
		return nil
	})
	if err != nil {
		link.Close()
		<-l.slots
		l.log.Warn("transport: refused a connection", "remote", remote, "err", err)
		return
	}
	link.pre = b[:n]
	l.route(&arrival{link: link, hello: h, remote: remote})
}

// route queues a's connection for AcceptConn: a session's later stream to
// its session's inbox, anything else to l.ready. Neither blocks: l.ready
// has one place per slot, and a full inbox refuses.
func (l *Listener) route(a *arrival) {
	n := int(a.hello.Streams)
	if n <= 1 || n > MaxStreams || int(a.hello.Stream) >= n {
		l.ready <- a // AcceptConn takes it alone, or refuses its numbering
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if s := l.sessions[a.hello.Session]; s != nil {
		select {
		case s.inbox <- a:
		default:
			l.refuse(a, "more connections than the session has streams")
		}
		return
	}
	a.sess = &gathering{id: a.hello.Session, inbox: make(chan *arrival, n)}
	l.sessions[a.sess.id] = a.sess
	l.ready <- a
}

// refuse closes a connection that holds a slot, and logs why.
func (l *Listener) refuse(a *arrival, why string) {
	a.link.Close()
	<-l.slots
	l.log.Warn("transport: refused a connection: "+why, "remote", a.remote,
		"stream", a.hello.Stream, "streams", a.hello.Streams, "session", fmt.Sprintf("%x", a.hello.Session))
}

// endSession forgets s, so that a later connection with its id starts a new
// session, and refuses what its inbox still holds.
func (l *Listener) endSession(s *gathering) {
	l.mu.Lock()
	if l.sessions[s.id] == s {
		delete(l.sessions, s.id)
	}
	l.mu.Unlock()
	for {
		select {
		case a := <-s.inbox:
			l.refuse(a, "its session is over")
		default:
			return
		}
	}
}
