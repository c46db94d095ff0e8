package transport

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/livemig/livemig"
)

// DefaultHandshakeTimeout is ListenConfig.HandshakeTimeout's and
// DialConfig.HandshakeTimeout's default.
const DefaultHandshakeTimeout = 10 * time.Second

// ErrTLSHandshake is wrapped by the error Accept or Dial returns when the
// TLS handshake fails, for instance because a listener that requires client
// certificates met a client without a valid one.
var ErrTLSHandshake = errors.New("transport: TLS handshake failed")

// ListenConfig configures Listen. Its zero value listens for plain TCP.
type ListenConfig struct {
	// TLS, if not nil, makes the listener speak TLS with this configuration
	// (it needs Certificates or GetCertificate). To accept only sources
	// holding a certificate from a given CA, set ClientAuth to
	// tls.RequireAndVerifyClientCert and ClientCAs to that CA.
	TLS *tls.Config
	// PSK, if not nil, is a pre-shared key (at least MinPSKLen bytes; 32
	// bytes from crypto/rand is a good choice) that every dialer must prove
	// it holds, and that the listener proves it holds in return, by a
	// challenge-response over HMAC-SHA256 with fresh nonces on both sides
	// (see psk.go), after the TLS handshake if TLS is set. A dialer without
	// the key, or with another, is refused: Accept returns an error wrapping
	// ErrAuth that names its address, the dialer's Dial fails with an error
	// wrapping ErrAuth that says the key was refused, and the listener goes
	// on. The key authenticates the peers only: it neither encrypts the
	// stream nor protects it from an active attacker on the path after the
	// exchange. Combine it with TLS for confidentiality and integrity.
	// Listen keeps a copy.
	PSK []byte
	// HandshakeTimeout bounds each step of setting up one accepted
	// connection (the TLS handshake and the key exchange together; then,
	// for AcceptConn, the wait for the peer's hello), so a client that
	// connects and stays silent cannot hold a pending slot longer; 0 means
	// DefaultHandshakeTimeout.
	HandshakeTimeout time.Duration
	// StreamWait bounds how long AcceptConn waits for the other
	// connections of a multi-stream session once the first has arrived;
	// 0 means DefaultStreamWait.
	StreamWait time.Duration
	// Logger receives one line per refused connection; nil means
	// slog.Default().
	Logger *slog.Logger
}

// DialConfig configures Dial. Its zero value dials plain TCP.
type DialConfig struct {
	// TLS, if not nil, makes Dial speak TLS with this configuration; give
	// it ServerName (or it is taken from the address) and RootCAs, and, for
	// a listener that requires them, Certificates.
	TLS *tls.Config
	// PSK, if not nil, is the pre-shared key (at least MinPSKLen bytes) to
	// prove to a listener whose ListenConfig.PSK is the same key; Dial
	// checks in turn that the listener holds it. Dial then fails with an
	// error wrapping ErrAuth if the listener refuses the key or has none;
	// a link cut during the exchange is an error wrapping io.EOF,
	// io.ErrUnexpectedEOF or a net error instead. Without PSK, a Link
	// dialed to a listener that requires a key fails its first Read with
	// an error wrapping ErrAuth. The key authenticates the peers only: it
	// neither encrypts the stream nor protects it from an active attacker
	// on the path after the exchange; combine it with TLS for that. Over
	// TLS the exchange is not bound to the TLS session: a dialer that does
	// not verify the listener's certificate (InsecureSkipVerify) can be
	// relayed by a man in the middle who does not know the key.
	PSK []byte
	// HandshakeTimeout bounds the TLS handshake and the key exchange
	// together when ctx has no earlier deadline; 0 means
	// DefaultHandshakeTimeout.
	HandshakeTimeout time.Duration
}

// maxPending is the most accepted connections a Listener holds that no
// caller has taken yet: in their TLS handshake, key exchange or hello, or
// ready and waiting for Accept or AcceptConn. While it holds that many it
// accepts no more (they wait in the kernel's backlog).
const maxPending = 64

