package stream_test

import (
	"bytes"
	"fmt"
	"io"

	"github.com/livemig/livemig/examples/qemu/stream"
)

// A stream of one RAM block with two pages, written by hand and read back.
func Example() {
	var buf bytes.Buffer
	w := stream.NewWriter(&buf)
	page := bytes.Repeat([]byte{0x42}, stream.PageSize)
	for _, rec := range []stream.Record{
		{Kind: stream.KindHeader},
		{Kind: stream.KindConfiguration, Machine: "pc-i440fx-7.2"},
		{Kind: stream.KindSection, Type: stream.SectionStart, ID: 2, Name: stream.RAMName, Version: stream.RAMVersion},
		{Kind: stream.KindMemSize, Blocks: []stream.Block{{Name: "pc.ram", Size: 2 * stream.PageSize}}},
		{Kind: stream.KindEOS},
		{Kind: stream.KindFooter, ID: 2},
		{Kind: stream.KindSection, Type: stream.SectionEnd, ID: 2},
		{Kind: stream.KindZero, Block: "pc.ram", Addr: 0},
		{Kind: stream.KindPage, Block: "pc.ram", Addr: stream.PageSize, Data: page},
		{Kind: stream.KindEOS},
		{Kind: stream.KindFooter, ID: 2},
		{Kind: stream.KindEOF},
	} {
		if err := w.Write(&rec); err != nil {
			fmt.Println(err)
			return
		}
	}
	w.Flush()

	r := stream.NewReader(&buf, stream.Config{})
	img, _ := stream.NewImage(nil, stream.ImageConfig{})
	for {
		rec, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			fmt.Println(err)
			return
		}
		img.Apply(&rec)
		switch {
		case rec.Kind == stream.KindSection:
			fmt.Printf("%d: %s section %q\n", rec.Offset, rec.Type, rec.Name)
		case rec.Kind.IsPage():
			fmt.Printf("%d: %s %s+%#x (page %d, continue %v)\n", rec.Offset, rec.Kind, rec.Block, rec.Addr, rec.Page, rec.Continue)
		default:
			fmt.Printf("%d: %s\n", rec.Offset, rec.Kind)
		}
	}
	p := make([]byte, stream.PageSize)
	img.ReadPage(1, p)
	fmt.Printf("page 1 holds %#x\n", p[0])
	// Output:
	// 0: header
	// 8: configuration
	// 26: start section "ram"
	// 43: mem_size
	// 66: eos
	// 74: footer
	// 79: end section "ram"
	// 84: zero pc.ram+0x0 (page 0, continue false)
	// 100: page pc.ram+0x1000 (page 1, continue true)
	// 4204: eos
	// 4212: footer
	// 4217: eof
	// page 1 holds 0x42
}

// A Layout numbers the pages of all blocks in stream order.
func ExampleLayout() {
	l, _ := stream.NewLayout([]stream.Block{
		{Name: "pc.ram", Size: 64 << 20},
		{Name: "pc.bios", Size: 256 << 10},
	})
	n, _ := l.Page("pc.bios", 0x3000)
	i, off, _ := l.Locate(n)
	fmt.Println(l.Pages(), n, l.Blocks()[i].Name, off)
	// Output:
	// 16448 16387 pc.bios 12288
}
