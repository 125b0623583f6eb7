package probes

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"

	"github.com/kong-watcher/kong-watcher/bpf"
	"github.com/kong-watcher/kong-watcher/test/fixture"
)

func get(t *testing.T, c *http.Client, url string) {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
}

// warmUntilReady calls send until p has learnt the layout (calibration's records carry less
// than the hot path's), for at most 10 s, and returns how many times it called it.
func warmUntilReady(t *testing.T, p *Probes, send func()) int {
	t.Helper()
	warm := 0
	for deadline := time.Now().Add(10 * time.Second); p.Status().Mode != "ready"; warm++ {
		if time.Now().After(deadline) {
			t.Fatalf("no layout learnt after %d requests: %+v", warm, p.Status())
		}
		send()
		time.Sleep(20 * time.Millisecond)
	}
	return warm
}

// TestTrackSetPIDsUntrack: the kernel filter follows SetPIDs (plus the master, whose
// children the kernel adopts), and Untrack removes everything and detaches.
func TestTrackSetPIDsUntrack(t *testing.T) {
	requireOuter(t)
	n := startNginx(t)
	p, c := startProbes(t, n, Options{})
	gw := n.Gateway(t)
	if st := p.Status(); st.AttachedBinaries != 1 || st.TrackedPIDs != 2 {
		t.Fatalf("status %+v", st)
	}
	if got, want := filterPIDs(t, p), pidSet(gw.Master.PID, gw.Workers[0].PID, gw.Workers[1].PID); got != want {
		t.Fatalf("kernel filter %s, want %s (master and workers)", got, want)
	}
	// Tracking the same gateway again (a discovery refresh) changes nothing.
	if err := p.Track(gw); err != nil {
		t.Fatal(err)
	}
	keep, other := gw.Workers[0].PID, gw.Workers[1].PID
	p.SetPIDs(gw.ID(), []int{keep})
	if st := p.Status(); st.TrackedPIDs != 1 {
		t.Fatalf("status after SetPIDs %+v", st)
	}
	if got, want := filterPIDs(t, p), pidSet(gw.Master.PID, keep); got != want {
		t.Fatalf("kernel filter after SetPIDs %s, want %s", got, want)
	}
	// The dropped worker is still a child of the tracked master: the kernel adopts it at its
	// first request, so nothing is lost.
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	for i := 0; i < 60; i++ {
		get(t, client, fmt.Sprintf("http://127.0.0.1:%d/ok?id=%d", n.Port, i))
	}
	time.Sleep(400 * time.Millisecond) // an extra record from the agent would arrive by then
	lines := waitAccessLog(t, n, 60)
	byOther := 0
	for _, l := range lines {
		if l.PID == other {
			byOther++
		}
	}
	got := c.waitFor(t, len(lines), 3*time.Second)
	st := p.Status()
	if len(got) != len(lines) || (byOther > 0) != (st.AdoptedPIDs > 0) {
		t.Fatalf("agent saw %d of %d requests (%d by the dropped worker), status %+v", len(got), len(lines), byOther, st)
	}
	t.Logf("dropped worker %d served %d of %d requests; agent saw all; adopted %d", other, byOther, len(lines), st.AdoptedPIDs)
	// The next SetPIDs keeps the adopted entry of a live child of the master.
	p.SetPIDs(gw.ID(), []int{keep})
	if byOther > 0 {
		if got, want := filterPIDs(t, p), pidSet(gw.Master.PID, keep, other); got != want {
			t.Fatalf("kernel filter after second SetPIDs %s, want %s", got, want)
		}
	}

	p.Untrack(gw.ID())
	if st := p.Status(); st.AttachedBinaries != 0 || st.TrackedPIDs != 0 {
		t.Fatalf("status after Untrack %+v", st)
	}
	if f := filterPIDs(t, p); f != "[]" {
		t.Fatalf("kernel filter after Untrack %s", f)
	}
	for i := 0; i < 20; i++ {
		get(t, client, fmt.Sprintf("http://127.0.0.1:%d/ok?after=%d", n.Port, i))
	}
	time.Sleep(400 * time.Millisecond)
	if after := c.snapshot(); len(after) != len(got) {
		t.Fatalf("%d requests seen after Untrack", len(after)-len(got))
	}
	// Track again: attaches again and the learnt layout... is learnt again.
	if err := p.Track(n.Gateway(t)); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 20; i++ {
		get(t, client, fmt.Sprintf("http://127.0.0.1:%d/ok?again=%d", n.Port, i))
	}
	c.waitFor(t, len(got)+20, 3*time.Second)
	if st := p.Status(); st.AttachedBinaries != 1 || st.Mode != "ready" || st.DecodeErrors != 0 {
		t.Fatalf("status after re-Track %+v", st)
	}
}

