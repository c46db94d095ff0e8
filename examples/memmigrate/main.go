// Command memmigrate migrates real memory, written by running goroutines,
// between two processes with livemig's pre-copy engine.
//
// Start the destination, then the source, with the same -size:
//
//	go run ./examples/memmigrate -listen 127.0.0.1:4444 -size 1024
//	go run ./examples/memmigrate -connect 127.0.0.1:4444 -size 1024 -writers 2 -rate 20000
//
// The source maps a region of -size MiB, starts -writers goroutines that
// write counters into random pages at -rate pages/s in all, migrates the
// region while they run, and prints progress on stderr and the migration's
// report as JSON on stdout. The destination prints what it received. The
// exit status is 0 when the migration completed and the destination resumed
// the guest, 1 when it failed: the source's writers then keep running and
// the destination did not resume.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"math"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"time"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/precopy"
	"github.com/livemig/livemig/region"
	"github.com/livemig/livemig/transport"
)

type options struct {
	listen, connect  string
	sizeMiB          int
	writers          int
	rate             float64
	downtime         time.Duration
	maxRounds        int
	policy           string
	cert, key, ca    string
	timeout          time.Duration
	verbose, noCheck bool
}

func main() {
	var o options
	flag.StringVar(&o.listen, "listen", "", "run the destination, listening on `ADDR`")
	flag.StringVar(&o.connect, "connect", "", "run the source, connecting to `ADDR`")
	flag.IntVar(&o.sizeMiB, "size", 64, "guest memory in MiB (the same on both sides)")
	flag.IntVar(&o.writers, "writers", 2, "goroutines writing the source's memory")
	flag.Float64Var(&o.rate, "rate", 20000, "pages per second the writers write, in all (0: as fast as they can)")
	flag.DurationVar(&o.downtime, "downtime", 300*time.Millisecond, "downtime target")
	flag.IntVar(&o.maxRounds, "max-rounds", 30, "round limit")
	flag.StringVar(&o.policy, "policy", "stop", "when pre-copy does not converge: stop (stop-and-copy anyway), abort, throttle")
	flag.StringVar(&o.cert, "tls-cert", "", "TLS certificate `file` (PEM); with -tls-key and -tls-ca, TLS with client certificates")
	flag.StringVar(&o.key, "tls-key", "", "TLS key `file` (PEM)")
	flag.StringVar(&o.ca, "tls-ca", "", "CA `file` (PEM) that signs the peer's certificate")
	flag.DurationVar(&o.timeout, "timeout", 10*time.Minute, "give up after this long")
	flag.BoolVar(&o.verbose, "v", false, "log the engine's decisions on stderr")
	flag.Parse()
	if (o.listen == "") == (o.connect == "") {
		fmt.Fprintln(os.Stderr, "memmigrate: give exactly one of -listen and -connect")
		flag.Usage()
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()

	var err error
	if o.listen != "" {
		err = destination(ctx, o)
	} else {
		err = source(ctx, o)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "memmigrate:", err)
		os.Exit(1)
	}
}

func logger(o options) *slog.Logger {
	if !o.verbose {
		return nil
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func tlsConfig(o options, server bool) (*tls.Config, error) {
	if o.cert == "" && o.key == "" && o.ca == "" {
		return nil, nil
	}
	if o.cert == "" || o.key == "" || o.ca == "" {
		return nil, errors.New("TLS needs -tls-cert, -tls-key and -tls-ca")
	}
	cert, err := tls.LoadX509KeyPair(o.cert, o.key)
	if err != nil {
		return nil, err
	}
	pem, err := os.ReadFile(o.ca)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("no certificate in %s", o.ca)
	}
	c := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13}
	if server {
		c.ClientCAs, c.ClientAuth = pool, tls.RequireAndVerifyClientCert
	} else {
		c.RootCAs = pool
	}
	return c, nil
}

func geometry(o options) (uint64, error) {
	if o.sizeMiB <= 0 {
		return 0, fmt.Errorf("-size %d: must be positive", o.sizeMiB)
	}
	return uint64(o.sizeMiB) << 20 / livemig.DefaultPageSize, nil
}

func destination(ctx context.Context, o options) error {
	pages, err := geometry(o)
	if err != nil {
		return err
	}
	mem, err := region.New(livemig.DefaultPageSize, pages)
	if err != nil {
		return err
	}
	defer mem.Close()
	tc, err := tlsConfig(o, true)
	if err != nil {
		return err
	}
	l, err := transport.Listen(ctx, o.listen, transport.ListenConfig{TLS: tc, Logger: logger(o)})
	if err != nil {
		return err
	}
	defer l.Close()
	fmt.Fprintf(os.Stderr, "destination: listening on %s for a %d MiB guest\n", l.Addr(), o.sizeMiB)
	link, err := l.Accept(ctx)
	if err != nil {
		return err
	}
	conn, _, err := transport.Open(ctx, link, transport.Hello{PageSize: livemig.DefaultPageSize, PageCount: pages, Features: transport.FeatDigest}, transport.Config{})
	if err != nil {
		link.Close()
		return err
	}
	start := time.Now()
	rep, err := precopy.Receive(ctx, conn, precopy.Destination{Sink: mem, VM: mem, Pages: pages, PageSize: livemig.DefaultPageSize},
		precopy.Config{Logger: logger(o)})
	if rep != nil {
		out, _ := json.Marshal(rep)
		fmt.Println(string(out))
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "destination: guest resumed after %v (%d pages, %d rounds, verified %v, state %q)\n",
		time.Since(start).Round(time.Millisecond), rep.PagesReceived, rep.Rounds, rep.Verified, mem.State())
	return nil
}

