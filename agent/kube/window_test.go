package kube

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kong-watcher/kong-watcher/api/v1alpha1"
)

// TestEveryClosedWindowIsJudged: paced by the agent's window rotation, the reporter judges
// each window exactly once, so a one-window burst of errors always raises its alert (with a
// ticker of its own it could sample the window before and the window after the burst).
func TestEveryClosedWindowIsJudged(t *testing.T) {
	m := newManager(t)
	box := &statsBox{s: stats(100, 0, 5)}
	windows := make(chan struct{})
	r, _ := newReporter(t, m, box, func(o *Options) { o.WindowClosed = windows })
	start(t, r)
	// Each window differs from the one before, so each is reported once judged: waiting for
	// that report keeps the test from replacing a window the reporter has not read yet.
	close1 := func(s v1alpha1.Stats) {
		box.set(func(b *v1alpha1.Stats) { *b = s })
		before := m.count()
		select {
		case windows <- struct{}{}:
		case <-time.After(waitTimeout):
			t.Fatal("the reporter does not take the closed window")
		}
		waitFor(t, "the closed window reported", func() bool { return m.count() > before })
	}
	waitFor(t, "the first report", func() bool { return m.count() > 0 })
	close1(stats(90, 0, 5))
	close1(stats(60, 60, 5)) // the burst, for exactly one window
	close1(stats(100, 0, 5))
	waitFor(t, "HighErrorRate and HighErrorRateResolved delivered", func() bool {
		d := m.delivered()
		return slices.ContainsFunc(d, func(e string) bool { return strings.HasPrefix(e, "Warning HighErrorRate ") }) &&
			slices.ContainsFunc(d, func(e string) bool { return strings.HasPrefix(e, "Normal HighErrorRateResolved ") })
	})
}
