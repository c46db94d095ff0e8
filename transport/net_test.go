package transport_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"log/slog"
	"math/big"
	"net"
	"testing"
	"time"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/transport"
)

// ltPKI is a test certificate authority with a server and a client
// certificate it signed.
type ltPKI struct {
	caPool *x509.CertPool
	server tls.Certificate
	client tls.Certificate
}

var ltSerial int64

// ltNewPKI makes an ECDSA P-256 CA, a server certificate for 127.0.0.1 and
// "localhost", and a client certificate. ECDSA keys come from crypto/rand:
// the certificates differ per run, the tests' outcomes do not.
func ltNewPKI(t testing.TB) *ltPKI {
	t.Helper()
	caKey, caCert := ltCert(t, "livemig test CA", nil, nil, true)
	pool := x509.NewCertPool()
	pool.AddCert(caCert)
	return &ltPKI{
		caPool: pool,
		server: ltLeaf(t, "server", caCert, caKey, x509.ExtKeyUsageServerAuth),
		client: ltLeaf(t, "client", caCert, caKey, x509.ExtKeyUsageClientAuth),
	}
}

func ltCert(t testing.TB, cn string, parent *x509.Certificate, parentKey *ecdsa.PrivateKey, isCA bool, usage ...x509.ExtKeyUsage) (*ecdsa.PrivateKey, *x509.Certificate) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ltSerial++
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(ltSerial),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		BasicConstraintsValid: true,
		IsCA:                  isCA,
		ExtKeyUsage:           usage,
	}
	if isCA {
		tmpl.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature
	} else {
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature
		tmpl.DNSNames = []string{"localhost"}
		tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
	}
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return key, c
}

func ltLeaf(t testing.TB, cn string, ca *x509.Certificate, caKey *ecdsa.PrivateKey, usage x509.ExtKeyUsage) tls.Certificate {
	key, c := ltCert(t, cn, ca, caKey, false, usage)
	return tls.Certificate{Certificate: [][]byte{c.Raw}, PrivateKey: key, Leaf: c}
}

// serverTLS requires client certificates signed by the CA.
func (p *ltPKI) serverTLS() *tls.Config {
	return &tls.Config{
		Certificates: []tls.Certificate{p.server},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    p.caPool,
		MinVersion:   tls.VersionTLS13,
	}
}

// clientTLS trusts the CA and presents certs (none if empty).
func (p *ltPKI) clientTLS(certs ...tls.Certificate) *tls.Config {
	return &tls.Config{RootCAs: p.caPool, Certificates: certs, MinVersion: tls.VersionTLS13}
}

func ltQuietLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

