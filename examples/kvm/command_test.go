package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/examples/internal/outcome"
	"github.com/livemig/livemig/internal/kvm"
)

// TestMain runs the command itself when a test starts this test binary as
// the command (envMain), on the stand-in vCPU if envStandIn says so.
func TestMain(m *testing.M) {
	if os.Getenv(envMain) == "1" {
		if os.Getenv(envStandIn) == "1" {
			newHardware, probeHardware = standIn, func() error { return nil }
		}
		main()
		return
	}
	os.Exit(m.Run())
}

const (
	envMain    = "LIVEMIG_KVM_EXAMPLE_MAIN"
	envStandIn = "LIVEMIG_KVM_EXAMPLE_STANDIN"
)

// command starts this test binary as the command with args.
func command(ctx context.Context, standIn bool, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, os.Args[0], args...)
	cmd.Env = append(os.Environ(), envMain+"=1")
	if standIn {
		cmd.Env = append(cmd.Env, envStandIn+"=1")
	}
	return cmd
}

// The command migrates the guest between two processes: the destination
// and the source exit 0, and their last lines are JSON saying the guest
// runs on at the destination with its checksum intact.
func TestCommand(t *testing.T) {
	for _, c := range []struct{ mode, log string }{{"precopy", "manual"}, {"postcopy", "ring"}} {
		t.Run(c.mode, func(t *testing.T) {
			if c.mode != "precopy" && !uffdUsable(t) {
				return
			}
			_, kerr := kvm.Open()
			standIn := kerr != nil
			if standIn {
				t.Logf("no KVM here (%v): the command runs on the Go stand-in vCPU", kerr)
			}
			runCommand(t, standIn, c.mode, c.log)
		})
	}
}

func runCommand(t *testing.T, standIn bool, mode, log string) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	common := []string{"-mode", mode, "-mem", "2", "-json", "-liveness", "2s", "-timeout", "1m"}
	dst := command(ctx, standIn, append([]string{"-listen", "127.0.0.1:0"}, common...)...)
	var dstOut bytes.Buffer
	dst.Stdout = &dstOut
	stderr, err := dst.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := dst.Start(); err != nil {
		t.Fatal(err)
	}
	// The destination says where it listens on its first stderr line;
	// the rest of its stderr is kept for the failure message.
	sc := bufio.NewScanner(stderr)
	if !sc.Scan() {
		t.Fatalf("the destination said nothing: %v", dst.Wait())
	}
	addr, ok := listenAddr(sc.Text())
	if !ok {
		t.Fatalf("destination: %q", sc.Text())
	}
	var dstErr bytes.Buffer
	drained := make(chan struct{})
	go func() {
		for sc.Scan() {
			dstErr.WriteString(sc.Text() + "\n")
		}
		close(drained)
	}()
	src := command(ctx, standIn, append([]string{"-connect", addr, "-dirty-log", log, "-rate", "500"}, common...)...)
	var srcOut, srcErr bytes.Buffer
	src.Stdout, src.Stderr = &srcOut, &srcErr
	serr := src.Run()
	<-drained
	derr := dst.Wait()
	if serr != nil || derr != nil {
		t.Fatalf("source: %v\n%s\ndestination: %v\n%s", serr, srcErr.String(), derr, dstErr.String())
	}
	var res destResult
	if err := json.Unmarshal(lastLineOf(dstOut.Bytes()), &res); err != nil {
		t.Fatalf("destination's stdout: %v: %q", err, dstOut.String())
	}
	if !res.Resumed || !res.ChecksumOK || res.CounterAfter <= res.CounterAtPause || res.BytesSent == 0 {
		t.Errorf("destination: %+v", res)
	}
	var rep livemig.Report
	if err := json.Unmarshal(lastLineOf(srcOut.Bytes()), &rep); err != nil || rep.BytesSent == 0 {
		t.Errorf("source's stdout: %v: %q", err, srcOut.String())
	}
	if !strings.Contains(srcErr.String(), outcome.SrcPrefix+outcome.SrcDone) || !strings.Contains(dstErr.String(), outcome.DestPrefix+outcome.DstResumed) {
		t.Errorf("last lines:\n%s\n%s", srcErr.String(), dstErr.String())
	}
	t.Logf("destination: %s", lastLineOf(dstOut.Bytes()))
}

// listenAddr finds the address in the destination's "listening on ADDR"
// line.
func listenAddr(line string) (string, bool) {
	_, rest, ok := strings.Cut(line, "listening on ")
	if !ok {
		return "", false
	}
	addr, _, _ := strings.Cut(rest, " ")
	return addr, addr != ""
}

func lastLineOf(b []byte) []byte {
	lines := bytes.Split(bytes.TrimSpace(b), []byte("\n"))
	return lines[len(lines)-1]
}
