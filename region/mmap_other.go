//go:build !unix

package region

func mapMemory(size int) ([]byte, func() error, error) {
	return make([]byte, size), func() error { return nil }, nil
}
