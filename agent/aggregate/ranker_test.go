package aggregate

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/kong-watcher/kong-watcher/agent/model"
	"github.com/kong-watcher/kong-watcher/api/v1alpha1"
)

// checkRanker fails unless r's bookkeeping is consistent and within its bounds.
func checkRanker(t testing.TB, r *Ranker) {
	t.Helper()
	if r.Len() > r.max || len(r.slots) != r.Len() || len(r.weights) != r.Len() || len(r.seen) != r.Len() {
		t.Fatalf("%d keys, %d in the index, %d weights, max %d", r.Len(), len(r.slots), len(r.weights), r.max)
	}
	if len(r.cands) > r.maxCands {
		t.Fatalf("%d candidates, max %d", len(r.cands), r.maxCands)
	}
	for s, k := range r.keys {
		if got, ok := r.slots[k]; !ok || int(got) != s {
			t.Fatalf("slot %d holds %q, the index says %d (%v)", s, k, got, ok)
		}
	}
	if r.lightOK {
		for s, w := range r.weights {
			if w < r.weights[r.light] {
				t.Fatalf("cached lightest slot %d weighs %d, slot %d %d", r.light, r.weights[r.light], s, w)
			}
		}
	}
	idle := 0
	for s := range r.seen {
		if r.seen[s] != r.epoch {
			idle++
		}
	}
	if idle != r.idle {
		t.Fatalf("%d idle slots, counted %d", idle, r.idle)
	}
	for s, w := range r.weights {
		if w < r.floor {
			t.Fatalf("slot %d weighs %d, under the floor %d", s, w, r.floor)
		}
	}
}

// With no more distinct keys than slots, every key has its slot from its first request and
// keeps it, whatever the order, the epochs and the halvings.
func TestRankerExactWithinBound(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	r := NewRanker(20)
	slotOf := map[string]int{}
	for i := 0; i < 100000; i++ {
		k := fmt.Sprintf("k%d", rng.IntN(20))
		if rng.IntN(10) == 0 {
			k = fmt.Sprintf("k%d", rng.IntN(3)) // some much heavier than others
		}
		if i%5000 == 0 {
			r.NextEpoch()
		}
		slot, _, moved := r.Observe([]byte(k))
		if moved || slot < 0 {
			t.Fatalf("request %d: %q -> slot %d, moved %v", i, k, slot, moved)
		}
		if s, ok := slotOf[k]; ok && s != slot {
			t.Fatalf("request %d: %q moved from slot %d to %d", i, k, s, slot)
		}
		slotOf[k] = slot
	}
	checkRanker(t, r)
}

// The name of the other row never gets a place of its own.
func TestRankerOtherIsNotAKey(t *testing.T) {
	r := NewRanker(3)
	for i := 0; i < 10; i++ {
		if slot, _, _ := r.Observe([]byte(v1alpha1.OtherRow)); slot != -1 {
			t.Fatalf("%q got slot %d", v1alpha1.OtherRow, slot)
		}
	}
	if r.Len() != 0 {
		t.Errorf("%d slots used", r.Len())
	}
}

// A heavier key takes the lightest key's place; a key seen once never does; two keys of
// similar weight do not swap places on every request.
func TestRankerByWeight(t *testing.T) {
	r := NewRanker(2)
	obs := func(k string) (int, string, bool) { return r.Observe([]byte(k)) }
	obs("a")
	obs("a")
	obs("a")
	obs("b")
	for i := 0; i < 50; i++ {
		if slot, _, _ := obs(fmt.Sprintf("junk%d", i)); slot != -1 {
			t.Fatalf("junk%d seen once got slot %d", i, slot)
		}
	}
	// c: the 1st request is a candidate, the 2nd outweighs b (1) and takes its place.
	if slot, _, _ := obs("c"); slot != -1 {
		t.Fatalf("c at its first request: slot %d", slot)
	}
	slot, old, moved := obs("c")
	if !moved || old != "b" || slot != 1 || r.Key(1) != "c" {
		t.Fatalf("c at its second request: slot %d, displaced %q, moved %v", slot, old, moved)
	}
	// b and c alternate: c has 2, b climbs back from its candidate weight 1 and needs more than
	// 1.25 times c's weight, so they swap at most a few times in 40 requests.
	swaps := 0
	for i := 0; i < 20; i++ {
		for _, k := range []string{"b", "c"} {
			if _, _, moved := obs(k); moved {
				swaps++
			}
		}
	}
	if swaps > 2 {
		t.Errorf("b and c swapped places %d times", swaps)
	}
	checkRanker(t, r)
}

