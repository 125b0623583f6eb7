package probes

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/go-logr/logr"
	"github.com/go-logr/logr/testr"
	"golang.org/x/sys/unix"

	"github.com/kong-watcher/kong-watcher/agent/model"
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

// adoptNewWorkers: nginx forks new workers (mode "reload": SIGHUP; "kill": both workers
// killed with SIGKILL, twice, the second time the workers the kernel itself adopted) and
// requests reach them before anyone calls SetPIDs. The kernel adopts them (their parent,
// the master, is in the filter), so the agent sees exactly what the access log has. Then
// SetPIDs reconciles the filter: the master and the live workers, nothing else.
func adoptNewWorkers(t *testing.T, n *testNginx, mode string) {
	p, c := startProbes(t, n, Options{})
	gw := n.Gateway(t)
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	sent := 0
	send := func(tag string, k int) {
		for i := 0; i < k; i++ {
			get(t, client, fmt.Sprintf("http://127.0.0.1:%d/ok?id=%d&%s", n.Port, sent, tag))
			sent++
		}
	}
	send("before", 10)
	c.waitFor(t, 10, 3*time.Second)
	if st := p.Status(); st.Mode != "ready" {
		t.Fatalf("status %+v", st)
	}
	workers := func() map[int]bool {
		m := map[int]bool{}
		for _, w := range n.Workers() {
			m[w.PID] = true
		}
		return m
	}
	var fresh map[int]bool
	rounds := 1
	if mode == "kill" {
		rounds = 2
	}
	for round := 0; round < rounds; round++ {
		old := workers()
		if mode == "reload" {
			if err := syscall.Kill(n.Master, syscall.SIGHUP); err != nil {
				t.Fatal(err)
			}
		} else {
			// A worker logs (and calls free_request) just after the client has its
			// response: let it finish, or the request is neither logged nor seen.
			for deadline := time.Now().Add(3 * time.Second); len(readAccessLog(t, n)) < sent; {
				if time.Now().After(deadline) {
					t.Fatal("access log behind")
				}
				time.Sleep(5 * time.Millisecond)
			}
			for pid := range old {
				syscall.Kill(pid, syscall.SIGKILL)
			}
			// Wait until they are gone (reaped by the master): connections then queue for
			// the workers it forks.
			for deadline := time.Now().Add(5 * time.Second); ; {
				alive := 0
				for pid := range workers() {
					if old[pid] {
						alive++
					}
				}
				if alive == 0 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("killed workers still there")
				}
				time.Sleep(5 * time.Millisecond)
			}
		}
		// Requests right away, while the new workers start (and, on reload, the old ones
		// stop accepting); no SetPIDs.
		for deadline := time.Now().Add(10 * time.Second); ; {
			send(fmt.Sprintf("round=%d", round), 5)
			fresh = map[int]bool{}
			ws := workers()
			for pid := range ws {
				if !old[pid] {
					fresh[pid] = true
				}
			}
			if len(fresh) == 2 && len(ws) == 2 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("no new workers: %v", ws)
			}
		}
		send(fmt.Sprintf("round=%d", round), 20)
	}
	lines, got := settle(t, n, c, 300*time.Millisecond)
	st := p.Status()
	seen := map[string]int{}
	byFresh := 0
	for _, r := range got {
		seen[reqKey(r.URI, r.Method, r.Status)]++
		if fresh[r.PID] {
			byFresh++
		}
	}
	var missing []string
	for _, l := range lines {
		if k := reqKey(l.RequestURI, l.Method, l.Status); seen[k] != 1 {
			missing = append(missing, fmt.Sprintf("%+v", l))
		}
	}
	t.Logf("%s: sent %d, %d log lines, %d agent records (%d from the last new workers %v); status %+v",
		mode, sent, len(lines), len(got), byFresh, fresh, st)
	if len(lines) != sent || len(got) != len(lines) || len(missing) > 0 {
		t.Fatalf("agent and access log disagree: %d log lines, %d records; not seen exactly once: %q", len(lines), len(got), missing)
	}
	if st.AdoptedPIDs == 0 || byFresh == 0 || st.DecodeErrors != 0 || st.Calibration > 10 {
		t.Fatalf("no adoption (%d requests by new workers), status %+v", byFresh, st)
	}
	// Adopted entries carry the master's value (same binary, same load address).
	var mv, wv bpf.NginxReqNginxreqProc
	if err := p.objs.NginxreqProcs.Lookup(uint32(gw.Master.PID), &mv); err != nil {
		t.Fatalf("master not in the filter: %v", err)
	}
	for pid := range fresh {
		if err := p.objs.NginxreqProcs.Lookup(uint32(pid), &wv); err == nil && wv != mv {
			t.Fatalf("adopted worker %d: %+v, master %+v", pid, wv, mv)
		}
	}
	// On reload the old workers exit once idle: wait, then user space reconciles.
	var live []int
	for deadline := time.Now().Add(10 * time.Second); ; {
		live = live[:0]
		for pid := range workers() {
			live = append(live, pid)
		}
		if len(live) == 2 || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	p.SetPIDs(gw.ID(), live)
	if got, want := filterPIDs(t, p), pidSet(append(live, gw.Master.PID)...); got != want {
		t.Fatalf("kernel filter after SetPIDs %s, want %s (master and live workers)", got, want)
	}
	if st := p.Status(); st.TrackedPIDs != 2 {
		t.Fatalf("status after SetPIDs %+v", st)
	}
	p.Untrack(gw.ID())
	if f := filterPIDs(t, p); f != "[]" {
		t.Fatalf("kernel filter after Untrack %s", f)
	}
}

