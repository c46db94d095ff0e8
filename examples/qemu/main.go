// Command qemu reads, extracts, rewrites and relays QEMU migration streams
// with package stream.
//
//	go run ./examples/qemu inspect [-json] FILE
//	go run ./examples/qemu extract -o DIR FILE
//	go run ./examples/qemu convert [-xbzrle|-plain|-compact] IN OUT
//	go run ./examples/qemu relay -listen ADDR -to ADDR [-xbzrle|-plain]
//	go run ./examples/qemu relay -listen ADDR -peer ADDR [-rate BYTES/S] [-xbzrle] [-lz4] [-cache BYTES]
//	go run ./examples/qemu relay -accept ADDR -to ADDR
//
// inspect prints the stream's sections with their offsets, the RAM blocks,
// the number of records of each kind and the device sections; with -json it
// prints one JSON object with the keys version, machine, ram_blocks
// ([{"name","size"}] in stream order), records (counts by lower-case kind:
// page, zero, xbzrle, ...), devices ([{"name","instance","version"}], one per
// device section; with the JSON description, the number of fields it walks
// in the section's bytes, or where they disagree), sections (in order, with
// offsets), commands and bytes.
//
// extract applies every RAM record and writes each block's final contents
// (what the destination QEMU holds after loading the stream) to
// DIR/NAME.bin, NAME being the block's id with each "/" replaced by "_"
// (pc.ram.bin, _rom@etc_acpi_tables.bin, ...). With the x-ignore-shared
// capability, a block of which the stream sends no page (shared memory,
// which the destination maps itself) is not written, and extract says so.
//
// convert rewrites a stream record by record: -plain expands XBZRLE and
// compressed pages into plain pages; -xbzrle sends every page that the
// stream sent before as an XBZRLE delta against its previous content (or
// drops it when it did not change, or keeps it plain when the delta would
// not fit in a page), as QEMU's xbzrle capability does with a cache that
// holds every page; -compact writes each page once, with its final
// contents, so that a many-pass stream shrinks to a one-pass one (it holds
// the whole RAM in memory, and refuses post-copy streams). Without a flag
// the stream is copied record by record, which reproduces it byte for
// byte. QEMU loads what convert writes.
//
// relay carries one live migration between two QEMUs: the source migrates
// to tcp:LISTEN, the destination runs with -incoming tcp:TO. The relay
// rewrites the stream record by record on the way, as convert does (-xbzrle
// re-sends pages as deltas against what the destination holds, in
// pre-copy; post-copy pages go plain, as QEMU's post-copy loader wants),
// flushing whenever it would wait for the source, and copies the return
// path (pings, post-copy page requests, the final status) back as it is.
// It prints the bytes it carried each way.
//
// With -peer or -accept the relay is two halves, one beside each QEMU,
// that carry the migration over livemig's transport (package transport:
// framed, checksummed, liveness-checked) between them. The source half
// (-listen ADDR -peer ADDR) accepts the source QEMU's migration on ADDR
// (the source migrates to tcp:ADDR), dials the destination half at -peer,
// and reads the stream record by record: each RAM page (QEMU's plain,
// zero, XBZRLE or zlib pages, expanded against what QEMU sent before)
// goes as a livemig page record through livemig's codecs (package codec:
// a zero page; with -xbzrle, from the second RAM section on, an XBZRLE
// delta against the relay's own cache of what it last sent for the page,
// or nothing when the page is unchanged; with -lz4, an LZ4 block; else the
// raw page), and everything else (header, configuration, section framing,
// device state, commands, EOF, the JSON description) goes as it is, in
// order. After a post-copy command every page goes, with no delta. -rate
// limits what it writes to the link, in bytes per second; -cache sets the
// XBZRLE cache's size (default 64 MiB, QEMU's). The destination half
// (-accept ADDR -to ADDR) accepts the source half on ADDR, dials the
// destination QEMU (its -incoming tcp:ADDR) and rebuilds a stream QEMU
// loads: each page as a PAGE or ZERO record, the rest as it came. The
// return path (pings, post-copy page requests, the final status) travels
// back over the same livemig connection. Each half carries one migration,
// prints what it carried (the source half: QEMU's stream bytes and the
// livemig link's) and exits; start the destination half first. A cut
// between the halves fails both QEMUs' migrations: the source guest runs
// on, and the destination QEMU never runs a half-received guest. Memory:
// each half holds a copy of every page sent (at most the guest's RAM, in
// 256 KiB chunks, none for pages never sent non-zero), the source half
// also its XBZRLE cache. The one-process relay (-listen -to) stays as it
// was: it needs no process beside the destination QEMU and speaks QEMU's
// own format end to end (its deltas are QEMU's XBZRLE records), where the
// halves' link speaks livemig's protocol and codecs.
//
// Either relay carries QEMU's one migration connection, not the extra
// connections of the multifd or postcopy-preempt capabilities: it keeps
// accepting on its listener, and a second connection (or a MULTIFD_FLUSH
// record in the stream) fails the migration with an error naming the
// capability, before the destination has the stream's end; the source
// QEMU's guest runs on. (QEMU 7.2 opens both kinds at the migration's
// start; QEMU 8.0+ opens the preempt channel when post-copy starts, just
// before the PACKAGED sub-stream, which the relay holds until it has
// looked at every connection accepted so far.) The destination half gives
// up on a destination QEMU that takes no stream bytes for 30 s.
//
// extract and convert -compact refuse a stream with a MULTIFD_FLUSH record:
// its pages went on multifd channels, which are not in it.
//
// extract, convert and relay hold a copy of the guest's RAM (the pages the
// stream sends); -max-ram BYTES bounds the RAM a stream may declare (16 GiB
// by default), and a larger one is an error naming the bound.
//
// FILE, IN or OUT "-" is standard input or output. A stream that breaks a
// rule of the format is an error naming the stream offset; the exit status
// is then 1.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"

	"github.com/livemig/livemig/examples/qemu/stream"
	"github.com/livemig/livemig/transport"
)

