package livemig

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
)

// Round is what one round of a migration did. Round 1 of pre-copy is the bulk
// round that sends every page; the stop-and-copy round is marked Final.
type Round struct {
	Index      int           `json:"index"`
	Final      bool          `json:"final,omitempty"`
	Start      time.Duration `json:"-"` // from the migration's start
	Duration   time.Duration `json:"-"`
	DirtyPages uint64        `json:"dirty_pages"` // dirty at the sync that began the round
	PagesSent  uint64        `json:"pages_sent"`
	ZeroPages  uint64        `json:"zero_pages"`         // of PagesSent, sent as zero records
	Deferred   uint64        `json:"deferred,omitempty"` // pages skipped: dirtied again before their turn
	Bytes      uint64        `json:"bytes"`              // on the wire, framing included
}

// Report is the outcome of a migration: per-round figures and totals. Times
// are measured on the engine's Clock, so a simulated migration reports virtual
// time. A Report prints as a table (String, WriteTable) and marshals to JSON
// with times in milliseconds.
type Report struct {
	Algorithm string  `json:"algorithm"`
	Rounds    []Round `json:"rounds"`

	TotalTime time.Duration `json:"-"` // start to destination resumed
	Downtime  time.Duration `json:"-"` // source paused to destination resumed

	GuestPages  uint64 `json:"guest_pages"`
	PageSize    int    `json:"page_size"`
	BytesSent   uint64 `json:"bytes_sent"`   // on the wire, framing included
	PagesSent   uint64 `json:"pages_sent"`   // page records sent, all rounds
	PagesResent uint64 `json:"pages_resent"` // page records for pages sent before
	ZeroPages   uint64 `json:"zero_pages"`   // page records sent as zero pages
	StateBytes  uint64 `json:"state_bytes"`  // size of the CPU/device state

	// Throttle is the last vCPU throttle asked for (0..1), 0 if none.
	Throttle float64 `json:"throttle,omitempty"`
	// Converged is false when pre-copy stopped without meeting its downtime
	// target (round limit, or the guest dirtied faster than the link).
	Converged bool `json:"converged"`
	// Verified is true when the end-to-end digest of the destination matched
	// the source's at switchover.
	Verified bool `json:"verified"`

	// Codec figures, when a codec was used.
	Codec *CodecStats `json:"codec,omitempty"`
	// PostCopy figures, when pages moved after switchover.
	PostCopy *PostCopyStats `json:"postcopy,omitempty"`
}

// CodecStats are the page encoder's figures.
type CodecStats struct {
	RawBytes     uint64 `json:"raw_bytes"`     // page bytes before encoding
	EncodedBytes uint64 `json:"encoded_bytes"` // page bytes after encoding
	CacheHits    uint64 `json:"cache_hits"`
	CacheMisses  uint64 `json:"cache_misses"`
	Overflows    uint64 `json:"overflows"` // deltas that did not fit
	DeltaPages   uint64 `json:"delta_pages"`
	LZ4Pages     uint64 `json:"lz4_pages"`
	// Codecs names the optional codecs in use at the end ("xbzrle+lz4",
	// "xbzrle", "lz4" or "none"): fewer than configured when adaptation
	// turned some off. Empty when not known.
	Codecs string `json:"codecs,omitempty"`
}

// Ratio is RawBytes/EncodedBytes, 1 when nothing was encoded.
func (c *CodecStats) Ratio() float64 {
	if c == nil || c.EncodedBytes == 0 {
		return 1
	}
	return float64(c.RawBytes) / float64(c.EncodedBytes)
}

// HitRate is the fraction of cache lookups that hit.
func (c *CodecStats) HitRate() float64 {
	if c == nil || c.CacheHits+c.CacheMisses == 0 {
		return 0
	}
	return float64(c.CacheHits) / float64(c.CacheHits+c.CacheMisses)
}

