package ingest

import (
	"testing"
	"time"

	"golang.org/x/time/rate"
)

// TestKeyedLimitersKeepKeysInUse: a key used more often than its idle time keeps its bucket
// (a new one would be full: a sender in steady use would get a fresh burst each idle time);
// one left idle is forgotten, and the number of keys is bounded.
func TestKeyedLimitersKeepKeysInUse(t *testing.T) {
	const ttl = time.Second
	l := newKeyedLimiters[string](2, ttl)
	made := 0
	mk := func() *rate.Limiter { made++; return rate.NewLimiter(1, 1) }
	first := l.get("a", mk)
	last := time.Now()
	for range 8 { // twice the idle time in all
		time.Sleep(ttl / 4)
		if gap := time.Since(last); gap >= ttl {
			t.Skipf("this machine slept %v between two uses, longer than the idle time", gap)
		}
		if l.get("a", mk) != first {
			t.Fatalf("key in use got a new limiter after %d made", made)
		}
		last = time.Now()
	}
	time.Sleep(ttl + 500*time.Millisecond)
	if l.get("a", mk) == first || made != 2 {
		t.Errorf("an idle key kept its limiter (%d made)", made)
	}
	l.get("b", mk)
	l.get("c", mk)
	if n := l.len(); n != 2 {
		t.Errorf("%d keys kept, want 2", n)
	}
}