// TestRankerLastKey: the key of the previous call is found without the index while it holds
// its slot, and not once it has lost it, even when the key that took the slot is the only
// other one seen since.
func TestRankerLastKey(t *testing.T) {
	r := NewRanker(1)
	obs := func(k string) (int, string, bool) { return r.Observe([]byte(k)) }
	for range 3 {
		if slot, _, _ := obs("a"); slot != 0 {
			t.Fatalf("a in slot %d", slot)
		}
	}
	moved := false
	for i := 0; !moved; i++ {
		if i > 20 {
			t.Fatal("b never took a's slot")
		}
		var slot int
		if slot, _, moved = obs("b"); moved && slot != 0 {
			t.Fatalf("b moved into slot %d", slot)
		}
	}
	if slot, _, _ := obs("a"); slot != -1 {
		t.Fatalf("a, displaced, counted in slot %d", slot)
	}
	for i := 0; r.Key(0) != "a"; i++ {
		if i > 50 {
			t.Fatal("a never took its slot back")
		}
		obs("a")
	}
	for range 3 {
		if slot, _, moved := obs("a"); slot != 0 || moved {
			t.Fatalf("a back in its slot: slot %d, moved %v", slot, moved)
		}
	}
	if slot, _, _ := obs("b"); slot != -1 {
		t.Fatalf("b, displaced, counted in slot %d", slot)
	}
	checkRanker(t, r)
}

// After a new epoch (the aggregator's Rotate) a new key takes an idle, light slot at its
// first request, so the new window counts it exactly; a busy slot is not taken that way.
func TestRankerIdleSlot(t *testing.T) {
	r := NewRanker(2)
	r.Observe([]byte("a"))
	r.Observe([]byte("b"))
	if slot, _, _ := r.Observe([]byte("c")); slot != -1 {
		t.Fatalf("c took slot %d while a and b were busy", slot)
	}
	r.NextEpoch()
	r.Observe([]byte("a"))
	slot, old, moved := r.Observe([]byte("d")) // d's weight 1 >= idle b's 1
	if !moved || old != "b" || r.Key(slot) != "d" {
		t.Fatalf("d: slot %d, displaced %q, moved %v", slot, old, moved)
	}
}

var realHosts = []string{"api.example.com", "shop.example.com", "auth.example.com"}
var realPaths = []string{"/users", "/orders", "/login"}

// junkPath returns a distinct path of words (pathnorm keeps them) for each i.
func junkPath(i int) string {
	var b strings.Builder
	b.WriteString("/junk/")
	for ; ; i /= 26 {
		b.WriteByte(byte('a' + i%26))
		if i < 26 {
			break
		}
	}
	return b.String()
}

// feedReal sends n requests of the real hosts and paths, round robin, and returns how many
// each host and path key got.
func feedReal(a *Aggregator, n int, sent map[string]uint64) {
	for i := 0; i < n; i++ {
		h, p := realHosts[i%3], realPaths[i/3%3]
		a.Observe(req("GET", h, p, 200, time.Millisecond))
		sent[h]++
		sent["GET "+p]++
	}
}

func rowMap(rows []v1alpha1.Row) map[string]uint64 {
	m := map[string]uint64{}
	for _, r := range rows {
		m[r.Name] = r.Requests
	}
	return m
}

