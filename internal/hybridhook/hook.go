// Package hybridhook carries the number of pre-copy rounds from package
// hybrid, which alone exposes the setting (hybrid.Config.Rounds), to package
// postcopy, whose engine runs them but whose Config does not export it: a
// user of postcopy gets pure post-copy, a user of hybrid says how many
// rounds. The net/http-style hook keeps one engine without a second public
// knob.
package hybridhook

// WithRounds returns cfg, a postcopy.Config, set to run n pre-copy rounds
// before the switchover. Package postcopy sets it in its init.
var WithRounds func(cfg any, n int) any
