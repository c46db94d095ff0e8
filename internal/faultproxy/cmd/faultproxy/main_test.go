package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"strings"
	"testing"
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
		{[]string{"-to", "127.0.0.1:1", "-fault", "close", "-kind", "Nope"}, "unknown frame kind"},
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
		!strings.Contains(stderr.String(), "-fault") {
		t.Errorf("-h: %v, usage %q", err, stderr.String())
	}
}

// TestRunListen: a listening error is not a usage error; a proxy that
// started ends with its context.
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
}
