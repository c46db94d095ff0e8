package delta

import "github.com/livemig/livemig/internal/deltapath"

func init() {
	deltapath.Set = setPath
	deltapath.Current = currentPath
	deltapath.Paths = paths
}

// paths lists the paths this CPU and build have, slowest first.
func paths() []string {
	ps := []string{pathGo}
	if hasAVX2 {
		ps = append(ps, pathAVX2)
	}
	if hasAVX512 {
		ps = append(ps, pathAVX512)
	}
	return ps
}

// pathEnv names the environment variable that picks Encode's path at
// init: "go" (the Go scanners), "avx2" or "avx512". A path this CPU or
// build lacks falls back to the best one below it; unset means the best.
const pathEnv = "LIVEMIG_DELTA_PATH"

// Encode's paths, fastest last.
const (
	pathGo     = "go"
	pathAVX2   = "avx2"
	pathAVX512 = "avx512"
)

// setPath makes Encode use path p (pathGo, pathAVX2 or pathAVX512), or the
// best path below it this CPU has, and returns the path now in use.
func setPath(p string) string {
	useAVX512 = hasAVX512 && p == pathAVX512
	useAVX2 = hasAVX2 && (p == pathAVX2 || p == pathAVX512)
	return currentPath()
}

// currentPath is the path Encode uses.
func currentPath() string {
	switch {
	case useAVX512:
		return pathAVX512
	case useAVX2:
		return pathAVX2
	}
	return pathGo
}
