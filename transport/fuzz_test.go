package transport

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/livemig/livemig"
)

var update = flag.Bool("update", false, "rewrite the fuzz seed corpora in testdata/fuzz")

// fuzzCfg is the configuration the fuzz targets decode with: small pages and
// bounds, so that the fuzzer reaches every rule with short inputs.
var fuzzCfg = Config{PageSize: 64, PageCount: 1000, MaxFrame: 512, MaxState: 4096}

// Expected outcomes of a seed.
const (
	outEOF        = "eof"        // decodes to the end, then io.EOF
	outCorrupt    = "corrupt"    // an error wrapping livemig.ErrCorrupt
	outUnexpected = "unexpected" // io.ErrUnexpectedEOF
	outOK         = "ok"         // the handshake succeeds
	outVersion    = "version"    // an error wrapping livemig.ErrVersion
)

type seed struct {
	name, out string
	data      []byte
	msgs      int // messages decoded before the outcome (FuzzRecv)
}

func recvSeeds(t testing.TB) []seed {
	all := []Msg{
		{Kind: kindPage, Enc: EncRaw, Page: 1, Data: seq(64, 1)},
		{Kind: kindPage, Enc: EncZero, Page: 2},
		{Kind: kindPage, Enc: EncXBZRLE, Page: 3, Data: seq(10, 2)},
		{Kind: kindPage, Enc: EncLZ4, Page: 999, Data: seq(70, 3)},
		{Kind: kindEndRound, Arg: 1},
		{Kind: kindState, Page: 4, Arg: 5, Data: seq(1200, 9)}, // three frames
		{Kind: kindSwitchover, Arg: 2},
		{Kind: kindDone, Arg: 77},
		{Kind: kindCommit},
		{Kind: kindError, Data: []byte("boom")},
		{Kind: kindRequest, Page: 90, Arg: 10},
		{Kind: kindAck, Arg: ackReady, Page: 42},
		{Kind: kindDiscard, Page: 64, Data: appendWords(nil, []uint64{1, 1 << 63})},
		{Kind: kindRecvBitmap, Page: 0, Data: appendWords(nil, []uint64{^uint64(0)})},
		{Kind: kindResume, Page: 0xfeed},
	}
	valid := encode(t, fuzzCfg, all...)
	var batch []Msg
	for i := range 40 {
		m := Msg{Kind: kindPage, Page: uint64(i * 7 % 1000), Enc: Encoding(i % 4)}
		switch m.Enc {
		case EncRaw:
			m.Data = seq(64, byte(i))
		case EncXBZRLE, EncLZ4:
			m.Data = seq(i*3, byte(i))
		}
		batch = append(batch, m)
	}
	batchStream := encode(t, Config{PageSize: 64, BatchBytes: 500}, batch...)
	flip := bytes.Clone(batchStream)
	flip[100] ^= 0x08
	hostile := bytes.Clone(batchStream)
	hostile[3] = 0x7f
	badEnc := frame(kindPage, 0, 1, record(5, 9, nil))
	stateCut := cat(frame(kindState, frameFlagMore, 0, control(0, 0, seq(10, 0))), frame(kindDone, 0, 0, control(0, 0, nil)))
	return []seed{
		{"valid-all-kinds", outEOF, valid, len(all)},
		{"valid-batches", outEOF, batchStream, len(batch)},
		{"valid-empty", outEOF, nil, 0},
		{"corrupt-crc", outCorrupt, flip, 0},
		{"corrupt-length", outCorrupt, hostile, 0},
		{"corrupt-encoding", outCorrupt, badEnc, 0},
		{"corrupt-state-cut", outCorrupt, stateCut, 0},
		{"corrupt-page-range", outCorrupt, frame(kindPage, 0, 1, record(1000, EncZero, nil)), 0},
		{"corrupt-bitmap-words", outCorrupt, frame(kindDiscard, 0, 0, control(0, 0, seq(12, 0))), 0},
		{"cut-mid-frame", outUnexpected, valid[:len(valid)-3], len(all) - 1},
		{"cut-mid-state", outUnexpected, valid[:400], 5},
	}
}

func helloSeeds() []seed {
	local := Hello{PageSize: 4096, PageCount: 2000, Features: FeatXBZRLE | FeatDigest}
	v1 := local
	v1.Version = 1 // the previous protocol: no frame header CRC
	ps := local
	ps.PageSize = 8192
	badCRC := AppendHello(nil, local)
	badCRC[20] ^= 1
	badCRCv1 := AppendHello(nil, v1)
	badCRCv1[20] ^= 1
	return []seed{
		{name: "ok", out: outOK, data: AppendHello(nil, Hello{PageSize: 4096, PageCount: 2000, Features: FeatLZ4, Streams: 2, Stream: 1})},
		{name: "version-1", out: outVersion, data: AppendHello(nil, v1)},
		{name: "version-1-bad-crc", out: outVersion, data: badCRCv1},
		{name: "version-page-size", out: outVersion, data: AppendHello(nil, ps)},
		{name: "corrupt-crc", out: outCorrupt, data: badCRC},
		{name: "corrupt-http", out: outCorrupt, data: []byte("GET / HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n\r\n")},
		{name: "cut-short", out: outUnexpected, data: AppendHello(nil, local)[:10]},
	}
}

var fuzzLocal = Hello{PageSize: 4096, PageCount: 2000, Features: FeatXBZRLE | FeatDigest}

// checkOutcome says whether err is the outcome out names.
func checkOutcome(out string, err error) bool {
	switch out {
	case outEOF:
		return err == io.EOF
	case outCorrupt:
		return errors.Is(err, livemig.ErrCorrupt)
	case outUnexpected:
		return errors.Is(err, io.ErrUnexpectedEOF)
	case outOK:
		return err == nil
	case outVersion:
		return errors.Is(err, livemig.ErrVersion)
	}
	return false
}

