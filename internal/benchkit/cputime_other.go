//go:build !unix

package benchkit

import "time"

// CPUTime reports that this platform's CPU time is not measured here.
func CPUTime() (time.Duration, bool) { return 0, false }
