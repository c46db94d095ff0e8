package postcopy

// prepager is the source's pre-paging policy, after Hines and Gopalan's
// adaptive pre-paging: after the pages a request names, send the
// neighbours of the last one in the direction the faults are moving. The
// window starts at a base size and doubles (up to 8× the base) while
// successive requests keep moving the same way within twice the window;
// a request that jumps or turns resets it.
//
// The Core keeps one, so the real and the simulated source make the same
// choices. The zero value pre-pages nothing.
type prepager struct {
	base   int
	last   uint64
	dir    int
	window int
}

// newPrepager returns a policy whose window starts at base pages (0 or
// less: no pre-paging).
func newPrepager(base int) prepager {
	base = max(base, 0)
	return prepager{base: base, window: base}
}

// next records a request whose last page is last, in a guest of pages
// pages, and returns the neighbours to send after it: count pages from
// last+dir, stepping by dir (+1 or -1), already clipped to the guest.
func (p *prepager) next(last, pages uint64) (dir int, count int) {
	grow := func(d int, gap uint64) {
		if p.dir == d && gap <= uint64(2*p.window) {
			p.window = min(2*p.window, 8*p.base)
		} else {
			p.window = p.base
		}
		p.dir = d
	}
	switch {
	case last > p.last:
		grow(1, last-p.last)
	case last < p.last:
		grow(-1, p.last-last)
	}
	p.last = last
	if p.dir >= 0 {
		if last >= pages {
			return 1, 0
		}
		return 1, int(min(uint64(p.window), pages-1-last))
	}
	return -1, int(min(uint64(p.window), last))
}
