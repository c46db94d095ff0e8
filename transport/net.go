package transport

import (
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
	// HandshakeTimeout bounds the TLS handshake of one accepted connection,
	// so a client that connects and stays silent cannot stall Accept;
	// 0 means DefaultHandshakeTimeout.
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
	// HandshakeTimeout bounds the TLS handshake when ctx has no earlier
	// deadline; 0 means DefaultHandshakeTimeout.
	HandshakeTimeout time.Duration
}

// Listener accepts migration links on a TCP port, optionally over TLS.
// Accept may be called from several goroutines; they take turns.
type Listener struct {
	ln      *net.TCPListener
	cfg     ListenConfig
	log     *slog.Logger
	turn    chan struct{} // one Accept at a time (it sets the deadline)
	closed  chan struct{}
	closeMu sync.Once
}

// Listen opens a TCP listener on addr ("host:port"; port 0 picks one).
// ctx bounds the set-up only.
func Listen(ctx context.Context, addr string, cfg ListenConfig) (*Listener, error) {
	var lc net.ListenConfig
	l, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("transport: listen: %w", err)
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = DefaultHandshakeTimeout
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	return &Listener{
		ln:     l.(*net.TCPListener),
		cfg:    cfg,
		log:    log,
		turn:   make(chan struct{}, 1),
		closed: make(chan struct{}),
	}, nil
}

// Addr returns the address the listener listens on.
func (l *Listener) Addr() net.Addr { return l.ln.Addr() }

// Close stops the listener; a blocked Accept returns an error wrapping
// livemig.ErrClosed. Links already accepted stay open.
func (l *Listener) Close() error {
	var err error
	l.closeMu.Do(func() {
		close(l.closed)
		err = l.ln.Close()
	})
	return err
}

// Accept waits for the next connection and returns it as a Link. For a TLS
// listener the handshake completes inside Accept: a client that fails it
// (no certificate, or one the listener's ClientCAs do not verify, when
// ClientAuth requires it) is disconnected and Accept returns an error
// wrapping ErrTLSHandshake; the listener goes on, and the next Accept may
// succeed. ctx cancels a blocked Accept (the error wraps ctx.Err()); after
// Close, Accept returns an error wrapping livemig.ErrClosed.
func (l *Listener) Accept(ctx context.Context) (Link, error) {
	select {
	case l.turn <- struct{}{}:
	case <-ctx.Done():
		return nil, fmt.Errorf("transport: accept: %w", ctx.Err())
	case <-l.closed:
		return nil, fmt.Errorf("transport: accept: %w", livemig.ErrClosed)
	}
	c, err := l.acceptTCP(ctx)
	<-l.turn
	if err != nil {
		return nil, err
	}
	if l.cfg.TLS == nil {
		return &netLink{c: c}, nil
	}
	tc := tls.Server(c, l.cfg.TLS)
	hctx, cancel := context.WithTimeout(ctx, l.cfg.HandshakeTimeout)
	defer cancel()
	if err := tc.HandshakeContext(hctx); err != nil {
		_ = c.Close()
		l.log.Warn("transport: refused a connection", "remote", c.RemoteAddr().String(), "err", err)
		if ctx.Err() != nil {
			return nil, fmt.Errorf("transport: accept: %w", ctx.Err())
		}
		return nil, fmt.Errorf("%w with %s: %w", ErrTLSHandshake, c.RemoteAddr(), err)
	}
	return &netLink{c: tc}, nil
}

// acceptTCP accepts one TCP connection; a done ctx interrupts it by moving
// the listener's deadline. The caller holds l.turn.
func (l *Listener) acceptTCP(ctx context.Context) (*net.TCPConn, error) {
	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		_ = l.ln.SetDeadline(time.Unix(1, 0))
		close(fired)
	})
	c, err := l.ln.AcceptTCP()
	if !stop() {
		<-fired
		_ = l.ln.SetDeadline(time.Time{})
		if err == nil {
			// ctx ended just as a connection came: take it anyway
			return l.tune(c), nil
		}
		return nil, fmt.Errorf("transport: accept: %w", ctx.Err())
	}
	if err != nil {
		select {
		case <-l.closed:
			return nil, fmt.Errorf("transport: accept: %w: %w", livemig.ErrClosed, err)
		default:
		}
		return nil, fmt.Errorf("transport: accept: %w", err)
	}
	return l.tune(c), nil
}

func (l *Listener) tune(c *net.TCPConn) *net.TCPConn {
	tuneTCP(c)
	return c
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
// TLS handshake completes inside Dial. With TLS 1.3 a listener checks the
// client's certificate after the client has finished its side, so a client
// that the listener refuses may see Dial succeed and its first Read fail.
// ctx bounds the connection set-up only.
func Dial(ctx context.Context, addr string, cfg DialConfig) (Link, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("transport: dial %s: %w", addr, err)
	}
	c := nc.(*net.TCPConn)
	tuneTCP(c)
	if cfg.TLS == nil {
		return &netLink{c: c}, nil
	}
	tcfg := cfg.TLS
	if tcfg.ServerName == "" && !tcfg.InsecureSkipVerify {
		host, _, err := net.SplitHostPort(addr)
		if err == nil {
			tcfg = tcfg.Clone()
			tcfg.ServerName = host
		}
	}
	tc := tls.Client(c, tcfg)
	timeout := cfg.HandshakeTimeout
	if timeout <= 0 {
		timeout = DefaultHandshakeTimeout
	}
	hctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := tc.HandshakeContext(hctx); err != nil {
		_ = c.Close()
		if ctx.Err() != nil {
			return nil, fmt.Errorf("transport: dial %s: %w", addr, ctx.Err())
		}
		return nil, fmt.Errorf("transport: dial %s: %w: %w", addr, ErrTLSHandshake, err)
	}
	return &netLink{c: tc}, nil
}

// netLink is a Link over a net.Conn that reports a closed connection as
// livemig.ErrClosed.
type netLink struct {
	c      net.Conn
	closed atomic.Bool
}

// NetConn is implemented by the Links that Dial and Accept return: it gives
// the underlying *net.TCPConn or *tls.Conn (for its addresses, deadlines or
// TLS state).
type NetConn interface {
	NetConn() net.Conn
}

func (l *netLink) NetConn() net.Conn { return l.c }

func (l *netLink) Read(p []byte) (int, error) {
	n, err := l.c.Read(p)
	return n, netErr(err)
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