// guest is the source: a region plus the goroutines that write it, which a
// throttle slows down.
type guest struct {
	*region.Region
	throttle atomic.Uint64 // math.Float64bits
}

func (g *guest) SetThrottle(f float64) { g.throttle.Store(math.Float64bits(f)) }

func (g *guest) run(ctx context.Context, id, writers int, rate float64) {
	x := uint64(id)*0x9E3779B97F4A7C15 + 1
	var counter uint64
	var buf [8]byte
	per := rate / float64(writers)
	start := time.Now()
	pages := g.PageCount()
	for done := 0; ctx.Err() == nil; {
		if per > 0 {
			// Write in 1 ms slices at the paced rate, slowed by the throttle.
			th := math.Float64frombits(g.throttle.Load())
			due := int(per * (1 - th) * time.Since(start).Seconds())
			if done >= due {
				time.Sleep(time.Millisecond)
				if th != math.Float64frombits(g.throttle.Load()) {
					start, done = time.Now(), 0
				}
				continue
			}
		}
		x ^= x << 13
		x ^= x >> 7
		x ^= x << 17
		counter++
		binary.LittleEndian.PutUint64(buf[:], counter)
		off := int(x>>32) % (livemig.DefaultPageSize / 8) * 8
		_ = g.Write(x%pages, off, buf[:])
		done++
	}
}

func source(ctx context.Context, o options) error {
	pages, err := geometry(o)
	if err != nil {
		return err
	}
	mem, err := region.New(livemig.DefaultPageSize, pages)
	if err != nil {
		return err
	}
	defer mem.Close()
	g := &guest{Region: mem}
	// Fill the guest with something other than zeros, as a booted guest is.
	b := mem.Bytes()
	for i := 0; i+8 <= len(b); i += 64 {
		binary.LittleEndian.PutUint64(b[i:], uint64(i)*0x9E3779B97F4A7C15)
	}
	mem.SetState([]byte(fmt.Sprintf("memmigrate guest, %d MiB, %d writers", o.sizeMiB, o.writers)))

	wctx, stopWriters := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for i := 0; i < o.writers; i++ {
		wg.Add(1)
		go func(i int) { defer wg.Done(); g.run(wctx, i, o.writers, o.rate) }(i)
	}
	defer func() { stopWriters(); _ = mem.Resume(context.Background()); wg.Wait() }()

	tc, err := tlsConfig(o, false)
	if err != nil {
		return err
	}
	link, err := transport.Dial(ctx, o.connect, transport.DialConfig{TLS: tc})
	if err != nil {
		return err
	}
	conn, _, err := transport.Open(ctx, link, transport.Hello{PageSize: livemig.DefaultPageSize, PageCount: pages, Features: transport.FeatDigest}, transport.Config{})
	if err != nil {
		link.Close()
		return err
	}
	policy := map[string]precopy.NonConvergence{"stop": precopy.StopAndCopy, "abort": precopy.Abort, "throttle": precopy.Throttle}
	pol, ok := policy[o.policy]
	if !ok {
		conn.Close()
		return fmt.Errorf("-policy %q: want stop, abort or throttle", o.policy)
	}
	cfg := precopy.Config{
		DowntimeTarget: o.downtime, MaxRounds: o.maxRounds, OnNonConvergence: pol, Logger: logger(o),
		OnEvent: func(e precopy.Event) {
			switch e.Kind {
			case precopy.RoundEnded, precopy.Stopping, precopy.Throttled:
				fmt.Fprintf(os.Stderr, "source: %-12s round %2d  %8d pages left  %s sent  %v elapsed  expected downtime %v  throttle %.0f%%\n",
					e.Kind, e.Round, e.DirtyPages, livemig.FormatBytes(e.BytesSent), e.Elapsed.Round(time.Millisecond),
					e.ExpectedDowntime.Round(time.Microsecond), 100*e.Throttle)
			}
		},
	}
	fmt.Fprintf(os.Stderr, "source: migrating %d MiB to %s with %d writers at %.0f pages/s\n", o.sizeMiB, o.connect, o.writers, o.rate)
	rep, err := precopy.Migrate(ctx, conn, precopy.Source{Memory: g, Dirty: g, VM: g}, cfg)
	if rep != nil {
		out, _ := json.MarshalIndent(rep, "", "  ")
		fmt.Println(string(out))
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "source: migration failed; the guest keeps running here (paused: %v, %d writes so far)\n", mem.Paused(), mem.Writes())
		return err
	}
	fmt.Fprintf(os.Stderr, "source: done: total %v, downtime %v, %s sent, %d rounds, verified %v; %d guest writes during the migration\n",
		rep.TotalTime.Round(time.Millisecond), rep.Downtime.Round(time.Microsecond), livemig.FormatBytes(rep.BytesSent),
		len(rep.Rounds), rep.Verified, mem.Writes())
	return nil
}
