// Package codec is the per-page encoding of a migration: the source's
// Pipeline chooses, for each page it sends, the cheapest record — zero page,
// XBZRLE delta, LZ4 block or raw page — on several workers at once, and the
// destination's Decoder applies each record to its copy of the page.
//
// # The choice
//
// For each page, in this order:
//
//  1. a zero page is sent as transport.EncZero with no data (IsZero, as fast
//     as the memory allows: about 45-56 GB/s on a cache-resident page);
//  2. with Config.XBZRLE, from round 2 on, a page found in the XBZRLE cache
//     is sent as an XBZRLE delta against its cached copy
//     (transport.EncXBZRLE) when the delta fits in a page, and not at all
//     when it is unchanged; a page not cached is cached (package delta,
//     QEMU's save_xbzrle_page: round 1 neither looks up nor inserts, and a
//     miss in the final round is not inserted). A page sent as a zero page
//     is stored as zeros in the cache, so no later delta applies to a stale
//     copy;
//  3. with Config.LZ4, a page is sent as an LZ4 block (transport.EncLZ4,
//     github.com/pierrec/lz4/v4's block format) when the block saves at
//     least 1/64 of the page (MaxLZ4 says why);
//  4. otherwise the page goes raw (transport.EncRaw).
//
// Steps 1, 3 and 4 need no history: they are a PageEncoder's, which every
// engine uses, the post-copy source directly. Every engine's destination
// decodes with DecodePage (Decoder.Apply is DecodePage and a write to a
// livemig.PageSink).
//
// # Parallel workers
//
// Config.Workers goroutines (default: one per CPU) encode pages in batches
// of 64; one collector goroutine calls send, so send is never called
// concurrently. The XBZRLE cache is sharded: the pages are dealt to the
// workers in stripes of 64 consecutive pages, worker w owning the pages p
// with (p / 64) % Workers == w, and a cache of Config.Cache.Bytes /
// Workers keyed by the page's rank among its own, so the hot path takes no
// lock (and two workers never write one cache line of the digest). Pages of one round reach send
// in any order; Pipeline.Barrier, which the engine calls before it ends a
// round, orders rounds, which keeps newest-wins. Batches and their buffers
// are recycled: zero allocations per page at steady state. With Workers ==
// 1 nothing runs in the background: Submit encodes and sends before it
// returns, deterministically (the simulator runs this way).
//
// # Adaptation
//
// Compression that slows a migration down is the complaint users raise
// most about it: when the link is faster than the encoders, sending raw
// pages is quicker. Unless Config.NoAdapt is set, the engine reports the
// link's capacity once a round and every 32 MiB of pages within one
// (Pipeline.ObserveLink, as package precopy calls it) and the pipeline
// weighs it against what it measured — worker time per input byte for each
// codec, timed on the wall clock on one page in eight, and the bytes each
// saved — with Adapt, a pure function: compression pays only when
// min(W × encode rate, link × ratio) > link. LZ4 is turned off before
// XBZRLE; a choice changes only when another promises 10 % more page
// throughput (Hysteresis), and is logged at Info. When XBZRLE goes off its
// caches are dropped, and new ones start when it comes back. In a
// simulation the costs come from the cost model instead (below).
//
// # Virtual time
//
// In a simulation (Config.Clock, a *livemig.VirtualClock; package precopy
// sets it when its own Clock is one) the pipeline reads no wall clock:
// what encoding and decoding a page cost is a CostModel's (Config.Cost,
// DefaultCost by default), from what the page is and what the encoder did
// with it (an Outcome: zero page, XBZRLE miss, delta of n bytes or
// unchanged, LZ4 block sent or rejected, raw), in nanoseconds of one core
// per 4 KiB page, on CostModel.Workers cores at the source and
// DecodeWorkers at the destination. The records go through three stages
// in a row — the encoders, the link, the decoders — each holding a few
// hundred records of buffer, as socket buffers do: a stream moves at the
// pace of its slowest stage, so a codec slower than the link slows the
// round, as it does for real, while a fast one costs the time of a page.
// The pipeline charges this by advancing the clock, before each send, to
// when the record can go (encoded, and with room at the destination);
// the link's own time is the simulated link's. Adaptation then weighs the
// modelled costs: on the default model LZ4 (about 1 GB/s on one core)
// pays on a link of a few Gbit/s and is turned off at 10 Gbit/s. The
// figures depend only on the pages, the calls and the model: the same
// simulation gives the same figures on any machine. Calibrate measures a
// machine's own model (go test -run '^$' -bench Calibrate ./codec prints
// it). With VirtualTime alone (no Clock) encoding costs nothing and
// adaptation never turns a codec off, as before the model.
//
// # Usage
//
// At the source, with send forwarding to a transport.Conn:
//
//	pl, err := codec.NewPipeline(codec.Config{XBZRLE: true, LZ4: true}, mem, digest,
//		func(m transport.Msg) error { return conn.Send(ctx, m) })
//	defer pl.Close()
//	for round := 1; ; round++ {
//		pl.StartRound(round, final)
//		for _, n := range dirtyPages {
//			if err := pl.Submit(ctx, n); err != nil { ... }
//		}
//		if err := pl.Barrier(ctx); err != nil { ... }
//		pages, zero, wire := pl.RoundStats()
//		pl.ObserveLink(linkBytesPerSec)
//		// send EndRound ...
//	}
//
// At the destination, for each page record received:
//
//	page, err := dec.Apply(sink, m.Page, m.Enc, m.Data)
//	if page == nil { digest.Zero(m.Page) } else { digest.Update(m.Page, page) }
//
// # Speed
//
// On a shared 2-CPU AMD EPYC VM (go test -bench . -benchtime 200ms), per
// 4 KiB page, over a 4 MiB working set of pages (a third random, a third
// text, a third sparse) changed by each pattern: memcpy 57-62 GB/s;
// IsZero 45-56 GB/s (the OR loop 40-43 GB/s); XBZRLE encode 0.5 (40 % of
// bytes changed) to 28 GB/s (unchanged), decode 0.4 to 56 GB/s; LZ4
// compress 0.37-1.3 GB/s, decompress 2.7-42 GB/s; the whole pipeline with
// both codecs 0.43-13.7 GB/s on one worker. BenchmarkPipeline,
// BenchmarkXBZRLE, BenchmarkLZ4 and BenchmarkMemcpy give the figures per
// pattern. Where the CPU has AVX-512, the workers check the pages they have
// copied into their buffers for zeros with AVX-512 (1.5 times as fast as
// IsZero's bytes.Equal on a page in cache; BenchmarkIsZeroRatio).
package codec
