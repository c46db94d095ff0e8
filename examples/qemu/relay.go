package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"sync"

	"github.com/livemig/livemig/examples/qemu/stream"
)

// relayStats is what a relay carried.
type relayStats struct {
	convertStats
	ReturnPath int64 // bytes from the destination back to the source
}

func (s relayStats) String() string {
	return fmt.Sprintf("relay: stream %d -> %d bytes (%.1f%%); page records %d -> %d (deltas %d of %d bytes, dropped %d unchanged, %d overflows, expanded %d); return path %d bytes",
		s.In, s.Out, 100*float64(s.Out)/float64(max(s.In, 1)), s.PagesIn, s.PagesOut, s.Deltas, s.DeltaBytes, s.Dropped, s.Overflows, s.Expanded, s.ReturnPath)
}

// relayOnce carries one migration: it accepts the source QEMU on ln (one
// connection: a second, which multifd or post-copy's preempt channel would
// open, refuses the migration with an error wrapping
// livemig.ErrNotSupported that names the capability), dials
// the destination QEMU at to, rewrites the stream record by record (mode:
// copy, -plain or -xbzrle, as convert does; in post-copy, pages go plain)
// and copies the return path back byte for byte. It returns when both
// sides have closed the connection, or at the first error, closing both
// (the destination then fails the load, and the source its migration).
func relayOnce(ln net.Listener, to string, mode convertMode) (relayStats, error) {
	var st relayStats
	ch := acceptChannels(ln)
	defer ch.close()
	src, err := ch.accept()
	if err != nil {
		return st, err
	}
	defer src.Close()
	dst, err := net.Dial("tcp", to)
	if err != nil {
		return st, err
	}
	defer dst.Close()
	ch.closeOnRefusal(dst)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		st.ReturnPath, _ = io.Copy(src, dst)
		closeWrite(src) // src is the channel watcher's wrapper: no *net.TCPConn
	}()
	r := stream.NewReader(src, stream.Config{})
	cw := &countWriter{w: dst}
	w := stream.NewWriter(cw)
	c := newRecoder(mode)
	err = func() error {
		for {
			if r.Buffered() == 0 {
				// Next may wait for the source: let the destination have
				// everything so far (it may have to answer first).
				if err := w.Flush(); err != nil {
					return err
				}
			}
			rec, err := r.Next()
			if err == io.EOF {
				return w.Flush()
			}
			if err != nil {
				return err
			}
			if err := ch.note(&rec); err != nil {
				return err
			}
			o, err := c.recode(&rec)
			if err != nil {
				return err
			}
			if o != nil {
				if err := w.Write(o); err != nil {
					return err
				}
			}
		}
	}()
	if err == nil {
		// Whatever follows the stream's end goes as it is.
		_, err = io.Copy(cw, src)
		closeWrite(dst)
	}
	if err != nil {
		src.Close()
		dst.Close()
	}
	wg.Wait()
	st.convertStats = c.st
	st.In, st.Out = r.Offset(), cw.n
	if err != nil {
		if rerr := ch.settle(); rerr != nil && !errors.Is(err, rerr) {
			// A second channel refused the migration and closed the
			// source's connection under the reader, or the destination
			// QEMU hung up on a command only that capability explains:
			// say why first.
			return st, errors.Join(rerr, err)
		}
	}
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	return st, err
}
