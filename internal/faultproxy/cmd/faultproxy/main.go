// Command faultproxy stands between two processes, a migration source and
// its destination, and injects one fault into their livemig connection:
//
//	faultproxy -listen 127.0.0.1:7001 -to 127.0.0.1:7000 -fault stall -kind Commit
//
// A trigger can wait for a phase of the protocol: with -kind Page -nth 100
// -since Commit it fires at the 100th page after the Commit, in a hybrid
// migration's post-copy push.
//
// The source dials the -listen address; the proxy dials -to for each
// connection. It prints where it listens on standard error, prints one line
// on standard output when the fault fires ("fired: stall on conn 0 s2d at
// Commit frame 1 (offset 2113634)"), and runs until SIGINT or SIGTERM, which
// close every connection. It exits with status 2 on a usage error (a
// missing, unknown or bad flag), 1 on another error.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/livemig/livemig/internal/faultproxy"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err == nil || errors.Is(err, flag.ErrHelp) {
		return
	}
	msg := err.Error()
	if !strings.HasPrefix(msg, "faultproxy: ") { // package faultproxy's errors say it
		msg = "faultproxy: " + msg
	}
	fmt.Fprintln(os.Stderr, msg)
	if errors.As(err, new(usageError)) {
		os.Exit(2)
	}
	os.Exit(1)
}

// usageError is a bad command line.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

// run parses args, starts the proxy and serves until ctx ends. A bad command
// line is a usageError, -h or -help flag.ErrHelp.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	o, err := parse(args, stderr)
	if err != nil {
		return err
	}
	p, err := faultproxy.Listen(o.listen, o.to, o.rule)
	if err != nil {
		// Listen refuses a bad rule (flags that do not go together)
		// before it listens; a listening error is a *net.OpError.
		if opErr := (*net.OpError)(nil); !errors.As(err, &opErr) {
			return usageError{err}
		}
		return err
	}
	defer p.Close()
	fmt.Fprintf(stderr, "faultproxy: listening on %s, forwarding to %s\n", p.Addr(), o.to)

	select {
	case <-p.Fired():
		for _, e := range p.Events() {
			fmt.Fprintln(stdout, "fired:", e)
		}
	case <-ctx.Done():
	}
	<-ctx.Done()
	return p.Close()
}

// options is a parsed command line.
type options struct {
	listen, to string
	rule       faultproxy.Rule
}

// parse parses args, writing the usage to stderr where it is asked for or
// the command line is incomplete. A bad command line is a usageError, -h or
// -help flag.ErrHelp. The rule is not checked: Listen does that.
func parse(args []string, stderr io.Writer) (options, error) {
	fs := flag.NewFlagSet("faultproxy", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		listen     = fs.String("listen", "127.0.0.1:0", "address to listen on")
		to         = fs.String("to", "", "address to forward to (required)")
		fault      = fs.String("fault", "", "close, stall, flip-header, flip-payload, half-open or drop (required)")
		conn       = fs.Int("conn", 0, "connection watched, from 0 in the order accepted; -1 for any")
		dir        = fs.String("dir", "s2d", "direction watched: s2d (source to destination) or d2s")
		kind       = fs.String("kind", "any", "frame kind matched, by name (Page, EndRound, Commit, Ack, ...) or number")
		arg        = fs.Int64("arg", -1, "match only a control frame whose Arg is this (round, Ack code); -1: any")
		nth        = fs.Int("nth", 1, "fire at the Nth matching frame")
		after      = fs.Bool("after", false, "fire after forwarding the matched frame instead of before it")
		since      = fs.String("since", "any", "count matching frames only after the first frame of this kind in -dir (a name or number, as -kind); any: from the start")
		afterBytes = fs.Int64("after-bytes", 0, "fire once this many bytes went in -dir instead (frame flags ignored)")
		bit        = fs.Int("bit", 0, "the bit flip-header and flip-payload flip")
	)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return options{}, err
		}
		return options{}, usageError{err}
	}
	if *to == "" || *fault == "" {
		fs.Usage()
		return options{}, usageError{errors.New("-to and -fault are required")}
	}
	if fs.NArg() > 0 {
		fs.Usage()
		return options{}, usageError{fmt.Errorf("unexpected arguments %q", fs.Args())}
	}
	f, err := faultproxy.ParseFault(*fault)
	if err != nil {
		return options{}, usageError{err}
	}
	d, err := faultproxy.ParseDir(*dir)
	if err != nil {
		return options{}, usageError{err}
	}
	r := faultproxy.Rule{Trigger: faultproxy.Trigger{Conn: *conn, Dir: d, AfterBytes: *afterBytes}, Fault: f, Bit: *bit}
	if *afterBytes == 0 {
		if r.Kind, err = parseKind("kind", *kind); err != nil {
			return options{}, err
		}
		if r.Since, err = parseKind("since", *since); err != nil {
			return options{}, err
		}
		if *arg >= 0 {
			r.Arg = faultproxy.ArgIs(uint64(*arg))
		}
		r.Nth, r.After = *nth, *after
	}
	return options{listen: *listen, to: *to, rule: r}, nil
}

// parseKind parses the frame kind given to flag name; a bad one is a
// usageError that names the flag.
func parseKind(name, s string) (faultproxy.Kind, error) {
	k, err := faultproxy.ParseKind(s)
	if err != nil {
		return 0, usageError{fmt.Errorf("faultproxy: -%s: %s", name, strings.TrimPrefix(err.Error(), "faultproxy: "))}
	}
	return k, nil
}
