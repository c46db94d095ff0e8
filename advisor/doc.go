// Package advisor makes the thesis' recommendations executable: it profiles
// a running guest, picks the migration algorithm for it and predicts what
// that algorithm will do.
//
// The thesis ("Live VM Migration Principles and Performance", P. Svärd,
// 2012) ends with which approach — pre-copy, post-copy, hybrid — and which
// improvement — delta compression, compression — suits which guest and
// link. Here that flowchart is a function, Advise, whose every branch is a
// prediction checked against livemig's own simulator (examples/compare
// -validate).
//
// # The profile
//
// Observe watches a guest for a short window (2 s by default) through
// livemig.Memory and livemig.DirtySource only, as any hypervisor exposes
// them: it syncs the dirty log every Interval and counts, for each page, in
// how many intervals it was dirty. A mixture of dirtying rates fitted to
// those counts (Profile.Classes) is the writable working set as a function
// of time, past the window too: Profile.Dirtied(t) is the dirty set a
// round of length t leaves. Beside it: how the working set grows over 1,
// 2, 4, ... intervals, how concentrated the writes are, how sequential;
// XBZRLE deltas of sampled pages written twice; the share of zero pages and
// LZ4's ratio on sampled pages.
//
// # The predictions
//
// Predict models each algorithm of Algorithms (examples/compare's names):
//
//   - pre-copy round by round: round k sends the pages the previous one
//     left dirty (Dirtied of its length, scaled by any throttle), each
//     page costing its bytes on the link or its CPU time in the cost model
//     (codec.CostModel), whichever is slower; XBZRLE's hits are the pages
//     dirtied again since they were last sent, at the profile's delta size;
//     LZ4 is kept where it does not slow the round (the pipeline's
//     adaptation). When to stop is decided by package precopy's own Policy,
//     fed the predicted facts of each round, auto-converge's throttle
//     included; the downtime is the last round, the device state, and four
//     crossings of the link (the last bytes, Ready, Commit, Resumed);
//   - post-copy: the downtime is the state and the hand-over; the push
//     takes the guest's bytes over the link; the destination's vCPU, from
//     the resume on, first touches the pages of each class at its rate,
//     faulting on those not pushed yet, each fault costing a round trip and
//     two pages' time, and pre-paging sparing most faults of sequential
//     writes; the time lost is integrated step by step, the vCPU stopping
//     while it waits;
//   - hybrid: one bulk round, then post-copy of the pages it left dirty,
//     faults only on those.
//
// # The advice
//
// Advise ranks the predictions by an Objective. The default, Balanced:
// algorithms predicted to meet the downtime target beat those that miss
// it; among those that meet it, the least total time plus guest time lost
// to demand faults wins; if none meets it, the least downtime. NoPostCopy
// ranks the pre-copy algorithms only, for operators who will not have the
// guest's memory split between two hosts; MinDowntime ranks by downtime.
// The Advice says why in words: the dirty rate against the link, whether
// pre-copy converges, what XBZRLE and LZ4 buy here, what post-copy's faults
// would cost, and the runner-up.
//
// Advise and Predict are pure functions of their arguments: no clock, no
// goroutines, no I/O. Observe is the only blocking call; it waits on the
// Clock it is given, so with a *livemig.VirtualClock a simulated guest is
// profiled in virtual time.
//
// # Usage
//
//	p, err := advisor.Observe(ctx, guest, livemig.WallClock{}, advisor.ObserveConfig{})
//	if err != nil {
//		return err
//	}
//	adv := advisor.Advise(p, advisor.Link{Bandwidth: 10e9, Latency: time.Millisecond},
//		advisor.Target{Downtime: 100 * time.Millisecond}, advisor.Balanced)
//	fmt.Println(adv.Algorithm, adv.Predicted.Total, adv.Predicted.Downtime)
//	for _, r := range adv.Reasons {
//		fmt.Println(" -", r)
//	}
//
// # The adaptive engine
//
// Adapt is the decision after each pre-copy round: will pre-copy, as it
// runs, converge; if not, what to switch to in time (codecs, a throttle,
// post-copy for what is left), by the advisor's ranking of what is not in
// force yet. Adaptive acts on it as pre-copy's Decider
// (precopy.Config.Decider): with hybrid.Config.Adaptive the hand-off to
// post-copy is real, and a migration that converges ends by pre-copy's
// stop-and-copy.
//
// examples/compare -advise profiles a simulated guest and prints the
// advice; -validate N runs N random scenarios by every algorithm and
// prints how often the advice is within 10 % of the best and how close the
// predictions are (docs/EVALUATION.md, "The advisor").
package advisor