// Listener accepts migration links on a TCP port, optionally over TLS and
// with a pre-shared key.
//
// Once Accept or AcceptConn has been called, the Listener accepts
// connections in the background and sets each one up in its own goroutine
// (TLS handshake, key exchange and, for AcceptConn, reading the peer's
// hello), each step bounded by ListenConfig.HandshakeTimeout, at most 64
// pending at once. Accept and AcceptConn return connections in the order
// they complete, so a silent or slow client does not delay the others.
//
// Accept and AcceptConn may each be called from several goroutines at once.
// A Listener serves one of them: once AcceptConn has been called, Accept
// returns an error wrapping ErrInvalid, a blocked Accept too (a connection
// ready at that very moment may still go to it: do not mix them). Close
// stops every background
// goroutine and closes the connections no caller has taken.
type Listener struct {
	ln  *net.TCPListener
	cfg ListenConfig
	log *slog.Logger

	base      context.Context // cancelled by Close: bounds every background step
	cancel    context.CancelFunc
	closed    chan struct{}
	closeOnce sync.Once
	startOnce sync.Once      // the accept loop
	serveOnce sync.Once      // AcceptConn's dispatcher
	serving   chan struct{}  // closed when AcceptConn is first called
	bgMu      sync.Mutex     // orders starting the background against Close
	stopped   bool           // under bgMu: Close has begun, start nothing
	wg        sync.WaitGroup // the background goroutines

	slots chan struct{} // one token per pending connection
	links chan accepted // set up (TLS, key) or refused; each holds a slot

	// AcceptConn's state; see serve.go.
	ready    chan *arrival // hello read: a single connection, or a session's first
	mu       sync.Mutex
	sessions map[[16]byte]*gathering // multi-stream sessions being gathered
}

// accepted is a connection set up by the background, or the error that
// refused it.
type accepted struct {
	link *netLink
	err  error
}

// Listen opens a TCP listener on addr ("host:port"; port 0 picks one).
// ctx bounds the set-up only. A PSK shorter than MinPSKLen is an error
// wrapping ErrInvalid.
func Listen(ctx context.Context, addr string, cfg ListenConfig) (*Listener, error) {
	if err := checkPSK(cfg.PSK, "listen on "+addr); err != nil {
		return nil, err
	}
	cfg.PSK = bytes.Clone(cfg.PSK)
	var lc net.ListenConfig
	l, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("transport: listen: %w", err)
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if cfg.StreamWait <= 0 {
		cfg.StreamWait = DefaultStreamWait
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	base, cancel := context.WithCancel(context.Background())
	return &Listener{
		ln:       l.(*net.TCPListener),
		cfg:      cfg,
		log:      log,
		base:     base,
		cancel:   cancel,
		closed:   make(chan struct{}),
		serving:  make(chan struct{}),
		slots:    make(chan struct{}, maxPending),
		links:    make(chan accepted, maxPending),
		ready:    make(chan *arrival, maxPending),
		sessions: make(map[[16]byte]*gathering),
	}, nil
}

// Addr returns the address the listener listens on.
func (l *Listener) Addr() net.Addr { return l.ln.Addr() }

// Close stops the listener and every goroutine it runs, and closes the
// connections no caller has taken yet; it returns once they have stopped.
// A blocked Accept or AcceptConn returns an error wrapping
// livemig.ErrClosed. Links and Conns already returned stay open.
func (l *Listener) Close() error {
	var err error
	l.closeOnce.Do(func() {
		l.bgMu.Lock()
		l.stopped = true // no goroutine starts after this: wg.Wait is final
		l.bgMu.Unlock()
		close(l.closed)
		l.cancel()
		err = l.ln.Close()
		l.wg.Wait()
		l.drain()
	})
	return err
}

// drain closes what the stopped background left for callers.
func (l *Listener) drain() {
	for {
		select {
		case a := <-l.links:
			if a.link != nil {
				a.link.Close()
			}
		case a := <-l.ready:
			a.link.Close()
			if a.sess != nil {
				l.endSession(a.sess)
			}
		default:
			l.mu.Lock()
			ss := l.sessions
			l.sessions = map[[16]byte]*gathering{}
			l.mu.Unlock()
			for _, s := range ss {
				l.endSession(s)
			}
			return
		}
	}
}

// start starts the accept loop, once.
func (l *Listener) start() {
	l.startOnce.Do(func() { l.goBackground(l.acceptLoop) })
}

// goBackground runs f as a background goroutine unless Close has begun.
func (l *Listener) goBackground(f func()) {
	l.bgMu.Lock()
	defer l.bgMu.Unlock()
	if l.stopped {
		return
	}
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		f()
	}()
}

// acceptLoop accepts connections while fewer than maxPending are pending,
// and sets each up in its own goroutine.
func (l *Listener) acceptLoop() {
	backoff := 5 * time.Millisecond
	for {
		select {
		case l.slots <- struct{}{}:
		case <-l.closed:
			return
		}
		c, err := l.ln.AcceptTCP()
		if err != nil {
			<-l.slots
			select {
			case <-l.closed:
				return
			default:
			}
			// Out of file descriptors, say: wait and retry.
			l.log.Warn("transport: accept failed", "addr", l.Addr().String(), "err", err, "retry", backoff)
			t := time.NewTimer(backoff)
			select {
			case <-t.C:
			case <-l.closed:
				t.Stop()
				return
			}
			backoff = min(2*backoff, time.Second)
			continue
		}
		backoff = 5 * time.Millisecond
		tuneTCP(c)
		l.wg.Add(1)
		go l.setUp(c)
	}
}

