package transport

// ring is the byte ring buffer under Pipe and SimLink: n bytes buffered
// from offset r, wrapping at len(buf). Its owner holds the lock.
type ring struct {
	buf  []byte
	r, n int // read offset, buffered byte count
}

// take copies up to len(p) buffered bytes into p and returns how many.
func (q *ring) take(p []byte) int {
	total := 0
	for total < len(p) && q.n > 0 {
		end := min(len(q.buf), q.r+q.n)
		c := copy(p[total:], q.buf[q.r:end])
		total += c
		q.n -= c
		q.r += c
		if q.r == len(q.buf) {
			q.r = 0
		}
	}
	if q.n == 0 {
		q.r = 0 // keep the next writes contiguous
	}
	return total
}

// put copies as much of p as there is room for and returns how much.
func (q *ring) put(p []byte) int {
	total := 0
	for total < len(p) && q.n < len(q.buf) {
		w := q.r + q.n
		if w >= len(q.buf) {
			w -= len(q.buf)
		}
		end := len(q.buf)
		if w < q.r {
			end = q.r
		}
		c := copy(q.buf[w:end], p[total:])
		total += c
		q.n += c
	}
	return total
}