// filterPIDs lists the kernel filter's keys, sorted, as a string.
func filterPIDs(t testing.TB, p *Probes) string {
	t.Helper()
	var (
		k    uint32
		v    bpf.NginxReqNginxreqProc
		pids []int
	)
	it := p.objs.NginxreqProcs.Iterate()
	for it.Next(&k, &v) {
		pids = append(pids, int(k))
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	return pidSet(pids...)
}

func pidSet(pids ...int) string {
	s := append([]int(nil), pids...)
	sort.Ints(s)
	return fmt.Sprint(s)
}

// TestReload: after `nginx -s reload` the workers are new processes; SetPIDs moves the
// filter to them, the binary stays attached and its learnt layout stays valid.
func TestReload(t *testing.T) {
	requireOuter(t)
	n := startNginx(t)
	p, c := startProbes(t, n, Options{})
	gw := n.Gateway(t)
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	for i := 0; i < 20; i++ {
		get(t, client, fmt.Sprintf("http://127.0.0.1:%d/ok?before=%d", n.Port, i))
	}
	c.waitFor(t, 20, 3*time.Second)
	if st := p.Status(); st.Mode != "ready" {
		t.Fatalf("status %+v", st)
	}
	calib := p.Status().Calibration

	old := map[int]bool{}
	for _, w := range gw.Workers {
		old[w.PID] = true
	}
	if err := syscall.Kill(n.Master, syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	var fresh []int
	for deadline := time.Now().Add(10 * time.Second); ; {
		fresh = fresh[:0]
		ws := n.Workers()
		for _, w := range ws {
			if !old[w.PID] {
				fresh = append(fresh, w.PID)
			}
		}
		if len(fresh) == 2 && len(ws) == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no new workers after reload: %v", ws)
		}
		time.Sleep(50 * time.Millisecond)
	}
	p.SetPIDs(gw.ID(), fresh)
	for i := 0; i < 30; i++ {
		get(t, client, fmt.Sprintf("http://127.0.0.1:%d/ok?after=%d", n.Port, i))
	}
	got := c.waitFor(t, 50, 3*time.Second)
	after := 0
	for _, r := range got {
		if strings.Contains(r.URI, "after=") {
			after++
			if r.PID != fresh[0] && r.PID != fresh[1] || r.Latency < 0 || r.Status != 200 {
				t.Fatalf("bad record after reload: %+v", r)
			}
		}
	}
	st := p.Status()
	if after != 30 || st.Calibration != calib || st.DecodeErrors != 0 || st.TrackedPIDs != 2 {
		t.Fatalf("after reload: %d records, status %+v (calibration events before %d)", after, st, calib)
	}
}

// TestSetLuaPhases: Lua timing switched on and off at run time (duty cycling), with traffic
// running through the switch; no request is lost.
func TestSetLuaPhases(t *testing.T) {
	requireOuter(t)
	n := startNginx(t)
	p, c := startProbes(t, n, Options{})
	client := &http.Client{}
	answered := 0 // requests answered, each logged by nginx
	send := func(tag string, k int) {
		for i := 0; i < k; i++ {
			get(t, client, fmt.Sprintf("http://127.0.0.1:%d/phases?%s=%d", n.Port, tag, i))
			answered++
		}
	}
	warmUntilReady(t, p, func() { send("warm", 1) })
	send("off1", 20)
	if err := p.SetLuaPhases(true); err != nil {
		t.Fatal(err)
	}
	if !p.Status().LuaPhases {
		t.Fatal("Status.LuaPhases false after SetLuaPhases(true)")
	}
	send("on", 20)
	// Switch off while requests are in flight.
	done := make(chan struct{})
	during := 0
	go func() {
		defer close(done)
		c := &http.Client{}
		for i := 0; i < 200; i++ {
			resp, err := c.Get(fmt.Sprintf("http://127.0.0.1:%d/ok?during=%d", n.Port, i))
			if err != nil {
				return
			}
			during++
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	}()
	time.Sleep(20 * time.Millisecond)
	if err := p.SetLuaPhases(false); err != nil {
		t.Fatal(err)
	}
	<-done
	send("off2", 20)
	time.Sleep(400 * time.Millisecond) // an extra record from the agent would arrive by then
	lines := waitAccessLog(t, n, answered+during)
	got := c.waitFor(t, len(lines), 3*time.Second)
	if len(got) != len(lines) {
		t.Fatalf("agent saw %d requests, access log has %d (status %+v)", len(got), len(lines), p.Status())
	}
	counts := map[string][2]int{}
	for _, r := range got {
		tag := strings.SplitN(strings.TrimPrefix(r.URI, "/phases?"), "=", 2)[0]
		if strings.HasPrefix(r.URI, "/ok") {
			tag = "during"
		}
		cnt := counts[tag]
		if r.HasLua {
			cnt[1]++
		} else {
			cnt[0]++
		}
		counts[tag] = cnt
	}
	t.Logf("[without, with] Lua timing: %v; status %+v", counts, p.Status())
	if counts["off1"][1] != 0 || counts["off2"][1] != 0 || counts["on"][0] != 0 || counts["on"][1] != 20 {
		t.Fatalf("Lua timing in the wrong periods: %v", counts)
	}
}

// TestDrainPending: an event still parked for the free_request return probe when Lua timing
// is switched off is recovered and delivered, not lost.
func TestDrainPending(t *testing.T) {
	requireOuter(t)
	p, err := New(Options{LuaPhases: true, Log: testr.New(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	ev := sampleEvent()
	if err := p.objs.NginxreqPending.Put(uint64(7)<<32|7, &ev); err != nil {
		t.Fatal(err)
	}
	c := &collector{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx, c) }()
	if err := p.SetLuaPhases(false); err != nil {
		t.Fatal(err)
	}
	got := c.waitFor(t, 1, 2*time.Second)
	cancel()
	<-done
	if len(got) != 1 || got[0].URI != "/users/1?x=1" || got[0].HasLua {
		t.Fatalf("got %+v", got)
	}
	var k uint64
	var v rawEvent
	if p.objs.NginxreqPending.Iterate().Next(&k, &v) {
		t.Fatal("pending map not drained")
	}
}

// TestSharedBinary: two gateways running the same nginx executable share one attachment;
// it stays until the last of them is untracked.
func TestSharedBinary(t *testing.T) {
	requireOuter(t)
	a, b := startNginx(t), startNginx(t)
	p, c := startProbes(t, a, Options{})
	if err := p.Track(b.Gateway(t)); err != nil {
		t.Fatal(err)
	}
	if st := p.Status(); st.AttachedBinaries != 1 || st.TrackedPIDs != 4 {
		t.Fatalf("status %+v", st)
	}
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	hit := func(n *testNginx, tag string, k int) {
		for i := 0; i < k; i++ {
			get(t, client, fmt.Sprintf("http://127.0.0.1:%d/ok?%s=%d", n.Port, tag, i))
		}
	}
	hit(a, "a1", 10)
	hit(b, "b1", 10)
	c.waitFor(t, 20, 3*time.Second)
	p.Untrack(a.Gateway(t).ID())
	if st := p.Status(); st.AttachedBinaries != 1 || st.TrackedPIDs != 2 {
		t.Fatalf("status after untracking one %+v", st)
	}
	hit(a, "a2", 10)
	hit(b, "b2", 10)
	time.Sleep(500 * time.Millisecond)
	count := map[string]int{}
	for _, r := range c.snapshot() {
		count[strings.SplitN(strings.TrimPrefix(r.URI, "/ok?"), "=", 2)[0]]++
	}
	if count["a1"] != 10 || count["b1"] != 10 || count["a2"] != 0 || count["b2"] != 10 {
		t.Fatalf("requests seen per gateway/period: %v", count)
	}
	p.Untrack(b.Gateway(t).ID())
	if st := p.Status(); st.AttachedBinaries != 0 || st.TrackedPIDs != 0 {
		t.Fatalf("status after untracking both %+v", st)
	}
}

// TestTwoBinaries: two different nginx executables (a copy has its own inode) get their own
// attachment and their own layout slot; each learns, and requests of both are seen.
func TestTwoBinaries(t *testing.T) {
	requireOuter(t)
	a := startNginx(t)
	cp := filepath.Join(t.TempDir(), "nginx-copy")
	data, err := os.ReadFile(a.Gateway(t).Exe)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cp, data, 0o755); err != nil {
		t.Fatal(err)
	}
	b := startNginxWith(t, fixture.Options{Nginx: cp})
	p, c := startProbes(t, a, Options{})
	if err := p.Track(b.Gateway(t)); err != nil {
		t.Fatal(err)
	}
	if st := p.Status(); st.AttachedBinaries != 2 || st.TrackedPIDs != 4 {
		t.Fatalf("status %+v", st)
	}
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	for i := 0; i < 15; i++ {
		get(t, client, fmt.Sprintf("http://127.0.0.1:%d/ok?a=%d", a.Port, i))
		get(t, client, fmt.Sprintf("http://127.0.0.1:%d/ok?b=%d", b.Port, i))
	}
	got := c.waitFor(t, 30, 3*time.Second)
	st := p.Status()
	if len(got) != 30 || st.Mode != "ready" || strings.Count(st.Layout, "start_sec=960") != 2 {
		t.Fatalf("%d requests, status %+v", len(got), st)
	}
	t.Logf("layouts: %s", st.Layout)
}
