//go:build !linux

package wpmem

import (
	"fmt"
	"os"
	"runtime"

	"github.com/livemig/livemig"
)

func pageSize() int { return os.Getpagesize() }

var errPlatform = fmt.Errorf("wpmem: asynchronous write-protect and PAGEMAP_SCAN are Linux's (this is %s): %w",
	runtime.GOOS, livemig.ErrNotSupported)

func mapMemory(int) ([]byte, error) { return nil, errPlatform }
func unmapMemory([]byte) error      { return nil }
func noHugePages([]byte) error      { return errPlatform }
