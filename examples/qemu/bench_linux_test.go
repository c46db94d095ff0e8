//go:build linux

package main

import (
	"io"
	"os"
	"testing"
)

// The benchmarks read the streams the tests save from QEMU (a 5-pass live
// stream of ~27 MB, mostly plain pages; a 5-pass XBZRLE stream of ~11 MB)
// from a file in the page cache. Throughput is in bytes of stream.

func benchStreams(b *testing.B, f func(b *testing.B, file string)) {
	for _, name := range []string{streamLive, streamXBZRLE} {
		st := saved(b, name)
		fi, err := os.Stat(st.file)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(name, func(b *testing.B) {
			b.SetBytes(fi.Size())
			b.ReportAllocs()
			f(b, st.file)
		})
	}
}

func open(b *testing.B, file string) *os.File {
	f, err := os.Open(file)
	if err != nil {
		b.Fatal(err)
	}
	return f
}

// BenchmarkReadFile reads the file in 256 KiB reads, as the Reader's
// buffer does: the bound for the others.
func BenchmarkReadFile(b *testing.B) {
	buf := make([]byte, 256<<10)
	benchStreams(b, func(b *testing.B, file string) {
		for b.Loop() {
			f := open(b, file)
			for {
				if _, err := f.Read(buf); err == io.EOF {
					break
				} else if err != nil {
					b.Fatal(err)
				}
			}
			f.Close()
		}
	})
}

// BenchmarkInspect is the inspect subcommand without its output: every
// record read and counted.
func BenchmarkInspect(b *testing.B) {
	benchStreams(b, func(b *testing.B, file string) {
		for b.Loop() {
			f := open(b, file)
			if _, err := inspect(f); err != nil {
				b.Fatal(err)
			}
			f.Close()
		}
	})
}

// BenchmarkImage reads the stream and applies every record to an Image
// (extract without writing the files).
func BenchmarkImage(b *testing.B) {
	benchStreams(b, func(b *testing.B, file string) {
		for b.Loop() {
			f := open(b, file)
			if _, err := readImage(f); err != nil {
				b.Fatal(err)
			}
			f.Close()
		}
	})
}

// BenchmarkExtract is the extract subcommand: the image, then every block
// to a file (64.5 MiB of files per stream).
func BenchmarkExtract(b *testing.B) {
	benchStreams(b, func(b *testing.B, file string) {
		dir := b.TempDir()
		for b.Loop() {
			f := open(b, file)
			if _, err := extract(f, dir); err != nil {
				b.Fatal(err)
			}
			f.Close()
		}
	})
}

// BenchmarkConvert is convert: a plain copy (reader and writer), and the
// stream re-encoded with XBZRLE against an image.
func BenchmarkConvert(b *testing.B) {
	for _, m := range []struct {
		name string
		mode convertMode
	}{{"copy", convertCopy}, {"xbzrle", convertXBZRLE}} {
		b.Run(m.name, func(b *testing.B) {
			benchStreams(b, func(b *testing.B, file string) {
				for b.Loop() {
					f := open(b, file)
					if _, err := convert(f, io.Discard, m.mode); err != nil {
						b.Fatal(err)
					}
					f.Close()
				}
			})
		})
	}
}
