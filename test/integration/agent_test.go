// Package integration runs the real agent binary, as root, against the real Kong-like
// gateway fixture (Debian nginx + the Lua module) with real eBPF probes in this kernel, and
// checks what the agent counts against nginx's own access log.
package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kong-watcher/kong-watcher/agent/pathnorm"
	"github.com/kong-watcher/kong-watcher/api/v1alpha1"
	"github.com/kong-watcher/kong-watcher/test/fixture"
)

var (
	buildOnce sync.Once
	agentBin  string
	agentDir  string // where this process built agentBin; "" when it reuses another's
	buildErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	// Each run builds its own binary: leaving it would add one to /tmp per run.
	if agentDir != "" {
		os.RemoveAll(agentDir)
	}
	os.Exit(code)
}

// agentBinary builds cmd/agent once per test run, as `make build` does.
func agentBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "kw-agent-bin-")
		if err != nil {
			buildErr = err
			return
		}
		agentDir, agentBin = dir, filepath.Join(dir, "kong-watcher-agent")
		cmd := exec.Command("go", "build", "-o", agentBin, "github.com/kong-watcher/kong-watcher/cmd/agent")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build ./cmd/agent: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return agentBin
}

// agent is a running agent process.
type agent struct {
	cmd  *exec.Cmd
	addr string
	log  *fixture.SyncBuffer
	done chan struct{}
}

// agentAddr returns a free loopback address for the agent's endpoints (METRICS_ADDR). The
// agent binds it itself and takes no port 0, so the port is only free when chosen here. It
// is chosen at random below the kernel's ephemeral range, from which every bind to port 0
// and every outgoing connection takes its port, so that no other process is given it
// before the agent binds it; waitFor still checks that the listener is the agent's.
func agentAddr(t *testing.T) string {
	t.Helper()
	low := 32768
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range"); err == nil {
		if f := strings.Fields(string(b)); len(f) == 2 {
			if n, err := strconv.Atoi(f[0]); err == nil {
				low = n
			}
		}
	}
	const first = 10000
	if low <= first+1000 {
		t.Fatalf("ephemeral ports start at %d: no room below for the agent's port", low)
	}
	for range 100 {
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(first+rand.IntN(low-first)))
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			continue // taken: another one
		}
		ln.Close()
		return addr
	}
	t.Fatal("no free port for the agent below the ephemeral range")
	return ""
}

// listensOn reports whether process pid has a socket listening on addr (IPv4 host:port):
// a 200 from another process that took the port would otherwise pass for the agent's.
func listensOn(pid int, addr string) bool {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	ip := net.ParseIP(host).To4()
	p, err := strconv.Atoi(port)
	if ip == nil || err != nil {
		return false
	}
	// /proc/net/tcp writes the address as the hex of its 32-bit value in host (little-endian)
	// order, the port in hex; state 0A is LISTEN.
	local := fmt.Sprintf("%02X%02X%02X%02X:%04X", ip[3], ip[2], ip[1], ip[0], p)
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/tcp", pid))
	if err != nil {
		return false
	}
	inodes := map[string]bool{}
	for _, line := range strings.Split(string(b), "\n")[1:] {
		f := strings.Fields(line)
		if len(f) > 9 && f[1] == local && f[3] == "0A" {
			inodes["socket:["+f[9]+"]"] = true
		}
	}
	fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	for _, fd := range fds {
		if l, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name())); err == nil && inodes[l] {
			return true
		}
	}
	return false
}

// startAgent runs the agent binary (optionally through a wrapper such as setpriv), limited
// to the gateway whose master is masterPID, and stops it when the test ends.
func startAgent(t *testing.T, masterPID int, wrapper []string, env ...string) *agent {
	t.Helper()
	fixture.RequireRoot(t)
	bin := agentBinary(t)
	a := &agent{addr: agentAddr(t), log: &fixture.SyncBuffer{}, done: make(chan struct{})}
	args := append(append([]string{}, wrapper...), bin)
	a.cmd = exec.Command(args[0], args[1:]...)
	a.cmd.Env = append(os.Environ(),
		"METRICS_ADDR="+a.addr,
		"LOG_LEVEL=info",
		"STATS_INTERVAL=1h",
	)
	if masterPID > 0 {
		a.cmd.Env = append(a.cmd.Env, "KONG_WATCHER_ONLY_PIDS="+strconv.Itoa(masterPID))
	}
	a.cmd.Env = append(a.cmd.Env, env...)
	a.cmd.Stdout = a.log
	a.cmd.Stderr = a.log
	if err := a.cmd.Start(); err != nil {
		t.Fatalf("starting the agent: %v", err)
	}
	go func() { a.cmd.Wait(); close(a.done) }()
	t.Cleanup(func() {
		a.stop()
		if t.Failed() {
			t.Logf("agent log:\n%s", tail(a.log.String(), 6000))
		}
	})
	return a
}