func ltListen(t testing.TB, cfg transport.ListenConfig) *transport.Listener {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = ltQuietLogger()
	}
	ln, err := transport.Listen(context.Background(), "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// ltNetPair returns the dialing and the accepted end of one connection.
func ltNetPair(t testing.TB, lc transport.ListenConfig, dc transport.DialConfig) (transport.Link, transport.Link) {
	t.Helper()
	ln := ltListen(t, lc)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	type res struct {
		l   transport.Link
		err error
	}
	acc := make(chan res, 1)
	go func() {
		l, err := ln.Accept(ctx)
		acc <- res{l, err}
	}()
	a, err := transport.Dial(ctx, ln.Addr().String(), dc)
	if err != nil {
		t.Fatal(err)
	}
	r := <-acc
	if r.err != nil {
		a.Close()
		t.Fatal(r.err)
	}
	return a, r.l
}

func TestTLSClientCertAccepted(t *testing.T) {
	pki := ltNewPKI(t)
	a, b := ltNetPair(t, transport.ListenConfig{TLS: pki.serverTLS()}, transport.DialConfig{TLS: pki.clientTLS(pki.client)})
	defer a.Close()
	defer b.Close()
	nc, ok := b.(transport.NetConn)
	if !ok {
		t.Fatalf("%T is not a transport.NetConn", b)
	}
	st := nc.NetConn().(*tls.Conn).ConnectionState()
	if len(st.PeerCertificates) == 0 || st.PeerCertificates[0].Subject.CommonName != "client" {
		t.Fatalf("server saw peer certificates %v", st.PeerCertificates)
	}
	if _, err := a.Write([]byte("page")); err != nil {
		t.Fatal(err)
	}
	p := make([]byte, 4)
	if _, err := io.ReadFull(b, p); err != nil || string(p) != "page" {
		t.Fatalf("got %q, %v", p, err)
	}
}

// ltRefused dials a listener requiring client certificates with client
// config cc, expects Accept to refuse it, and then checks that the listener
// still accepts a good client.
func ltRefused(t *testing.T, pki *ltPKI, cc *tls.Config) {
	ln := ltListen(t, transport.ListenConfig{TLS: pki.serverTLS()})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	acc := make(chan error, 1)
	go func() {
		l, err := ln.Accept(ctx)
		if err == nil {
			l.Close()
		}
		acc <- err
	}()
	l, dialErr := transport.Dial(ctx, ln.Addr().String(), transport.DialConfig{TLS: cc})
	if err := <-acc; !errors.Is(err, transport.ErrTLSHandshake) {
		t.Fatalf("Accept of a client without a valid certificate: %v, want ErrTLSHandshake", err)
	}
	if dialErr == nil {
		// TLS 1.3: the client finished first; its first Read must fail.
		defer l.Close()
		_, _ = l.Write([]byte("stolen page"))
		if n, err := l.Read(make([]byte, 1)); err == nil {
			t.Fatalf("refused client read %d bytes", n)
		}
	} else if !errors.Is(dialErr, transport.ErrTLSHandshake) {
		t.Fatalf("Dial error %v does not wrap ErrTLSHandshake", dialErr)
	}
	// The listener goes on: a good client is accepted.
	go func() {
		l, err := ln.Accept(ctx)
		if err == nil {
			l.Close()
		}
		acc <- err
	}()
	good, err := transport.Dial(ctx, ln.Addr().String(), transport.DialConfig{TLS: pki.clientTLS(pki.client)})
	if err != nil {
		t.Fatal(err)
	}
	good.Close()
	if err := <-acc; err != nil {
		t.Fatalf("Accept after a refusal: %v", err)
	}
}

func TestTLSClientWithoutCertRefused(t *testing.T) {
	pki := ltNewPKI(t)
	ltRefused(t, pki, pki.clientTLS())
}

func TestTLSClientFromOtherCARefused(t *testing.T) {
	pki := ltNewPKI(t)
	other := ltNewPKI(t)
	// Trusts the right server, presents a certificate the server's CA did
	// not sign.
	ltRefused(t, pki, pki.clientTLS(other.client))
}

func TestTLSWrongServerRefusedByClient(t *testing.T) {
	pki := ltNewPKI(t)
	other := ltNewPKI(t)
	ln := ltListen(t, transport.ListenConfig{TLS: other.serverTLS()})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	go func() {
		if l, err := ln.Accept(ctx); err == nil {
			l.Close()
		}
	}()
	_, err := transport.Dial(ctx, ln.Addr().String(), transport.DialConfig{TLS: pki.clientTLS(pki.client)})
	if !errors.Is(err, transport.ErrTLSHandshake) {
		t.Fatalf("Dial to a server of another CA: %v, want ErrTLSHandshake", err)
	}
}

func TestAcceptContextCancel(t *testing.T) {
	ln := ltListen(t, transport.ListenConfig{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		_, err := ln.Accept(ctx)
		done <- err
	}()
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Accept after cancel: %v, want context.Canceled", err)
	}
	// The listener still works after a cancelled Accept.
	a, b := func() (transport.Link, transport.Link) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		acc := make(chan transport.Link, 1)
		go func() {
			l, err := ln.Accept(ctx)
			if err != nil {
				t.Error(err)
			}
			acc <- l
		}()
		a, err := transport.Dial(ctx, ln.Addr().String(), transport.DialConfig{})
		if err != nil {
			t.Fatal(err)
		}
		return a, <-acc
	}()
	if b == nil {
		t.FailNow()
	}
	a.Close()
	b.Close()
}

func TestAcceptAfterClose(t *testing.T) {
	ln := ltListen(t, transport.ListenConfig{})
	done := make(chan error, 1)
	go func() {
		_, err := ln.Accept(context.Background())
		done <- err
	}()
	ln.Close()
	if err := <-done; !errors.Is(err, livemig.ErrClosed) {
		t.Fatalf("Accept on a closed listener: %v, want ErrClosed", err)
	}
}
