//go:build !linux

package postcopy_test

import "testing"

func benchFaultServiceUffd(*testing.B) {}