// PostCopyStats are the figures of the post-copy phase.
type PostCopyStats struct {
	PagesPushed  uint64        `json:"pages_pushed"`
	PagesPulled  uint64        `json:"pages_pulled"`
	DemandFaults uint64        `json:"demand_faults"`
	LastPage     time.Duration `json:"-"` // switchover to the last page placed
	FaultP50     time.Duration `json:"-"`
	FaultP99     time.Duration `json:"-"`
	FaultMax     time.Duration `json:"-"`
	WaitTotal    time.Duration `json:"-"` // guest time lost waiting on faults
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// MarshalJSON writes the report with durations as milliseconds.
func (r Report) MarshalJSON() ([]byte, error) {
	type plain Report
	type round struct {
		Round
		StartMS    float64 `json:"start_ms"`
		DurationMS float64 `json:"duration_ms"`
	}
	rounds := make([]round, len(r.Rounds))
	for i, x := range r.Rounds {
		rounds[i] = round{x, ms(x.Start), ms(x.Duration)}
	}
	var pc any
	if r.PostCopy != nil {
		pc = struct {
			*PostCopyStats
			LastPageMS  float64 `json:"last_page_ms"`
			FaultP50MS  float64 `json:"fault_p50_ms"`
			FaultP99MS  float64 `json:"fault_p99_ms"`
			FaultMaxMS  float64 `json:"fault_max_ms"`
			WaitTotalMS float64 `json:"wait_total_ms"`
		}{r.PostCopy, ms(r.PostCopy.LastPage), ms(r.PostCopy.FaultP50), ms(r.PostCopy.FaultP99),
			ms(r.PostCopy.FaultMax), ms(r.PostCopy.WaitTotal)}
	}
	return json.Marshal(struct {
		plain
		Rounds     []round `json:"rounds"`
		TotalMS    float64 `json:"total_ms"`
		DowntimeMS float64 `json:"downtime_ms"`
		PostCopy   any     `json:"postcopy,omitempty"`
	}{plain(r), rounds, ms(r.TotalTime), ms(r.Downtime), pc})
}

// String returns the report as a table.
func (r *Report) String() string {
	var b strings.Builder
	_ = r.WriteTable(&b)
	return b.String()
}

// WriteTable writes the report as a readable table: a line of totals, then
// one row per round.
func (r *Report) WriteTable(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: total %v, downtime %v, %s sent, %d pages sent (%d re-sent, %d zero), %d rounds, converged %v, verified %v\n",
		orDash(r.Algorithm), r.TotalTime.Round(time.Microsecond), r.Downtime.Round(time.Microsecond),
		FormatBytes(r.BytesSent), r.PagesSent, r.PagesResent, r.ZeroPages, len(r.Rounds), r.Converged, r.Verified)
	if r.Codec != nil {
		fmt.Fprintf(&b, "codec: ratio %.2f, cache hit rate %.1f%%, %d delta pages, %d lz4 pages, %d overflows",
			r.Codec.Ratio(), 100*r.Codec.HitRate(), r.Codec.DeltaPages, r.Codec.LZ4Pages, r.Codec.Overflows)
		if r.Codec.Codecs != "" {
			fmt.Fprintf(&b, ", %s at the end", r.Codec.Codecs)
		}
		b.WriteString("\n")
	}
	if p := r.PostCopy; p != nil {
		fmt.Fprintf(&b, "post-copy: %d pushed, %d pulled, %d faults, wait p50 %v p99 %v max %v, last page after %v\n",
			p.PagesPushed, p.PagesPulled, p.DemandFaults, p.FaultP50, p.FaultP99, p.FaultMax, p.LastPage)
	}
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "round\tstart\tduration\tdirty\tsent\tzero\tbytes\t")
	for _, x := range r.Rounds {
		idx := fmt.Sprint(x.Index)
		if x.Final {
			idx += "*"
		}
		fmt.Fprintf(tw, "%s\t%v\t%v\t%d\t%d\t%d\t%s\t\n", idx, x.Start.Round(time.Microsecond),
			x.Duration.Round(time.Microsecond), x.DirtyPages, x.PagesSent, x.ZeroPages, FormatBytes(x.Bytes))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// FormatBytes prints n in binary units: 512 B, 4.0 KiB, 1.50 GiB.
func FormatBytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit && exp < 5; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.2f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
