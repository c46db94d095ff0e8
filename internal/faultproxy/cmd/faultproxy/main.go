// Command faultproxy stands between two processes, a migration source and
// its destination, and injects one fault into their livemig connection:
//
//	faultproxy -listen 127.0.0.1:7001 -to 127.0.0.1:7000 -fault stall -kind Commit
//
// The source dials the -listen address; the proxy dials -to for each
// connection. It prints where it listens on standard error, prints one line
// on standard output when the fault fires ("fired: stall on conn 0 s2d at
// Commit frame 1 (offset 2113634)"), and runs until SIGINT or SIGTERM, which
// close every connection.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/livemig/livemig/internal/faultproxy"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "faultproxy:", err)
		os.Exit(2)
	}
}

func run() error {
	var (
		listen     = flag.String("listen", "127.0.0.1:0", "address to listen on")
		to         = flag.String("to", "", "address to forward to (required)")
		fault      = flag.String("fault", "", "close, stall, flip-header, flip-payload, half-open or drop (required)")
		conn       = flag.Int("conn", 0, "connection watched, from 0 in the order accepted; -1 for any")
		dir        = flag.String("dir", "s2d", "direction watched: s2d (source to destination) or d2s")
		kind       = flag.String("kind", "any", "frame kind matched, by name (Page, EndRound, Commit, Ack, ...) or number")
		arg        = flag.Int64("arg", -1, "match only a control frame whose Arg is this (round, Ack code); -1: any")
		nth        = flag.Int("nth", 1, "fire at the Nth matching frame")
		after      = flag.Bool("after", false, "fire after forwarding the matched frame instead of before it")
		afterBytes = flag.Int64("after-bytes", 0, "fire once this many bytes went in -dir instead (frame flags ignored)")
		bit        = flag.Int("bit", 0, "the bit flip-header and flip-payload flip")
	)
	flag.Parse()
	if *to == "" || *fault == "" || flag.NArg() > 0 {
		flag.Usage()
		return fmt.Errorf("-to and -fault are required")
	}
	f, err := faultproxy.ParseFault(*fault)
	if err != nil {
		return err
	}
	d, err := faultproxy.ParseDir(*dir)
	if err != nil {
		return err
	}
	r := faultproxy.Rule{Trigger: faultproxy.Trigger{Conn: *conn, Dir: d, AfterBytes: *afterBytes}, Fault: f, Bit: *bit}
	if *afterBytes == 0 {
		if r.Kind, err = faultproxy.ParseKind(*kind); err != nil {
			return err
		}
		if *arg >= 0 {
			r.Arg = faultproxy.ArgIs(uint64(*arg))
		}
		r.Nth, r.After = *nth, *after
	}
	p, err := faultproxy.Listen(*listen, *to, r)
	if err != nil {
		return err
	}
	defer p.Close()
	fmt.Fprintf(os.Stderr, "faultproxy: listening on %s, forwarding to %s\n", p.Addr(), *to)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	select {
	case <-p.Fired():
		for _, e := range p.Events() {
			fmt.Println("fired:", e)
		}
	case <-ctx.Done():
	}
	<-ctx.Done()
	return p.Close()
}