func corpusFile(data []byte) []byte {
	return fmt.Appendf(nil, "go test fuzz v1\n[]byte(%s)\n", strconv.Quote(string(data)))
}

// TestFuzzCorpus checks that each seed file of the fuzz targets holds the
// stream it is meant to and that it decodes as intended; -update rewrites
// the files.
func TestFuzzCorpus(t *testing.T) {
	for target, seeds := range map[string][]seed{"FuzzRecv": recvSeeds(t), "FuzzHandshake": helloSeeds()} {
		dir := filepath.Join("testdata", "fuzz", target)
		for _, s := range seeds {
			path := filepath.Join(dir, s.name)
			if *update {
				if err := os.MkdirAll(dir, 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, corpusFile(s.data), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			got, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run go test -run TestFuzzCorpus -update)", err)
			}
			if !bytes.Equal(got, corpusFile(s.data)) {
				t.Errorf("%s: the file differs from the generated seed (the wire format changed? run with -update)", path)
			}
			var n int
			if target == "FuzzRecv" {
				var msgs []Msg
				msgs, err = decode(s.data, fuzzCfg)
				n = len(msgs)
			} else {
				_, err = Handshake(bg, &bufLink{r: bytes.NewReader(s.data)}, fuzzLocal)
			}
			if !checkOutcome(s.out, err) || n != s.msgs {
				t.Errorf("%s: %d messages and %v, want %d and outcome %q", path, n, err, s.msgs, s.out)
			}
		}
	}
}

func FuzzRecv(f *testing.F) {
	for _, s := range recvSeeds(f) {
		f.Add(s.data)
	}
	f.Fuzz(func(t *testing.T, stream []byte) {
		c := NewConn(&bufLink{r: bytes.NewReader(stream)}, fuzzCfg).(*conn)
		var msgs []Msg
		for {
			var m Msg
			err := c.Recv(bg, &m)
			if cap(c.rbuf) > c.rbufSize(c.maxFrame) || cap(c.state) > c.maxState {
				t.Fatalf("buffers grew to %d and %d bytes", cap(c.rbuf), cap(c.state))
			}
			if err != nil {
				if err != io.EOF && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, livemig.ErrCorrupt) {
					t.Fatalf("Recv: unexpected error %v", err)
				}
				if errors.Is(err, livemig.ErrCorrupt) {
					var se *livemig.StreamError
					if !errors.As(err, &se) || se.Offset < 0 || se.Offset > int64(len(stream)) {
						t.Fatalf("corrupt data error without a valid location: %v", err)
					}
				}
				break
			}
			switch {
			case m.Kind.Class() == ClassNone || m.Kind.Class() == ClassHeartbeat:
				t.Fatalf("Recv returned kind %d", m.Kind)
			case m.Kind == kindPage && checkRecord(m.Enc, len(m.Data), c.pageSize) != "":
				t.Fatalf("Recv returned a bad page record: encoding %d, %d bytes", m.Enc, len(m.Data))
			case m.Kind == kindPage && m.Page >= c.pageCount:
				t.Fatalf("Recv returned page %d of %d", m.Page, c.pageCount)
			case len(m.Data) > c.maxState:
				t.Fatalf("Recv returned %d bytes", len(m.Data))
			case m.HaveCRC != (m.Kind.Class() == ClassRecords && m.Enc == EncRaw) ||
				(m.HaveCRC && m.DataCRC != crc32.Checksum(m.Data, castagnoli)):
				t.Fatalf("Recv returned CRC %#08x (given %v) for a %v record, encoding %d", m.DataCRC, m.HaveCRC, m.Kind, m.Enc)
			}
			m.Data = bytes.Clone(m.Data)
			msgs = append(msgs, m)
		}
		// What was decoded encodes and decodes to the same messages.
		again, err := decode(encode(t, fuzzCfg, msgs...), fuzzCfg)
		if err != io.EOF || len(again) != len(msgs) {
			t.Fatalf("re-encoded %d messages decode to %d and %v", len(msgs), len(again), err)
		}
		for i := range msgs {
			a, b := msgs[i], again[i]
			if a.Kind != b.Kind || a.Enc != b.Enc || a.Page != b.Page || a.Arg != b.Arg || !bytes.Equal(a.Data, b.Data) {
				t.Fatalf("message %d changed in a re-encoding", i)
			}
		}
	})
}

func FuzzHandshake(f *testing.F) {
	for _, s := range helloSeeds() {
		f.Add(s.data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		l := &bufLink{r: bytes.NewReader(data)}
		peer, err := Handshake(bg, l, fuzzLocal)
		if err != nil {
			if !checkOutcome(outCorrupt, err) && !checkOutcome(outVersion, err) &&
				!errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
				t.Fatalf("Handshake: unexpected error %v", err)
			}
			if errors.Is(err, livemig.ErrVersion) && !strings.Contains(err.Error(), "peer") {
				t.Fatalf("a refusal that does not say why: %v", err)
			}
			return
		}
		if !bytes.Equal(AppendHello(nil, peer), data[:HelloSize]) {
			t.Fatalf("accepted hello %+v does not re-encode to its bytes", peer)
		}
		if peer.PageSize != fuzzLocal.PageSize || peer.PageCount != fuzzLocal.PageCount || peer.Version != ProtocolVersion {
			t.Fatalf("accepted an incompatible peer %+v", peer)
		}
		if !bytes.Equal(l.w.Bytes(), AppendHello(nil, fuzzLocal)) {
			t.Fatalf("sent %x, want our hello", l.w.Bytes())
		}
	})
}
