//go:build tools

// Package deps pins the modules livemig uses while packages that import them are being written.
package deps
import (
 _ "github.com/bits-and-blooms/bitset"
 _ "github.com/pierrec/lz4/v4"
 _ "golang.org/x/sys/unix"
 _ "github.com/stretchr/testify/require"
 _ "golang.org/x/time/rate"
 _ "go.uber.org/goleak"
 _ "gonum.org/v1/plot"
)