func main() {
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if errors.Is(err, stream.ErrImageLimit) {
			err = fmt.Errorf("%w (a larger guest needs -max-ram)", err)
		}
		fmt.Fprintln(os.Stderr, "qemu:", err)
		os.Exit(1)
	}
}

const usage = `usage:
  qemu inspect [-json] FILE
  qemu extract [-max-ram BYTES] -o DIR FILE
  qemu convert [-xbzrle|-plain|-compact] [-max-ram BYTES] IN OUT
  qemu relay -listen ADDR -to ADDR [-xbzrle|-plain]
  qemu relay -listen ADDR -peer ADDR [-rate BYTES/S] [-xbzrle] [-lz4] [-cache BYTES]
  qemu relay -accept ADDR -to ADDR
`

func run(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return fmt.Errorf("no subcommand")
	}
	fs := flag.NewFlagSet(args[0], flag.ContinueOnError)
	fs.SetOutput(stderr)
	switch args[0] {
	case "inspect":
		asJSON := fs.Bool("json", false, "print one JSON object")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		if fs.NArg() != 1 {
			return fmt.Errorf("inspect: want one FILE")
		}
		return withInput(fs.Arg(0), func(in io.Reader) error {
			s, err := inspect(in)
			if err != nil {
				return err
			}
			if *asJSON {
				return s.writeJSON(stdout)
			}
			return s.writeText(stdout)
		})
	case "extract":
		dir := fs.String("o", "", "output directory (created if missing)")
		maxRAM := maxRAMFlag(fs)
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		defer setMaxRAM(*maxRAM)()
		if fs.NArg() != 1 || *dir == "" {
			return fmt.Errorf("extract: want -o DIR and one FILE")
		}
		return withInput(fs.Arg(0), func(in io.Reader) error {
			names, skipped, err := extractBlocks(in, *dir)
			for _, n := range names {
				fmt.Fprintln(stdout, n)
			}
			for _, n := range skipped {
				fmt.Fprintf(stderr, "extract: %s not written: x-ignore-shared, and the stream sends none of its pages (they stay in the shared memory)\n", n)
			}
			return err
		})
	case "convert":
		toX := fs.Bool("xbzrle", false, "re-send pages as XBZRLE deltas")
		toPlain := fs.Bool("plain", false, "expand XBZRLE and compressed pages")
		toCompact := fs.Bool("compact", false, "write each page once, with its final contents")
		maxRAM := maxRAMFlag(fs)
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		defer setMaxRAM(*maxRAM)()
		mode, flags := convertCopy, 0
		for _, f := range []struct {
			set  bool
			mode convertMode
		}{{*toX, convertXBZRLE}, {*toPlain, convertPlain}, {*toCompact, convertCompact}} {
			if f.set {
				mode, flags = f.mode, flags+1
			}
		}
		if fs.NArg() != 2 || flags > 1 {
			return fmt.Errorf("convert: want [-xbzrle|-plain|-compact] IN OUT")
		}
		return withInput(fs.Arg(0), func(in io.Reader) error {
			return withOutput(fs.Arg(1), stdout, func(out io.Writer) error {
				st, err := convert(in, out, mode)
				if err == nil {
					fmt.Fprintln(stderr, st)
				}
				return err
			})
		})
	case "relay":
		return runRelay(fs, args[1:], stderr)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprint(stderr, usage)
	return fmt.Errorf("unknown subcommand %q", args[0])
}

