// Package deltapath lets livemig's benchmark suite (package bench) switch
// delta.Encode between its paths (pure Go, AVX2, AVX-512) within one
// process, as delta's own tests do, so that the paths run side by side on
// the same pages. Users pick a path with LIVEMIG_DELTA_PATH instead.
package deltapath

// Set, Current and Paths are filled in by package delta's init. Set makes Encode use
// path p ("go", "avx2" or "avx512"), or the best one below it this CPU and
// build have, and returns the path now in use; it must not be called while
// Encode runs on another goroutine. Current is the path in use. Paths lists
// the paths this CPU and build have, slowest first.
var (
	Set     func(p string) string
	Current func() string
	Paths   func() []string
)
