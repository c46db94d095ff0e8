package testkit

import (
	"testing"
	"time"

	"github.com/livemig/livemig/internal/faultproxy"
)

// FaultProxy starts a fault proxy (internal/faultproxy) to target applying
// rules and returns its address. When the test ends it checks that a rule
// fired, waiting up to 10 s (the proxy reports a fault a moment after it
// acts, and a cut may end a migration first), and closes the proxy.
func FaultProxy(tb testing.TB, target string, rules ...faultproxy.Rule) string {
	tb.Helper()
	p, err := faultproxy.New(target, rules...)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		defer p.Close()
		select {
		case <-p.Fired():
		case <-time.After(10 * time.Second):
			tb.Errorf("the fault did not fire: %v", p.Stats())
		}
	})
	return p.Addr()
}