// maxRAMFlag defines -max-ram: the most RAM a stream may declare for the
// subcommands that hold a copy of it (extract, convert, relay).
func maxRAMFlag(fs *flag.FlagSet) *int64 {
	return fs.Int64("max-ram", stream.DefaultMaxImage, "the most guest RAM (bytes) a stream may declare; a copy of what it sends is held in memory")
}

// setMaxRAM sets the bound of the images the subcommand builds and returns
// what restores it.
func setMaxRAM(n int64) func() {
	saved := imageConfig
	imageConfig.MaxBytes = n
	return func() { imageConfig = saved }
}

func withInput(name string, f func(io.Reader) error) error {
	if name == "-" {
		return f(os.Stdin)
	}
	in, err := os.Open(name)
	if err != nil {
		return err
	}
	defer in.Close()
	return f(in)
}

func withOutput(name string, stdout io.Writer, f func(io.Writer) error) error {
	if name == "-" {
		return f(stdout)
	}
	out, err := os.Create(name)
	if err != nil {
		return err
	}
	if err := f(out); err != nil {
		out.Close()
		os.Remove(name)
		return err
	}
	return out.Close()
}

func runRelay(fs *flag.FlagSet, args []string, stderr io.Writer) error {
	listen := fs.String("listen", "", "address the source QEMU migrates to (tcp:ADDR)")
	to := fs.String("to", "", "address of the destination QEMU (its -incoming tcp:ADDR)")
	peer := fs.String("peer", "", "source half: address of the destination half")
	accept := fs.String("accept", "", "destination half: address the source half dials")
	rate := fs.Float64("rate", 0, "source half: bytes per second on the link (0: no limit)")
	lz4 := fs.Bool("lz4", false, "source half: send pages as LZ4 blocks when that saves")
	cache := fs.Int64("cache", 0, "source half: XBZRLE cache bytes (0: 64 MiB)")
	toX := fs.Bool("xbzrle", false, "re-send pages as XBZRLE deltas")
	toPlain := fs.Bool("plain", false, "one process: expand XBZRLE and compressed pages")
	maxRAM := maxRAMFlag(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	defer setMaxRAM(*maxRAM)()
	ctx := context.Background()
	switch {
	case fs.NArg() != 0:
	case *peer != "" && *listen != "" && *to == "" && *accept == "" && !*toPlain && *rate >= 0 && *cache >= 0:
		ln, err := net.Listen("tcp", *listen)
		if err != nil {
			return err
		}
		defer ln.Close()
		fmt.Fprintf(stderr, "relay: source half waiting for the source QEMU on %s\n", ln.Addr())
		st, err := relaySource(ctx, ln, *peer, *rate, sourceConfig{XBZRLE: *toX, LZ4: *lz4, Cache: *cache})
		fmt.Fprintln(stderr, st)
		return err
	case *accept != "" && *to != "" && *listen == "" && *peer == "" && !*toX && !*toPlain && !*lz4 && *rate == 0 && *cache == 0:
		ln, err := transport.Listen(ctx, *accept, transport.ListenConfig{})
		if err != nil {
			return err
		}
		defer ln.Close()
		fmt.Fprintf(stderr, "relay: destination half waiting for the source half on %s\n", ln.Addr())
		st, err := relayDest(ctx, ln, *to)
		fmt.Fprintln(stderr, st)
		return err
	case *listen != "" && *to != "" && *peer == "" && *accept == "" && !(*toX && *toPlain) && !*lz4 && *rate == 0 && *cache == 0:
		mode := convertCopy
		if *toX {
			mode = convertXBZRLE
		} else if *toPlain {
			mode = convertPlain
		}
		ln, err := net.Listen("tcp", *listen)
		if err != nil {
			return err
		}
		defer ln.Close()
		fmt.Fprintf(stderr, "relay: waiting for the source on %s\n", ln.Addr())
		st, err := relayOnce(ln, *to, mode)
		fmt.Fprintln(stderr, st)
		return err
	}
	return fmt.Errorf("relay: want -listen ADDR -to ADDR [-xbzrle|-plain] (one process), " +
		"-listen ADDR -peer ADDR [-rate BYTES/S] [-xbzrle] [-lz4] [-cache BYTES] (source half) " +
		"or -accept ADDR -to ADDR (destination half)")
}
