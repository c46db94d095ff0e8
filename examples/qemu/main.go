// Command qemu reads, extracts, rewrites and relays QEMU migration streams
// with package stream.
//
//	go run ./examples/qemu inspect [-json] FILE
//	go run ./examples/qemu extract -o DIR FILE
//	go run ./examples/qemu convert [-xbzrle|-plain|-compact] IN OUT
//	go run ./examples/qemu relay -listen ADDR -to ADDR [-xbzrle|-plain]
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
// (pc.ram.bin, _rom@etc_acpi_tables.bin, ...).
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
// FILE, IN or OUT "-" is standard input or output. A stream that breaks a
// rule of the format is an error naming the stream offset; the exit status
// is then 1.
package main

import (
	"flag"
	"fmt"
	"io"
	"net"
	"os"
)

func main() {
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "qemu:", err)
		os.Exit(1)
	}
}

const usage = `usage:
  qemu inspect [-json] FILE
  qemu extract -o DIR FILE
  qemu convert [-xbzrle|-plain|-compact] IN OUT
  qemu relay -listen ADDR -to ADDR [-xbzrle|-plain]
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
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		if fs.NArg() != 1 || *dir == "" {
			return fmt.Errorf("extract: want -o DIR and one FILE")
		}
		return withInput(fs.Arg(0), func(in io.Reader) error {
			names, err := extract(in, *dir)
			for _, n := range names {
				fmt.Fprintln(stdout, n)
			}
			return err
		})
	case "convert":
		toX := fs.Bool("xbzrle", false, "re-send pages as XBZRLE deltas")
		toPlain := fs.Bool("plain", false, "expand XBZRLE and compressed pages")
		toCompact := fs.Bool("compact", false, "write each page once, with its final contents")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
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
		listen := fs.String("listen", "", "address the source QEMU migrates to (tcp:ADDR)")
		to := fs.String("to", "", "address of the destination QEMU (its -incoming tcp:ADDR)")
		toX := fs.Bool("xbzrle", false, "re-send pages as XBZRLE deltas (pre-copy)")
		toPlain := fs.Bool("plain", false, "expand XBZRLE and compressed pages")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		if *listen == "" || *to == "" || fs.NArg() != 0 || (*toX && *toPlain) {
			return fmt.Errorf("relay: want -listen ADDR -to ADDR [-xbzrle|-plain]")
		}
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
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprint(stderr, usage)
	return fmt.Errorf("unknown subcommand %q", args[0])
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