// checkRows fails unless rows add up to requests and has at most max+1 rows.
func checkRows(t *testing.T, what string, rows []v1alpha1.Row, requests uint64, max int) {
	t.Helper()
	var sum uint64
	for _, r := range rows {
		sum += r.Requests
	}
	if sum != requests || len(rows) > max+1 {
		t.Errorf("%s: %d rows add up to %d, want at most %d rows adding up to %d", what, len(rows), sum, max+1, requests)
	}
}

// 1,000 junk hosts and paths right after the start, then a few real ones at a steady rate:
// within a few requests each the real ones have rows of their own, in the window and the
// total, and the junk is in other but for the slots nobody else wants.
func TestJunkFirstCannotPoisonRows(t *testing.T) {
	for _, rotate := range []bool{false, true} {
		t.Run(fmt.Sprintf("rotate=%v", rotate), func(t *testing.T) {
			const max = 10
			a := New(Options{MaxHosts: max, MaxPaths: max})
			for i := 0; i < 1000; i++ {
				a.Observe(req("GET", fmt.Sprintf("junk%d.example.com", i), junkPath(i), 404, time.Millisecond))
			}
			if rotate {
				a.Rotate() // the junk in one window, the real traffic in the next
			}
			sent := map[string]uint64{}
			feedReal(a, 90, sent)
			if rotate {
				a.Rotate() // Snapshot's window is the last closed one
			}
			s := a.Snapshot()
			for what, rows := range map[string][]v1alpha1.Row{"total hosts": s.Total.Hosts, "total paths": s.Total.Paths,
				"window hosts": s.Window.Hosts, "window paths": s.Window.Paths} {
				got := rowMap(rows)
				keys := realHosts
				if strings.HasSuffix(what, "paths") {
					keys = []string{"GET /users", "GET /orders", "GET /login"}
				}
				for _, k := range keys {
					// At most a key's first two requests count in other; none when the
					// junk's slots are idle (a new window).
					if want := sent[k]; got[k] > want || got[k]+2 < want || rotate && got[k] != want {
						t.Errorf("%s: %q has %d requests of %d sent", what, k, got[k], want)
					}
				}
				junkRows := 0
				for name := range got {
					if strings.Contains(name, "junk") {
						junkRows++
					}
				}
				if junkRows > max-3 || rotate && strings.HasPrefix(what, "window") && junkRows > 0 {
					t.Errorf("%s: %d junk rows: %v", what, junkRows, rows)
				}
				if strings.HasPrefix(what, "total") && got[v1alpha1.OtherRow] < 1000-(max-3) {
					t.Errorf("%s: other has %d requests, want the junk", what, got[v1alpha1.OtherRow])
				}
			}
			checkRows(t, "total hosts", s.Total.Hosts, s.Total.Requests, max)
			checkRows(t, "total paths", s.Total.Paths, s.Total.Requests, max)
			checkRows(t, "window hosts", s.Window.Hosts, s.Window.Requests, max)
			checkRows(t, "window paths", s.Window.Paths, s.Window.Requests, max)

			// The next window has the real rows exactly and nothing else.
			a.Rotate()
			clear(sent)
			feedReal(a, 90, sent)
			a.Rotate()
			s = a.Snapshot()
			if got := rowMap(s.Window.Hosts); len(got) != 3 || got["api.example.com"] != 30 {
				t.Errorf("next window hosts = %v", s.Window.Hosts)
			}
			if got := rowMap(s.Window.Paths); len(got) != 3 || got["GET /users"] != 30 {
				t.Errorf("next window paths = %v", s.Window.Paths)
			}
			checkRanker(t, a.hosts)
			checkRanker(t, a.paths)
		})
	}
}

