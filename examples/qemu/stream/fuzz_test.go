package stream_test

import (
	"bytes"
	"errors"
	"testing"

	"github.com/livemig/livemig"
	"github.com/livemig/livemig/examples/qemu/stream"
)

// FuzzReader reads arbitrary bytes as a stream. It checks that the Reader
// never panics, that every error is a *livemig.StreamError inside the
// input, that an Image applies whatever the Reader accepts (bounded to
// 64 MiB of declared RAM), and that the Writer writes every record read
// back to a stream that reads as the same records.
//
// The corpus in testdata/fuzz/FuzzReader holds streams derived from QEMU's
// (see testdata/README.md); the sample stream of the unit tests is added
// here.
func FuzzReader(f *testing.F) {
	f.Add(write(f, sample(f).recs))
	f.Fuzz(func(t *testing.T, in []byte) {
		cfg := stream.Config{MaxSection: 1 << 20, MaxVMDesc: 1 << 20, BufferSize: 8 << 10}
		recs, err := readAll(in, cfg)
		if err != nil {
			var se *livemig.StreamError
			if !errors.As(err, &se) || se.Offset < 0 || se.Offset > int64(len(in)) {
				t.Fatalf("error %v is not a StreamError inside the %d bytes", err, len(in))
			}
		}
		img, _ := stream.NewImage(nil, stream.ImageConfig{MaxBytes: 64 << 20})
		for i := range recs {
			if err := img.Apply(&recs[i]); err != nil {
				if !errors.Is(err, stream.ErrLimit) {
					t.Fatalf("Apply of record %d (%v) the Reader accepted: %v", i, recs[i].Kind, err)
				}
				break
			}
		}
		// Write what was read and read it again.
		var b bytes.Buffer
		w := stream.NewWriter(&b)
		for i := range recs {
			if err := w.Write(&recs[i]); err != nil {
				t.Fatalf("Write of record %d (%v) the Reader accepted: %v", i, recs[i].Kind, err)
			}
		}
		// An open PACKAGED sub-stream stays in the Writer: leave it out.
		if err := w.Flush(); err != nil {
			t.Fatal(err)
		}
		again, _ := readAll(b.Bytes(), cfg)
		n := len(recs)
		for i := range recs {
			if recs[i].Kind == stream.KindCommand && recs[i].Command == stream.CmdPackaged {
				// Records after an unfinished package are still in the
				// Writer; with a PackageEnd they all came out.
				if !hasPackageEnd(recs[i:]) {
					n = i
				}
				break
			}
		}
		if len(again) < n {
			t.Fatalf("rewritten stream reads as %d records, want %d", len(again), n)
		}
		for i := range n {
			if d := diffRecord(recs[i], again[i]); d != "" {
				t.Fatalf("record %d (%v) reads back different: %s", i, recs[i].Kind, d)
			}
		}
	})
}

func hasPackageEnd(recs []stream.Record) bool {
	for _, r := range recs {
		if r.Kind == stream.KindPackageEnd {
			return true
		}
	}
	return false
}

// diffRecord compares what a record means, not where it was or how it was
// encoded (offsets, the CONTINUE flag, a PACKAGED command's length).
func diffRecord(a, b stream.Record) string {
	switch {
	case a.Kind != b.Kind:
		return "kind " + b.Kind.String()
	case a.Packaged != b.Packaged:
		return "packaged"
	case a.Version != b.Version || a.Machine != b.Machine || a.PageBits != b.PageBits:
		return "header or configuration"
	case a.Type != b.Type || a.ID != b.ID || a.Name != b.Name || a.Instance != b.Instance:
		return "section"
	case a.Command != b.Command:
		return "command"
	case a.Block != b.Block || a.Addr != b.Addr || a.Page != b.Page || a.Fill != b.Fill:
		return "page"
	case len(a.Blocks) != len(b.Blocks):
		return "blocks"
	case a.Kind != stream.KindCommand || a.Command != stream.CmdPackaged:
		if !bytes.Equal(a.Data, b.Data) {
			return "data"
		}
	}
	for i := range a.Blocks {
		if a.Blocks[i] != b.Blocks[i] {
			return "block " + a.Blocks[i].Name
		}
	}
	return ""
}
