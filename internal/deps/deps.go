//go:build tools

// Package deps pins the modules livemig uses while packages that import them are being written.
package deps

import (
	_ "github.com/bits-and-blooms/bitset"
	_ "github.com/pierrec/lz4/v4"
	_ "github.com/stretchr/testify/require"
	_ "go.uber.org/goleak"
	_ "golang.org/x/sys/unix"
	_ "golang.org/x/time/rate"
	_ "gonum.org/v1/plot"
)
