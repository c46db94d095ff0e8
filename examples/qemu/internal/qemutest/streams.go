//go:build linux

package qemutest

import (
	"fmt"
	"testing"
	"time"
)

// SaveOptions say what stream Save produces.
type SaveOptions struct {
	// Hardware is the source guest's machine (the zero value: the default).
	Hardware
	// Live lets the guest run (and print a few counters) before and during
	// the migration; otherwise the guest never starts (-S) and the stream
	// is small and the same from run to run.
	Live bool
	// Passes holds a live migration until QEMU has synced the dirty bitmap
	// this many times (so the stream carries about that many passes over
	// RAM), by keeping downtime-limit at 1 ms and max-bandwidth at 24 MiB/s
	// (so that the bulk pass outlasts QEMU's first 100 ms bandwidth
	// window); then lets it complete at full speed.
	Passes int
	// XBZRLE turns on QEMU's xbzrle capability: pages re-sent from the
	// third pass on go as deltas.
	XBZRLE bool
	// XBZRLECache sets xbzrle-cache-size in bytes (0: QEMU's 64 MiB).
	XBZRLECache int64
	// Capabilities are more migration capabilities to turn on at the
	// source ("multifd", "postcopy-ram", ...).
	Capabilities []string
}

// Save runs a guest and migrates it to file with "exec:cat > file". It
// returns the source VM, paused after the migration (its Log holds the
// counters the guest printed before), and QEMU's last query-migrate.
//
// A migration held for Passes passes can still complete early (QEMU ends
// a migration whose first pass took less than its first 100 ms bandwidth
// window, and one whose guest dirtied nothing between two syncs, which a
// starved TCG vCPU can do on a loaded machine): Save then tries again, three
// times in all.
func Save(t testing.TB, dir, file string, opt SaveOptions) (*VM, Migration, error) {
	for try := 1; ; try++ {
		vm, m, err := MigrateOnce(t, dir, "exec:cat > "+file, opt)
		if err != nil || !opt.Live || m.RAM.DirtySyncCount >= opt.Passes || try == 3 {
			if err == nil && opt.Live && m.RAM.DirtySyncCount < opt.Passes {
				err = fmt.Errorf("the migration completed after %d dirty syncs, %d times, want %d", m.RAM.DirtySyncCount, try, opt.Passes)
			}
			return vm, m, err
		}
		t.Logf("the migration completed after %d dirty syncs, want %d: again", m.RAM.DirtySyncCount, opt.Passes)
		vm.Stop()
	}
}

// MigrateOnce runs a guest and migrates it to uri ("exec:...",
// "tcp:ADDR") once, as Save does, returning when the source reports the
// migration completed.
func MigrateOnce(t testing.TB, dir, uri string, opt SaveOptions) (*VM, Migration, error) {
	vm, err := Start(t, dir, Options{Hardware: opt.Hardware, Paused: !opt.Live})
	if err != nil {
		return vm, Migration{}, err
	}
	if opt.Live {
		if _, _, err := vm.WaitCounter(10*time.Second, 2); err != nil {
			return vm, Migration{}, err
		}
	}
	caps := opt.Capabilities
	if opt.XBZRLE {
		caps = append([]string{"xbzrle"}, caps...)
	}
	if err := vm.SetCapabilities(caps...); err != nil {
		return vm, Migration{}, err
	}
	if opt.XBZRLECache != 0 {
		if _, err := vm.Cmd("migrate-set-parameters", map[string]any{"xbzrle-cache-size": opt.XBZRLECache}); err != nil {
			return vm, Migration{}, err
		}
	}
	hold := opt.Live && opt.Passes > 1
	if hold {
		if _, err := vm.Cmd("migrate-set-parameters", map[string]any{
			"max-bandwidth": 24 << 20, "downtime-limit": 1,
		}); err != nil {
			return vm, Migration{}, err
		}
	}
	if _, err := vm.Cmd("migrate", map[string]any{"uri": uri}); err != nil {
		return vm, Migration{}, err
	}
	if hold {
		m, err := vm.WaitMigration(30*time.Second, func(m Migration) bool {
			return m.Status == "completed" || m.RAM.DirtySyncCount >= opt.Passes
		})
		if err != nil {
			return vm, m, err
		}
		if _, err := vm.Cmd("migrate-set-parameters", map[string]any{
			"max-bandwidth": 1 << 30, "downtime-limit": 2000,
		}); err != nil {
			return vm, m, err
		}
	}
	m, err := vm.WaitMigration(30*time.Second, Completed)
	return vm, m, err
}

// Load starts a paused VM that loads file with "exec:cat file" and waits
// until the load has completed. A stream QEMU rejects makes QEMU exit: the
// error then holds QEMU's message.
func Load(t testing.TB, dir, file string) (*VM, error) {
	return LoadOn(t, dir, file, Hardware{})
}