// adoptTest runs in the test's own PID namespace, or inside TestPIDNamespaceAdopt's.
func adoptTest(t *testing.T) bool {
	if e := os.Getenv(innerEnv); e != "" && e != "pidns" {
		t.Skip("inner run")
	}
	requireIntegration(t)
	return true
}

// TestReloadAdoptsWorkers: after `nginx -s reload`, requests served by the new workers before
// SetPIDs are all seen.
func TestReloadAdoptsWorkers(t *testing.T) {
	adoptTest(t)
	n := startNginx(t)
	checkInnerPIDNS(t, n)
	adoptNewWorkers(t, n, "reload")
}

// TestRespawnAdoptsWorkers: workers killed with SIGKILL are respawned by the master; their
// successors' requests are seen before SetPIDs.
func TestRespawnAdoptsWorkers(t *testing.T) {
	adoptTest(t)
	n := startNginx(t)
	checkInnerPIDNS(t, n)
	adoptNewWorkers(t, n, "kill")
}

// TestPIDNamespaceAdopt: both adoption tests with the agent and nginx in a child PID
// namespace (the parent's PID is read at the agent's namespace level).
func TestPIDNamespaceAdopt(t *testing.T) {
	requireOuter(t, "unshare")
	for _, test := range []string{"TestReloadAdoptsWorkers", "TestRespawnAdoptsWorkers"} {
		out := runInner(t, []string{"unshare", "--pid", "--fork", "--mount-proc"}, test, innerEnv+"=pidns")
		for _, l := range strings.Split(out, "\n") {
			if strings.Contains(l, "agent records") || strings.Contains(l, "inner pid namespace") {
				t.Log(strings.TrimSpace(l))
			}
		}
	}
}

// TestNginxInChildNamespaceAdopts: the agent in the initial PID namespace, nginx in a
// container's: the parent is found by its global tgid.
func TestNginxInChildNamespaceAdopts(t *testing.T) {
	requireOuter(t, "unshare")
	requireInitialPIDNamespace(t)
	n := startNginxWrapped(t, "unshare", "--pid", "--fork")
	adoptNewWorkers(t, n, "reload")
}

