package transport

import "time"

// LivenessOf returns the silence bound c watches its peer with (its
// Config.Liveness in effect), and false when c watches none (liveness off,
// a simulated link) or is not a Conn of this package. A caller waiting for
// a peer's first word on a new connection bounds the wait by it: a peer
// silent that long is gone, or says nothing on purpose.
func LivenessOf(c Conn) (time.Duration, bool) {
	if cc, ok := c.(*conn); ok && cc.live > 0 {
		return cc.live, true
	}
	return 0, false
}