// LoadOn is Load on a guest of the given hardware (the source's), with
// the given migration capabilities on (QEMU 7.2 loads COMPRESS_PAGE records
// only with "compress").
func LoadOn(t testing.TB, dir, file string, hw Hardware, caps ...string) (*VM, error) {
	incoming := "exec:cat " + file
	if len(caps) > 0 {
		incoming = "defer"
	}
	vm, err := Start(t, dir, Options{Hardware: hw, Paused: true, Incoming: incoming})
	if err != nil {
		return vm, err
	}
	if len(caps) > 0 {
		if err := vm.SetCapabilities(caps...); err != nil {
			return vm, err
		}
		if _, err := vm.Cmd("migrate-incoming", map[string]any{"uri": "exec:cat " + file}); err != nil {
			return vm, err
		}
	}
	if _, err := vm.WaitMigration(30*time.Second, Completed); err != nil {
		return vm, fmt.Errorf("loading %s: %w", file, err)
	}
	return vm, nil
}

// SetCapabilities turns on the named migration capabilities.
func (vm *VM) SetCapabilities(names ...string) error {
	if len(names) == 0 {
		return nil
	}
	var caps []map[string]any
	for _, n := range names {
		caps = append(caps, map[string]any{"capability": n, "state": true})
	}
	_, err := vm.Cmd("migrate-set-capabilities", map[string]any{"capabilities": caps})
	return err
}

// PostcopyResult is what Postcopy leaves: the running destination, the
// paused source, and the stream that went between them.
type PostcopyResult struct {
	Src, Dst *VM
	Stream   []byte
	// Last is the last counter the source guest printed.
	Last uint32
}

// Postcopy migrates a running guest from one QEMU to another over TCP
// through a Tee, switching to post-copy once the bulk pass is under way
// (max-bandwidth 32 MiB/s keeps pre-copy going long enough). It returns
// once both sides report completed and the connection has closed.
func Postcopy(t testing.TB, dir string) (*PostcopyResult, error) {
	var tee *Tee
	res, err := PostcopyVia(t, dir, func(to string) (string, error) {
		var err error
		tee, err = NewTee(t, to)
		if err != nil {
			return "", err
		}
		return tee.Addr(), nil
	})
	if err != nil {
		return res, err
	}
	res.Stream, err = tee.Wait(10 * time.Second)
	return res, err
}

// PostcopyVia is Postcopy with the connection going through what via
// starts: given the destination's address, it returns the address the
// source migrates to. Result.Stream is left empty.
func PostcopyVia(t testing.TB, dir string, via func(to string) (string, error)) (*PostcopyResult, error) {
	res := &PostcopyResult{}
	addr, err := FreePort()
	if err != nil {
		return res, err
	}
	caps := map[string]any{"capabilities": []map[string]any{{"capability": "postcopy-ram", "state": true}}}
	if res.Dst, err = Start(t, dir, Options{Incoming: "defer"}); err != nil {
		return res, err
	}
	if _, err := res.Dst.Cmd("migrate-set-capabilities", caps); err != nil {
		return res, err
	}
	if _, err := res.Dst.Cmd("migrate-incoming", map[string]any{"uri": "tcp:" + addr}); err != nil {
		return res, err
	}
	srcAddr, err := via(addr)
	if err != nil {
		return res, err
	}
	if res.Src, err = Start(t, dir, Options{}); err != nil {
		return res, err
	}
	if _, _, err := res.Src.WaitCounter(10*time.Second, 2); err != nil {
		return res, err
	}
	if _, err := res.Src.Cmd("migrate-set-capabilities", caps); err != nil {
		return res, err
	}
	if _, err := res.Src.Cmd("migrate-set-parameters", map[string]any{"max-bandwidth": 32 << 20}); err != nil {
		return res, err
	}
	if _, err := res.Src.Cmd("migrate", map[string]any{"uri": "tcp:" + srcAddr}); err != nil {
		return res, err
	}
	if _, err := res.Src.WaitMigration(20*time.Second, func(m Migration) bool {
		return m.Status == "active" && m.RAM.Transferred > 1<<20
	}); err != nil {
		return res, err
	}
	if _, err := res.Src.Cmd("migrate-start-postcopy", nil); err != nil {
		return res, err
	}
	if _, err := res.Src.WaitMigration(30*time.Second, Completed); err != nil {
		return res, err
	}
	if _, counters := res.Src.Log(); len(counters) > 0 {
		res.Last = counters[len(counters)-1]
	}
	if _, err := res.Dst.WaitMigration(30*time.Second, Completed); err != nil {
		return res, fmt.Errorf("destination: %w", err)
	}
	return res, nil
}