// setUp runs the TLS handshake and the key exchange on a new connection,
// within HandshakeTimeout, and queues the result for Accept (or
// AcceptConn's dispatcher). The connection keeps its slot.
func (l *Listener) setUp(c *net.TCPConn) {
	defer l.wg.Done()
	link, err := l.secure(c)
	if err != nil {
		_ = c.Close()
		l.log.Warn("transport: refused a connection", "remote", c.RemoteAddr().String(), "err", err)
	}
	l.links <- accepted{link: link, err: err} // never blocks: one buffer place per slot
}

func (l *Listener) secure(c *net.TCPConn) (*netLink, error) {
	remote := c.RemoteAddr().String()
	ctx, cancel := context.WithTimeout(l.base, l.cfg.HandshakeTimeout)
	defer cancel()
	var conn net.Conn = c
	if l.cfg.TLS != nil {
		tc := tls.Server(c, l.cfg.TLS)
		if err := tc.HandshakeContext(ctx); err != nil {
			return nil, fmt.Errorf("%w with %s: %w", ErrTLSHandshake, remote, err)
		}
		conn = tc
	}
	if l.cfg.PSK != nil {
		err := bounded(ctx, conn, func() error { return pskListen(conn, l.cfg.PSK, remote) })
		if err != nil {
			return nil, err
		}
	}
	return &netLink{c: conn}, nil
}

// bounded runs fn with c's deadline at ctx's deadline, interrupts it when
// ctx ends, and clears the deadline after.
func bounded(ctx context.Context, c net.Conn, fn func() error) error {
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		_ = c.SetDeadline(time.Unix(1, 0))
		close(fired)
	})
	err := fn()
	if !stop() {
		<-fired
	}
	_ = c.SetDeadline(time.Time{})
	return err
}

// Accept returns the next connection, as a Link, once it is set up: for a
// TLS listener the handshake has completed, and with a PSK the dialer has
// proved it holds the key. A client refused in its set-up (no valid
// certificate when ClientAuth requires one: an error wrapping
// ErrTLSHandshake; no key or a wrong one: ErrAuth; silent past
// HandshakeTimeout) is disconnected and logged, and Accept returns its
// error, which names the client's address; the listener goes on, and the
// next Accept may succeed. Connections are set up concurrently and come out
// in the order they finish, so a client silent in its TLS or key exchange
// does not delay the next one. A plain TCP connection needs no set-up and
// comes out at once, silent or not; AcceptConn, which reads the hello in
// the background too, keeps silent clients from its callers.
//
// ctx cancels a blocked Accept (the error wraps ctx.Err()) but not the
// set-up of the connections in progress, which the next Accept returns;
// after Close, Accept returns an error wrapping livemig.ErrClosed. Once
// AcceptConn has been called on the listener, Accept returns an error
// wrapping ErrInvalid.
func (l *Listener) Accept(ctx context.Context) (Link, error) {
	errServing := fmt.Errorf("transport: accept: the listener serves AcceptConn: %w", ErrInvalid)
	select {
	case <-l.serving:
		return nil, errServing
	default:
	}
	if err := l.check(ctx); err != nil {
		return nil, err
	}
	l.start()
	select {
	case <-l.serving:
		return nil, errServing
	case a := <-l.links:
		<-l.slots
		if a.err != nil {
			return nil, a.err // it names the client
		}
		return a.link, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("transport: accept: %w", ctx.Err())
	case <-l.closed:
		return nil, fmt.Errorf("transport: accept: %w", livemig.ErrClosed)
	}
}

// check returns the error of an Accept called after Close or with a done ctx.
func (l *Listener) check(ctx context.Context) error {
	select {
	case <-l.closed:
		return fmt.Errorf("transport: accept: %w", livemig.ErrClosed)
	default:
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("transport: accept: %w", err)
	}
	return nil
}

// tuneTCP sets the socket options of a migration connection. Frames are
// written whole (batches of pages), so Nagle's algorithm would only delay
// the last segment of a control message: TCP_NODELAY stays on (Go's
// default). Measured on loopback (BenchmarkTCPLoopback, BenchmarkConnTCP),
// neither Nagle nor fixed 4 MiB socket buffers changed throughput beyond the
// noise, so the buffers are left to the kernel's autotuning.
func tuneTCP(c *net.TCPConn) {
	_ = c.SetNoDelay(true)
	_ = c.SetKeepAlive(true)
}

