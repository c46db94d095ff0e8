//go:build unix

package benchkit

import (
	"syscall"
	"time"
)

// CPUTime returns the CPU time this process has used so far, user and
// system, all threads (getrusage RUSAGE_SELF), and whether it could.
func CPUTime() (time.Duration, bool) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, false
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), true
}
