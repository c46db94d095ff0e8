//go:build !amd64 || purego

package crc32c

const hasFold = false

func foldUpdate(s uint32, p []byte) uint32 { panic("crc32c: no vector fold on this platform") }