// TestThroughput measures what the probes cost nginx: wrk against `return 200`, alternating
// no probes / probes / probes + Lua phase probes. Set KW_BENCH=1 to run it.
func TestThroughput(t *testing.T) {
	if os.Getenv("KW_BENCH") != "1" {
		t.Skip("set KW_BENCH=1")
	}
	requireIntegration(t, "wrk")
	n := startNginx(t)
	url := fmt.Sprintf("http://127.0.0.1:%d/ok", n.Port)
	re := regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)
	reN := regexp.MustCompile(`([0-9]+) requests in`)
	workers := n.Workers()
	// nginx workers' CPU time (user+sys, clock ticks): the uprobe traps are charged to them,
	// and CPU per request is far less sensitive than req/s to the other tenants of this VM.
	cpu := func() (ticks uint64) {
		for _, w := range workers {
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", w.PID))
			if err != nil {
				t.Fatal(err)
			}
			s := string(b)
			fs := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
			u, _ := strconv.ParseUint(fs[11], 10, 64)
			k, _ := strconv.ParseUint(fs[12], 10, 64)
			ticks += u + k
		}
		return ticks
	}
	var lastCPU []float64
	wrk := func() float64 {
		c0 := cpu()
		out, err := exec.Command("wrk", "-t1", "-c20", "-d5s", url).CombinedOutput()
		if err != nil {
			t.Fatalf("wrk: %v\n%s", err, out)
		}
		m, mn := re.FindSubmatch(out), reN.FindSubmatch(out)
		if m == nil || mn == nil {
			t.Fatalf("wrk output: %s", out)
		}
		v, _ := strconv.ParseFloat(string(m[1]), 64)
		reqs, _ := strconv.ParseFloat(string(mn[1]), 64)
		lastCPU = append(lastCPU, float64(cpu()-c0)*1e4/reqs) // ticks are 10 ms: us per request
		return v
	}
	run := func(opts *Options) (float64, Status) {
		if opts == nil {
			return wrk(), Status{}
		}
		if opts.RingBufferBytes == -1 {
			// An empty BPF program on the same function: the bare cost of the uprobe.
			prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.Kprobe, AttachType: ebpf.AttachTraceUprobeMulti,
				License: "GPL", Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()}})
			if err != nil {
				t.Fatal(err)
			}
			defer prog.Close()
			ex, err := link.OpenExecutable(n.Gateway(t).Exe)
			if err != nil {
				t.Fatal(err)
			}
			l, err := ex.UprobeMulti([]string{"ngx_http_free_request"}, prog, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			return wrk(), Status{}
		}
		opts.Log = logr.Discard()
		p, err := New(*opts)
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		if err := p.Track(n.Gateway(t)); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		var seen int
		go func() {
			done <- p.Run(ctx, sinkFunc(func() { seen++ }))
		}()
		// learn the layout before measuring
		client := &http.Client{}
		for i := 0; i < 50 && p.Status().Mode != "ready"; i++ {
			get(t, client, url)
			time.Sleep(10 * time.Millisecond)
		}
		v := wrk()
		time.Sleep(300 * time.Millisecond)
		cancel()
		<-done
		st := p.Status()
		// Time spent inside the BPF programs (excludes the uprobe trap itself, ~0.5-1.3 us).
		for name, prog := range map[string]*ebpf.Program{"free_request": p.objs.NginxreqFreeRequest,
			"free_request_ret": p.objs.NginxreqFreeRequestRet, "lua_enter": p.objs.NginxreqLuaEnter,
			"lua_exit": p.objs.NginxreqLuaExit} {
			if ps, err := prog.Stats(); err == nil && ps.RunCount > 0 {
				t.Logf("  %-16s %8d runs, %5.0f ns/run in BPF", name, ps.RunCount, float64(ps.Runtime.Nanoseconds())/float64(ps.RunCount))
			}
		}
		return v, st
	}
	if c, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME)); err == nil {
		defer c.Close()
	}
	names := []string{"none", "empty-uprobe", "probes", "probes+lua"}
	res, cpuRes := map[string][]float64{}, map[string][]float64{}
	for round := 0; round < 3; round++ {
		for _, name := range names {
			var v float64
			var st Status
			switch name {
			case "none":
				v, _ = run(nil)
			case "empty-uprobe":
				v, st = run(&Options{RingBufferBytes: -1})
			case "probes":
				v, st = run(&Options{})
			case "probes+lua":
				v, st = run(&Options{LuaPhases: true})
			}
			res[name] = append(res[name], v)
			cpuRes[name] = append(cpuRes[name], lastCPU[len(lastCPU)-1])
			t.Logf("round %d %-10s %8.0f req/s  %5.1f us worker CPU/request  decoded %d dropped %d errors %d",
				round, name, v, lastCPU[len(lastCPU)-1], st.Decoded, st.Dropped, st.DecodeErrors)
		}
	}
	med := func(xs []float64) float64 {
		s := append([]float64(nil), xs...)
		sort.Float64s(s)
		return s[len(s)/2]
	}
	base := med(res["none"])
	var sum []string
	for _, name := range names {
		sum = append(sum, fmt.Sprintf("%s %.0f req/s (%.2f), %.1f us CPU/req", name, med(res[name]), med(res[name])/base, med(cpuRes[name])))
	}
	t.Logf("median req/s (ratio to none): %s", strings.Join(sum, ", "))
}

type sinkFunc func()

func (f sinkFunc) Observe(_ *model.Request) { f() }

// TestDropsCounted: with a one-page ring buffer and nobody reading it, the kernel cannot
// queue the events, and every lost one is counted.
func TestDropsCounted(t *testing.T) {
	requireOuter(t)
	n := startNginx(t)
	p, err := New(Options{RingBufferBytes: 4096, Log: testr.New(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if err := p.Track(n.Gateway(t)); err != nil {
		t.Fatal(err)
	}
	client := &http.Client{}
	const reqs = 30
	for i := 0; i < reqs; i++ {
		get(t, client, fmt.Sprintf("http://127.0.0.1:%d/ok?i=%d", n.Port, i))
	}
	st := p.Status()
	// A calibration event is ~2.8 KB: one fits in a page, the rest are dropped and counted.
	if st.Dropped < reqs-2 || st.Dropped > reqs {
		t.Fatalf("dropped %d of %d (status %+v)", st.Dropped, reqs, st)
	}
	t.Logf("dropped %d of %d", st.Dropped, reqs)
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
	for deadline := time.Now().Add(10 * time.Second); p.Status().Mode != "ready"; {
		if time.Now().After(deadline) {
			t.Fatalf("no layout: %+v", p.Status())
		}
		send("warm", 1)
		time.Sleep(20 * time.Millisecond)
	}
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
