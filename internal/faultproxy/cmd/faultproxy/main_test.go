package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"reflect"
	"strings"
	"testing"

	"github.com/livemig/livemig/internal/faultproxy"
)

func TestRunUsage(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string // in the error
	}{
		{nil, "-to and -fault are required"},
		{[]string{"-to", "127.0.0.1:1"}, "-to and -fault are required"},
		{[]string{"-fault", "close"}, "-to and -fault are required"},
		{[]string{"-to", "127.0.0.1:1", "-fault", "close", "extra"}, "unexpected arguments"},
		{[]string{"-nope"}, "flag provided but not defined"},
		{[]string{"-nth", "x"}, "invalid value"},
		{[]string{"-to", "127.0.0.1:1", "-fault", "melt"}, "unknown fault"},
		{[]string{"-to", "127.0.0.1:1", "-fault", "close", "-dir", "up"}, "unknown direction"},
		{[]string{"-to", "127.0.0.1:1", "-fault", "close", "-kind", "Nope"}, "-kind: unknown frame kind"},
		{[]string{"-to", "127.0.0.1:1", "-fault", "close", "-since", "Nope"}, "-since: unknown frame kind"},
		{[]string{"-to", "127.0.0.1:1", "-fault", "close", "-since", "256"}, "-since: unknown frame kind"},
		{[]string{"-to", "127.0.0.1:1", "-fault", "flip-header", "-bit", "32"}, "bit 32"},
		{[]string{"-to", "127.0.0.1:1", "-fault", "drop", "-after"}, "After applies"},
	} {
		var stdout, stderr bytes.Buffer
		err := run(context.Background(), c.args, &stdout, &stderr)
		var u usageError
		if !errors.As(err, &u) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("run(%q) = %v; want a usage error saying %q", c.args, err, c.want)
		}
		if stdout.Len() > 0 {
			t.Errorf("run(%q) wrote %q to stdout", c.args, stdout.String())
		}
	}
	var stderr bytes.Buffer
	if err := run(context.Background(), []string{"-h"}, new(bytes.Buffer), &stderr); !errors.Is(err, flag.ErrHelp) ||
		!strings.Contains(stderr.String(), "-fault") || !strings.Contains(stderr.String(), "-since") {
		t.Errorf("-h: %v, usage %q", err, stderr.String())
	}
}

// TestRunListen: a listening error is not a usage error; a proxy that
// started (with -since too) ends with its context.
func TestRunListen(t *testing.T) {
	var u usageError
	err := run(context.Background(), []string{"-listen", "256.0.0.1:0", "-to", "127.0.0.1:1", "-fault", "close"}, new(bytes.Buffer), new(bytes.Buffer))
	if err == nil || errors.As(err, &u) {
		t.Errorf("bad -listen: %v; want a runtime error", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	var stderr bytes.Buffer
	if err := run(ctx, []string{"-to", "127.0.0.1:1", "-fault", "stall", "-kind", "commit"}, new(bytes.Buffer), &stderr); err != nil {
		t.Error(err)
	}
	if !strings.Contains(stderr.String(), "listening on 127.0.0.1:") {
		t.Errorf("stderr %q", stderr.String())
	}
	// Listen takes a rule with Since.
	if err := run(ctx, []string{"-to", "127.0.0.1:1", "-fault", "close", "-kind", "Page", "-nth", "2", "-since", "Commit"}, new(bytes.Buffer), new(bytes.Buffer)); err != nil {
		t.Errorf("-since: %v", err)
	}
}

// TestParseRule: the trigger flags make the rule's fields; -since is a
// frame flag, so -after-bytes leaves it out as it does -kind.
func TestParseRule(t *testing.T) {
	base := []string{"-to", "127.0.0.1:1", "-fault", "close"}
	for _, c := range []struct {
		args []string
		want faultproxy.Trigger // Arg aside
		arg  bool               // an Arg is set
	}{
		{nil, faultproxy.Trigger{Nth: 1}, false},
		{[]string{"-kind", "Page", "-nth", "3", "-since", "Commit"},
			faultproxy.Trigger{Kind: faultproxy.KindPage, Nth: 3, Since: faultproxy.KindCommit}, false},
		{[]string{"-since", "commit"}, faultproxy.Trigger{Nth: 1, Since: faultproxy.KindCommit}, false},
		{[]string{"-since", "any"}, faultproxy.Trigger{Nth: 1}, false},
		{[]string{"-since", "13", "-kind", "EndRound", "-arg", "2", "-after", "-dir", "d2s", "-conn", "-1"},
			faultproxy.Trigger{Conn: faultproxy.AnyConn, Dir: faultproxy.DstToSrc, Kind: faultproxy.KindEndRound, Nth: 1, After: true, Since: faultproxy.KindHeartbeat}, true},
		{[]string{"-after-bytes", "100", "-kind", "Page", "-since", "Commit"}, faultproxy.Trigger{AfterBytes: 100}, false},
	} {
		o, err := parse(append(append([]string(nil), base...), c.args...), new(bytes.Buffer))
		if err != nil {
			t.Errorf("parse(%q): %v", c.args, err)
			continue
		}
		got := o.rule.Trigger
		if (got.Arg != nil) != c.arg {
			t.Errorf("parse(%q): Arg set %v, want %v", c.args, got.Arg != nil, c.arg)
		}
		got.Arg = nil
		if !reflect.DeepEqual(got, c.want) || o.rule.Fault != faultproxy.Close { // both Args nil
			t.Errorf("parse(%q): %+v, fault %v; want %+v, close", c.args, got, o.rule.Fault, c.want)
		}
	}
}