// Dial connects to a Listener at addr and returns the Link. With cfg.TLS the
// TLS handshake completes inside Dial, and with cfg.PSK the key exchange
// after it (see DialConfig.PSK for its errors). With TLS 1.3 a listener
// checks the client's certificate after the client has finished its side, so
// a client that the listener refuses may see Dial succeed (if it has no key)
// and its first Read fail. ctx bounds the connection set-up only. A PSK
// shorter than MinPSKLen is an error wrapping ErrInvalid.
func Dial(ctx context.Context, addr string, cfg DialConfig) (Link, error) {
	if err := checkPSK(cfg.PSK, "dial "+addr); err != nil {
		return nil, err
	}
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("transport: dial %s: %w", addr, err)
	}
	c := nc.(*net.TCPConn)
	tuneTCP(c)
	timeout := cfg.HandshakeTimeout
	if timeout <= 0 {
		timeout = DefaultHandshakeTimeout
	}
	hctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var conn net.Conn = c
	if cfg.TLS != nil {
		tcfg := cfg.TLS
		if tcfg.ServerName == "" && !tcfg.InsecureSkipVerify {
			host, _, err := net.SplitHostPort(addr)
			if err == nil {
				tcfg = tcfg.Clone()
				tcfg.ServerName = host
			}
		}
		tc := tls.Client(c, tcfg)
		if err := tc.HandshakeContext(hctx); err != nil {
			_ = c.Close()
			if ctx.Err() != nil {
				return nil, fmt.Errorf("transport: dial %s: %w", addr, ctx.Err())
			}
			return nil, fmt.Errorf("transport: dial %s: %w: %w", addr, ErrTLSHandshake, err)
		}
		conn = tc
	}
	if cfg.PSK == nil {
		return &netLink{c: conn, sniff: true}, nil
	}
	if err := bounded(hctx, conn, func() error { return pskDial(conn, cfg.PSK) }); err != nil {
		_ = conn.Close()
		if ctx.Err() != nil {
			return nil, fmt.Errorf("transport: dial %s: %w", addr, ctx.Err())
		}
		return nil, fmt.Errorf("transport: dial %s: %w", addr, err)
	}
	return &netLink{c: conn}, nil
}

// netLink is a Link over a net.Conn that reports a closed connection as
// livemig.ErrClosed.
type netLink struct {
	c      net.Conn
	closed atomic.Bool

	// The read side's, under the Link's one-reader rule:
	pre     []byte // bytes already read from c (a peeked hello), read first
	preErr  error  // the error that ended pre, returned after it
	sniff   bool   // dialed without a key: check the first bytes for a key challenge
	authErr error  // the listener asked for a key: every Read fails
}

// NetConn is implemented by the Links that Dial and Accept return: it gives
// the underlying *net.TCPConn or *tls.Conn (for its addresses, deadlines or
// TLS state).
type NetConn interface {
	NetConn() net.Conn
}

func (l *netLink) NetConn() net.Conn { return l.c }

func (l *netLink) Read(p []byte) (int, error) {
	if l.sniff {
		l.sniff = false
		l.sniffChallenge()
	}
	if l.authErr != nil {
		return 0, l.authErr
	}
	if len(l.pre) > 0 {
		n := copy(p, l.pre)
		l.pre = l.pre[n:]
		return n, nil
	}
	if l.preErr != nil {
		err := l.preErr
		l.preErr = nil
		return 0, netErr(err)
	}
	n, err := l.c.Read(p)
	return n, netErr(err)
}

// sniffChallenge reads the first bytes of a link dialed without a key: if
// they are a key challenge, the listener requires a key and every Read
// fails with ErrAuth; otherwise they are kept for Read. It reads only while
// the bytes could still be a challenge's magic.
func (l *netLink) sniffChallenge() {
	var b [len(pskChallenge)]byte
	n := 0
	for n < len(b) {
		k, err := l.c.Read(b[n:])
		n += k
		if string(b[:n]) != pskChallenge[:n] || err != nil {
			// Not a challenge, or an error Read returns after the bytes.
			l.pre, l.preErr = append([]byte(nil), b[:n]...), err
			return
		}
	}
	l.authErr = fmt.Errorf("%w: the listener at %s requires a pre-shared key and we have none (DialConfig.PSK)", ErrAuth, l.c.RemoteAddr())
}

func (l *netLink) Write(p []byte) (int, error) {
	n, err := l.c.Write(p)
	return n, netErr(err)
}

// CloseWrite shuts the write side (TCP FIN, or a TLS close_notify).
func (l *netLink) CloseWrite() error {
	if cw, ok := l.c.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return fmt.Errorf("transport: CloseWrite: %w", livemig.ErrNotSupported)
}

// Close closes the connection; later calls return nil.
func (l *netLink) Close() error {
	if l.closed.Swap(true) {
		return nil
	}
	return netErr(l.c.Close())
}

func netErr(err error) error {
	if err == nil || err == io.EOF {
		return err
	}
	if errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("transport: %w: %w", livemig.ErrClosed, err)
	}
	return err
}