func (a *agent) stop() {
	select {
	case <-a.done:
		return
	default:
	}
	a.cmd.Process.Signal(os.Interrupt)
	select {
	case <-a.done:
	case <-time.After(10 * time.Second):
		a.cmd.Process.Kill()
		<-a.done
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// waitReady waits for /readyz to answer 200.
func (a *agent) waitReady(t *testing.T, timeout time.Duration) { a.waitFor(t, "/readyz", timeout) }

// waitHealthy waits for /healthz to answer 200 (the agent serves, gateway or not).
func (a *agent) waitHealthy(t *testing.T, timeout time.Duration) { a.waitFor(t, "/healthz", timeout) }

func (a *agent) waitFor(t *testing.T, path string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last string
	for time.Now().Before(deadline) {
		select {
		case <-a.done:
			t.Fatalf("the agent exited: %v\n%s", a.cmd.ProcessState, tail(a.log.String(), 4000))
		default:
		}
		resp, err := http.Get("http://" + a.addr + path)
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			last = fmt.Sprintf("%d %s", resp.StatusCode, b)
			if !listensOn(a.cmd.Process.Pid, a.addr) {
				last = fmt.Sprintf("%s answered by a process other than the agent: %s", a.addr, last)
			} else if resp.StatusCode == 200 {
				return
			}
		} else {
			last = err.Error()
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("agent: %s not 200 after %v: %s", path, timeout, last)
}

// logLayout logs the layout of ngx_http_request_t the agent learnt (docs/kong.md lists them).
func logLayout(t *testing.T, a *agent) {
	t.Helper()
	for _, line := range strings.Split(a.log.String(), "\n") {
		if strings.Contains(line, "learnt nginx request layout") {
			t.Logf("agent: %s", strings.TrimSpace(line))
		}
	}
}

func (a *agent) readyz(t *testing.T) int {
	t.Helper()
	resp, err := http.Get("http://" + a.addr + "/readyz")
	if err != nil {
		t.Fatalf("GET /readyz: %v", err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func (a *agent) stats(t *testing.T) v1alpha1.Stats {
	t.Helper()
	resp, err := http.Get("http://" + a.addr + "/stats")
	if err != nil {
		t.Fatalf("GET /stats: %v", err)
	}
	defer resp.Body.Close()
	var s v1alpha1.Stats
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		t.Fatalf("decoding /stats: %v", err)
	}
	return s
}

// waitRequests polls /stats until the total reaches n and the document was computed well
// after the call (or a timeout), then returns it. The callers' requests have all been freed
// (logged) before the call, so such a document counts every one of them: /stats is served
// from a snapshot up to a second old, and one that reached n early (with requests the access
// log does not have) may still lack the last logged ones.
func (a *agent) waitRequests(t *testing.T, n uint64, timeout time.Duration) v1alpha1.Stats {
	t.Helper()
	// The agent reads its ring buffer at least every 150 ms.
	fresh := time.Now().Add(300 * time.Millisecond)
	deadline := time.Now().Add(timeout)
	for {
		s := a.stats(t)
		if (s.Total.Requests >= n && s.Updated.After(fresh)) || time.Now().After(deadline) {
			return s
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// truth is what nginx's access log says, in the agent's terms.
type truth struct {
	requests   int
	methods    map[string]uint64
	codes      map[string]uint64
	hosts      map[string]uint64
	paths      map[string]uint64
	latMs      []float64
	upstreamMs []float64
	errors     uint64
	clientErrs uint64
}

var knownMethods = map[string]bool{"GET": true, "POST": true, "PUT": true, "DELETE": true, "PATCH": true, "HEAD": true, "OPTIONS": true}

func fromAccessLog(es []fixture.LogEntry) truth {
	tr := truth{methods: map[string]uint64{}, codes: map[string]uint64{}, hosts: map[string]uint64{}, paths: map[string]uint64{}}
	for _, e := range es {
		tr.requests++
		m := e.Method
		if !knownMethods[m] {
			m = "OTHER"
		}
		tr.methods[m]++
		tr.codes[fmt.Sprintf("%03d", e.Status)]++
		tr.hosts[e.Host]++
		tr.paths[m+" "+pathnorm.Normalise(e.RequestURI)]++
		tr.latMs = append(tr.latMs, float64(e.RequestTime.Microseconds())/1000)
		if e.HasUpstream {
			tr.upstreamMs = append(tr.upstreamMs, float64(e.UpstreamTime.Microseconds())/1000)
		}
		switch {
		case e.Status >= 500 || e.Status == 0:
			tr.errors++
		case e.Status >= 400:
			tr.clientErrs++
		}
	}
	sort.Float64s(tr.latMs)
	sort.Float64s(tr.upstreamMs)
	return tr
}

// nearestRank is the p-th percentile (0..100) of sorted xs by the nearest-rank definition.
func nearestRank(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	rank := int(p/100*float64(len(xs)) + 0.9999999)
	if rank < 1 {
		rank = 1
	}
	if rank > len(xs) {
		rank = len(xs)
	}
	return xs[rank-1]
}

func within(got, want float64) bool {
	d := got - want
	if d < 0 {
		d = -d
	}
	return d <= 1.0 || d <= 0.02*want
}

func rows(rs []v1alpha1.Row) map[string]uint64 {
	out := map[string]uint64{}
	for _, r := range rs {
		out[r.Name] += r.Requests
	}
	return out
}

func diffCounts(t *testing.T, what string, got, want map[string]uint64) {
	t.Helper()
	diffCountsOf(t, what+" differ from the access log", "agent", "access log", got, want)
}

// diffCountsOf reports the keys whose counts differ between got (of gotName) and want.
func diffCountsOf(t *testing.T, what, gotName, wantName string, got, want map[string]uint64) {
	t.Helper()
	keys := map[string]bool{}
	for k := range got {
		keys[k] = true
	}
	for k := range want {
		keys[k] = true
	}
	var bad []string
	for k := range keys {
		if got[k] != want[k] {
			bad = append(bad, fmt.Sprintf("%q: %s %d, %s %d", k, gotName, got[k], wantName, want[k]))
		}
	}
	sort.Strings(bad)
	if len(bad) > 0 {
		t.Errorf("%s:\n  %s", what, strings.Join(bad, "\n  "))
	}
}

// compare checks the agent's total summary against the access log.
func compare(t *testing.T, s v1alpha1.Summary, es []fixture.LogEntry) {
	t.Helper()
	tr := compareCounts(t, s, es)
	diffCounts(t, "hosts", rows(s.Hosts), tr.hosts)
	diffCounts(t, "paths", rows(s.Paths), tr.paths)
	if s.DroppedEvents != 0 {
		t.Errorf("dropped events: %d", s.DroppedEvents)
	}
}

// compareCounts checks what every summary of the agent has, a listener's too (no host and
// path rows), against the access log es, and returns the log's account.
func compareCounts(t *testing.T, s v1alpha1.Summary, es []fixture.LogEntry) truth {
	t.Helper()
	tr := fromAccessLog(es)
	if s.Requests != uint64(tr.requests) {
		t.Errorf("requests: agent %d, access log %d", s.Requests, tr.requests)
	}
	if len(es) == 0 {
		return tr
	}
	if s.Errors != tr.errors || s.ClientErrors != tr.clientErrs {
		t.Errorf("errors/clientErrors: agent %d/%d, access log %d/%d", s.Errors, s.ClientErrors, tr.errors, tr.clientErrs)
	}
	diffCounts(t, "methods", s.Methods, tr.methods)
	diffCounts(t, "status codes", s.StatusCodes, tr.codes)
	for _, p := range []struct {
		name string
		got  float64
		q    float64
	}{{"p50", s.LatencyMs.P50, 50}, {"p95", s.LatencyMs.P95, 95}, {"p99", s.LatencyMs.P99, 99}} {
		if want := nearestRank(tr.latMs, p.q); !within(p.got, want) {
			t.Errorf("latency %s: agent %.3f ms, access log %.3f ms", p.name, p.got, want)
		}
	}
	if want := tr.latMs[len(tr.latMs)-1]; !within(s.LatencyMs.Max, want) {
		t.Errorf("latency max: agent %.3f ms, access log %.3f ms", s.LatencyMs.Max, want)
	}
	if uint64(len(tr.upstreamMs)) != s.UpstreamLatencyMs.Count {
		t.Errorf("proxied requests: agent %d, access log %d", s.UpstreamLatencyMs.Count, len(tr.upstreamMs))
	}
	for _, p := range []struct {
		name string
		got  float64
		q    float64
	}{{"p50", s.UpstreamLatencyMs.P50, 50}, {"p99", s.UpstreamLatencyMs.P99, 99}} {
		if want := nearestRank(tr.upstreamMs, p.q); !within(p.got, want) {
			t.Errorf("upstream latency %s: agent %.3f ms, access log %.3f ms", p.name, p.got, want)
		}
	}
	return tr
}

func driveAndCompare(t *testing.T, gw *fixture.Gateway, a *agent, n int) v1alpha1.Stats {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	before, err := gw.AccessLog()
	if err != nil {
		t.Fatal(err)
	}
	sent, err := gw.DriveMixed(ctx, n, 4)
	if err != nil {
		t.Logf("traffic: %v", err) // an unexpected status is nginx's business; the log is the truth
	}
	es, err := gw.WaitAccessLog(ctx, fixture.Traffic(before)+sent.Total())
	if err != nil {
		t.Fatal(err)
	}
	s := a.waitRequests(t, uint64(len(es)), 15*time.Second)
	compare(t, s.Total, es)
	return s
}

// TestAgentAgreesWithAccessLog drives a mixed Kong-like workload (HTTP/1.1 keep-alive,
// pipelining, HTTP/1.0, HTTPS, HTTP/2 from Go and curl, HEAD, chunked uploads, 4xx/5xx/502,
// slow upstream, Lua-only routes, large headers, garbage, client aborts) and checks every
// count and the latency percentiles against nginx's access log; then reloads nginx under
// the agent and checks again, and again after a reload and a worker's SIGKILL in the middle
// of traffic. It runs on every nginx of fixture.NginxBuilds: Debian's, and the stripped
// OpenResty lines Kong ships (KW_OPENRESTY).
func TestAgentAgreesWithAccessLog(t *testing.T) {
	for _, b := range fixture.NginxBuilds() {
		t.Run(b.Name, func(t *testing.T) {
			fixture.RequireBuild(t, b)
			agreesWithAccessLog(t, b.Options)
		})
	}
}

func agreesWithAccessLog(t *testing.T, opts fixture.Options) {
	opts.Workers = 2
	gw := fixture.StartT(t, opts)
	a := startAgent(t, gw.MasterPID(), nil)
	a.waitReady(t, 20*time.Second)

	s := driveAndCompare(t, gw, a, 400)
	logLayout(t, a)
	if s.DataPath != "nginx-request" {
		t.Errorf("data path %q, want nginx-request", s.DataPath)
	}
	if t.Failed() {
		return
	}

	// A reload replaces the workers; the agent must follow the new ones.
	if err := gw.Reload(); err != nil {
		t.Fatalf("reload: %v", err)
	}
	driveAndCompare(t, gw, a, 200)
	if t.Failed() {
		return
	}

	// A reload in the middle of traffic: new workers serve before discovery's next /proc
	// scan; the kernel adopts them as children of the tracked master, so none is lost.
	underLoad(t, gw, a, "reload", gw.Reload)
	if t.Failed() {
		return
	}
	// A worker's death in the middle of traffic: the master forks a replacement, which the
	// agent must follow as it follows a reload's.
	underLoad(t, gw, a, "worker SIGKILL", func() error {
		_, _, err := gw.KillWorker()
		return err
	})
}

// underLoad runs action while DriveMixed sends traffic, then checks the agent against the
// access log.
func underLoad(t *testing.T, gw *fixture.Gateway, a *agent, what string, action func() error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	before, err := gw.AccessLog()
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan fixture.Sent, 1)
	go func() {
		sent, _ := gw.DriveMixed(ctx, 300, 4)
		done <- sent
	}()
	time.Sleep(200 * time.Millisecond)
	if err := action(); err != nil {
		<-done
		t.Fatalf("%s under load: %v", what, err)
	}
	sent := <-done
	// A request on a keep-alive connection the old workers close at the reload (or that a
	// killed worker was serving) may never be logged: the access log, not what the client
	// sent, is the truth.
	wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
	es, _ := gw.WaitAccessLog(wctx, fixture.Traffic(before)+sent.Total())
	wcancel()
	if fixture.Traffic(es) < fixture.Traffic(before)+sent.Total()-5 {
		t.Fatalf("%s: access log has %d new lines for %d requests sent", what, fixture.Traffic(es)-fixture.Traffic(before), sent.Total())
	}
	s := a.waitRequests(t, uint64(len(es)), 15*time.Second)
	compare(t, s.Total, es)
}