// Junk that was heavy for a while (each junk host more requests than a real host gets in a
// window) is forgotten after a few halving periods of later traffic: the real hosts get rows.
func TestHeavyJunkBurstIsForgotten(t *testing.T) {
	const max = 10
	a := New(Options{MaxHosts: max, MaxPaths: max})
	for i := 0; i < 2000; i++ {
		a.Observe(req("GET", fmt.Sprintf("junk%d.example.com", i%max), fmt.Sprintf("/junk/%c", 'a'+i%max), 404, time.Millisecond))
	}
	sent := map[string]uint64{}
	bound := 4 * int(a.hosts.decayEvery) // requests
	n := 0
	for ; n < bound; n += 30 {
		feedReal(a, 30, sent)
		if len(rowMap(a.Snapshot().Window.Hosts)) >= 3 && a.hosts.Len() == max {
			got := rowMap(a.Snapshot().Total.Hosts)
			if got["api.example.com"] > 0 && got["shop.example.com"] > 0 && got["auth.example.com"] > 0 {
				break
			}
		}
	}
	t.Logf("real hosts have rows after %d requests (halving every %d)", n, a.hosts.decayEvery)
	if n >= bound {
		t.Fatalf("real hosts still without rows after %d requests: %v", bound, a.Snapshot().Total.Hosts)
	}
	a.Rotate()
	feedReal(a, 300, sent)
	a.Rotate()
	s := a.Snapshot()
	for _, h := range realHosts {
		if got := rowMap(s.Window.Hosts)[h]; got != 100 {
			t.Errorf("window: %s has %d requests, want 100", h, got)
		}
	}
	checkRows(t, "total hosts", s.Total.Hosts, s.Total.Requests, max)
}

// Real hosts that hold their rows keep them, with exact counts, through a flood of junk
// (distinct hosts, or each twice in a row to build weight) that is most of the traffic.
func TestRealRowsSurviveJunkFlood(t *testing.T) {
	for _, repeat := range []int{1, 2} {
		t.Run(fmt.Sprintf("repeat=%d", repeat), func(t *testing.T) {
			const max = 10
			a := New(Options{MaxHosts: max, MaxPaths: max})
			real := []string{"r0", "r1", "r2", "r3", "r4"}
			sent := map[string]uint64{}
			for i := 0; i < 5*len(real); i++ { // established: a few requests each
				h := real[i%len(real)]
				a.Observe(req("GET", h, "/", 200, time.Millisecond))
				sent[h]++
			}
			junk := 0
			for i := 0; i < 50000; i++ {
				if i%4 == 0 { // 25% real, 5% each
					h := real[i/4%len(real)]
					a.Observe(req("GET", h, "/", 200, time.Millisecond))
					sent[h]++
					continue
				}
				a.Observe(req("GET", fmt.Sprintf("junk%d", junk/repeat), "/", 200, time.Millisecond))
				junk++
				if i%10000 == 9999 {
					a.Rotate()
				}
			}
			s := a.Snapshot()
			got := rowMap(s.Total.Hosts)
			for _, h := range real {
				if got[h] != sent[h] {
					t.Errorf("%s: %d requests in its row, %d sent", h, got[h], sent[h])
				}
			}
			checkRows(t, "total hosts", s.Total.Hosts, s.Total.Requests, max)
			checkRanker(t, a.hosts)
		})
	}
}

