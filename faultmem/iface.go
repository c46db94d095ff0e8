package faultmem

import "github.com/livemig/livemig"

var (
	_ livemig.PageSink   = (*Region)(nil)
	_ livemig.PageReader = (*Region)(nil)
)
