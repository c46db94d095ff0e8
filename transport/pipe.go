package transport

import (
	"fmt"
	"io"
	"sync"

	"github.com/livemig/livemig"
)

// DefaultPipeSize is the ring buffer size of each direction of a Pipe when
// Pipe is given a size <= 0.
const DefaultPipeSize = 1 << 20

var (
	errPipeClosed     = fmt.Errorf("transport: pipe: %w", livemig.ErrClosed)
	errPipePeerClosed = fmt.Errorf("transport: pipe: peer closed: %w", livemig.ErrClosed)
	errPipeWriteShut  = fmt.Errorf("transport: pipe: write side shut down: %w", livemig.ErrClosed)
)

// Pipe returns the two ends of an in-memory, full-duplex byte stream. Each
// direction has a ring buffer of size bytes (DefaultPipeSize if size <= 0):
// Write copies into it and blocks while it is full, Read copies out of it and
// blocks while it is empty. No goroutine runs behind a pipe.
//
// Each end is a Link and also has CloseWrite, like a *net.TCPConn: after
// a.CloseWrite(), b's Read drains the buffered bytes and then returns io.EOF,
// while b may still write to a.
//
// Close of either end shuts both directions: the other end's Read drains what
// is buffered, then returns io.EOF; its Write returns an error wrapping
// livemig.ErrClosed. On the closed end, Read and Write return errors wrapping
// livemig.ErrClosed, and blocked calls return at once.
func Pipe(size int) (a, b Link) {
	if size <= 0 {
		size = DefaultPipeSize
	}
	ab := newPipeDir(size)
	ba := newPipeDir(size)
	return &pipeEnd{r: ba, w: ab}, &pipeEnd{r: ab, w: ba}
}

// pipeDir is one direction of a pipe: a ring buffer written by one end and
// read by the other.
type pipeDir struct {
	mu       sync.Mutex
	canRead  sync.Cond // signalled when data arrives or a side closes
	canWrite sync.Cond // signalled when space frees or a side closes
	ring
	wshut   bool // the writing end closed or shut its write side
	rclosed bool // the reading end closed
	rwait   int  // readers waiting (a cheap check before waking them)
	wwait   int  // writers waiting
}

func newPipeDir(size int) *pipeDir {
	d := &pipeDir{ring: ring{buf: make([]byte, size)}}
	d.canRead.L = &d.mu
	d.canWrite.L = &d.mu
	return d
}

func (d *pipeDir) read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	d.mu.Lock()
	for {
		if d.rclosed {
			d.mu.Unlock()
			return 0, errPipeClosed
		}
		if d.n > 0 {
			break
		}
		if d.wshut {
			d.mu.Unlock()
			return 0, io.EOF
		}
		d.rwait++
		d.canRead.Wait()
		d.rwait--
	}
	total := d.take(p)
	if d.wwait > 0 {
		d.canWrite.Broadcast()
	}
	d.mu.Unlock()
	return total, nil
}

func (d *pipeDir) write(p []byte) (int, error) {
	d.mu.Lock()
	total := 0
	for total < len(p) {
		for {
			if d.wshut {
				d.mu.Unlock()
				return total, errPipeWriteShut
			}
			if d.rclosed {
				d.mu.Unlock()
				return total, errPipePeerClosed
			}
			if d.n < len(d.buf) {
				break
			}
			d.wwait++
			d.canWrite.Wait()
			d.wwait--
		}
		total += d.put(p[total:])
		if d.rwait > 0 {
			d.canRead.Broadcast()
		}
	}
	d.mu.Unlock()
	return total, nil
}

func (d *pipeDir) shutWrite() {
	d.mu.Lock()
	d.wshut = true
	d.canRead.Broadcast()
	d.canWrite.Broadcast()
	d.mu.Unlock()
}

func (d *pipeDir) closeRead() {
	d.mu.Lock()
	d.rclosed = true
	d.n = 0 // nobody will read these bytes
	d.canRead.Broadcast()
	d.canWrite.Broadcast()
	d.mu.Unlock()
}

// pipeEnd is one end of a Pipe.
type pipeEnd struct {
	r *pipeDir // the peer writes, we read
	w *pipeDir // we write, the peer reads
}

// Read implements io.Reader.
func (e *pipeEnd) Read(p []byte) (int, error) { return e.r.read(p) }

// Write implements io.Writer. It returns only when all of p is buffered or
// the pipe is closed.
func (e *pipeEnd) Write(p []byte) (int, error) { return e.w.write(p) }

// CloseWrite shuts this end's write direction: the peer reads the buffered
// bytes, then io.EOF. This end may still Read.
func (e *pipeEnd) CloseWrite() error {
	e.w.shutWrite()
	return nil
}

// Close closes both directions of this end. It is idempotent.
func (e *pipeEnd) Close() error {
	e.w.shutWrite()
	e.r.closeRead()
	return nil
}