// Whatever the stream (distinct keys, pairs, a skewed mix, with epochs), the Ranker stays
// within its bounds and consistent.
func TestRankerBoundedUnderRandomStream(t *testing.T) {
	n := 1000000
	if testing.Short() {
		n = 100000
	}
	rng := rand.New(rand.NewPCG(3, 4))
	r := NewRanker(50)
	zipf := rand.NewZipf(rng, 1.2, 1, 100000)
	var key []byte
	for i := 0; i < n; i++ {
		switch rng.IntN(4) {
		case 0:
			key = fmt.Appendf(key[:0], "distinct%d", i)
		case 1:
			key = fmt.Appendf(key[:0], "pair%d", i/2)
		case 2:
			key = fmt.Appendf(key[:0], "zipf%d", zipf.Uint64())
		default:
			key = fmt.Appendf(key[:0], "real%d", rng.IntN(20))
		}
		slot, _, _ := r.Observe(key)
		if slot >= 0 && r.Key(slot) != string(key) {
			t.Fatalf("%q counted in slot %d of %q", key, slot, r.Key(slot))
		}
		if i%50000 == 0 {
			r.NextEpoch()
			checkRanker(t, r)
		}
	}
	checkRanker(t, r)
	reals := 0
	for _, k := range r.keys {
		if strings.HasPrefix(k, "real") {
			reals++
		}
	}
	if reals != 20 {
		t.Errorf("%d of the 20 real keys (1.25%% of the traffic each) have a slot: %v", reals, r.keys)
	}
}

// The aggregator's memory stays flat under a long stream that keeps slots changing hands
// (pairs of junk and a skewed mix, with windows), and its rows stay bounded and add up.
func TestBoundedMemoryWithChurn(t *testing.T) {
	if testing.Short() {
		t.Skip("slow")
	}
	a := New(Options{MaxHosts: 50, MaxPaths: 50})
	rng := rand.New(rand.NewPCG(5, 6))
	r := &model.Request{Method: "GET", Status: 200, Latency: 3 * time.Millisecond, End: t0}
	feed := func(from, to int) {
		for i := from; i < to; i++ {
			k := i / 2
			if rng.IntN(2) == 0 {
				k = rng.IntN(200)
			}
			r.Host = fmt.Sprintf("h%d.example.com", k)
			r.URI = junkPath(k)
			a.Observe(r)
			if i%20000 == 0 {
				a.Rotate()
				a.Snapshot()
			}
		}
	}
	feed(0, 50000)
	a.Rotate()
	a.Snapshot()
	before := heap()
	runtime.KeepAlive(a)
	feed(50000, 600000)
	a.Rotate()
	s := a.Snapshot()
	after := heap()
	runtime.KeepAlive(a)
	checkRows(t, "total hosts", s.Total.Hosts, s.Total.Requests, 50)
	checkRows(t, "total paths", s.Total.Paths, s.Total.Requests, 50)
	checkRows(t, "window hosts", s.Window.Hosts, s.Window.Requests, 50)
	checkRanker(t, a.hosts)
	checkRanker(t, a.paths)
	t.Logf("heap before %d KiB, after 550000 more requests with churn %d KiB", before>>10, after>>10)
	if growth := int64(after) - int64(before); growth > 256<<10 {
		t.Errorf("heap grew by %d KiB", growth>>10)
	}
}

func heap() uint64 {
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// Junk that only counts as a candidate (every slot held) costs no allocation either.
func TestObserveJunkDoesNotAllocate(t *testing.T) {
	a := New(Options{MaxHosts: 10, MaxPaths: 10})
	reqs := make([]*model.Request, 5000)
	for i := range reqs {
		reqs[i] = req("GET", fmt.Sprintf("junk%d.example.com", i), junkPath(i), 200, time.Millisecond)
	}
	for _, r := range reqs[:100] {
		a.Observe(r)
	}
	i := 100
	if n := testing.AllocsPerRun(1000, func() { a.Observe(reqs[i]); i++ }); n != 0 {
		t.Errorf("Observe of distinct junk allocates %v times per request", n)
	}
}

// Worst case for the Ranker: junk in pairs, so that slots keep changing hands.
func BenchmarkObservePairs(b *testing.B) {
	a := New(Options{})
	reqs := make([]*model.Request, 8192)
	for i := range reqs {
		reqs[i] = req("GET", fmt.Sprintf("h%d.example.com", i/2), fmt.Sprintf("/p%dx", i/2), 200, time.Millisecond)
	}
	b.ReportAllocs()
	defer reportCPU(b)()
	for i := 0; b.Loop(); i++ {
		a.Observe(reqs[i%len(reqs)])
	}
}
