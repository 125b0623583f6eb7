//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	kwv1 "github.com/kong-watcher/kong-watcher/api/v1alpha1"
	"github.com/kong-watcher/kong-watcher/test/fixture"
)

// Step 6: nothing the agent goes through costs Kong its Ready condition or its place in the
// Service: a flood of the agent's /stats, its metrics port taken by another process, and the
// agent killed again and again (what the OOM killer or a crash does), for minutes, while
// traffic flows.

const (
	serviceName = "kong-proxy" // test/e2e/manifests/kong.yaml
	floodFor    = 30 * time.Second
	floodRate   = 500 // /stats requests per second
	killEvery   = 15 * time.Second
	kills       = 6
)

func harmBgReq() req {
	return req{proto: protoH1, method: "GET", host: "api.kong.test", uri: "/during-harm", status: 200, proxied: true, norm: "GET /during-harm"}
}

func killsBgReq() req {
	return req{proto: protoH1, method: "GET", host: "api.kong.test", uri: "/during-kills", status: 200, proxied: true, norm: "GET /during-kills"}
}

func afterHarmPlan() []req {
	return []req{
		{proto: protoH1, method: "GET", host: "api.kong.test", uri: "/after-harm", status: 200, count: 30, proxied: true, norm: "GET /after-harm"},
		{proto: protoH2, method: "POST", host: "shop.kong.test", uri: "/after-harm/orders", status: 200, count: 10, proxied: true, norm: "POST /after-harm/orders"},
	}
}

func (s *suite) stepDoNoHarm(t *testing.T) {
	nameA := s.gatewayPods[0]
	pa := s.pod(t, nameA)
	st := agentStatus(pa)
	if st == nil || st.ContainerID == "" {
		t.Fatalf("%s: no agent container status", nameA)
	}
	agentRestarts := st.RestartCount
	gatewayRestarts := map[string]int32{}
	for _, cs := range pa.Status.ContainerStatuses {
		gatewayRestarts[cs.Name] = cs.RestartCount
	}
	start := time.Now()
	rw := s.watchReady(t, pa)
	defer rw.stop()
	ew := s.watchEndpoint(t, pa)
	defer ew.stop()
	bg := startBackground(pa.Status.PodIP, harmBgReq(), 20*time.Millisecond, 100000)
	defer bg.end()

	// --- A /stats flood at 500 req/s while /healthz is probed.
	agentURL := "http://" + net.JoinHostPort(pa.Status.PodIP, strconv.Itoa(agentPort))
	fl := flood(agentURL+"/stats", floodRate, floodFor)
	hz := probeHealthz(agentURL+"/healthz", 250*time.Millisecond)
	time.Sleep(floodFor)
	floodRes := fl.wait()
	hzRes := hz.stop()
	t.Logf("%s: /stats flood: %s; /healthz meanwhile: %s", nameA, floodRes, hzRes)
	// The flood offers 500 req/s from 64 clients; the agent (200m CPU limit) answers what it
	// can and the rest find every client waiting: either way it runs at its limit.
	if floodRes.sent < floodRes.offered*8/10 && floodRes.skipped < floodRes.offered/10 {
		t.Errorf("%s: the flood offered %d requests but sent %d with few ticks skipped: the step did not load the agent", nameA, floodRes.offered, floodRes.sent)
	}
	if hzRes.failed > 0 {
		t.Errorf("%s: /healthz failed %d of %d times during the /stats flood: %s", nameA, hzRes.failed, hzRes.total, hzRes.firstErr)
	}
	// Counting went on under the flood: the agent's row for the background path equals the
	// access log once the traffic has stopped.
	okBg, failedBg := bg.end()
	if len(failedBg) > 0 {
		t.Errorf("%s: %d of %d gateway requests failed during the /stats flood: %s", nameA, len(failedBg), okBg+len(failedBg), strings.Join(failedBg, "; "))
	}
	bgRow := harmBgReq().norm
	logged := logTally(t, s.accessLog(t, nameA), allNorms(), func(e fixture.LogEntry) bool { return e.RequestURI == harmBgReq().uri }).Paths[bgRow]
	countedAfter := s.waitPathCounts(t, nameA, "every request sent during the flood", map[string]uint64{bgRow: logged})
	s.note("Step 6, %s: a /stats flood for %s (%s); /healthz probed %d times meanwhile, %d failed, slowest %s; the %d gateway requests sent meanwhile were all answered and counted (the annotations equal the access log %s after the traffic).",
		nameA, floodFor, floodRes, hzRes.total, hzRes.failed, hzRes.slowest.Round(time.Millisecond), logged, countedAfter.Round(100*time.Millisecond))
	bg = startBackground(pa.Status.PodIP, killsBgReq(), 20*time.Millisecond, 100000)
	defer bg.end()

	// --- The agent process killed again and again; its port taken by another process.
	sup := s.agentTaskPID(t, st.ContainerID)
	var holder net.Listener
	defer func() {
		if holder != nil {
			holder.Close()
		}
	}()
	portTakenAt := time.Time{}
	for i := 1; i <= kills; i++ {
		child := waitChild(t, sup, waitShort)
		if err := syscall.Kill(child, syscall.SIGKILL); err != nil {
			t.Fatalf("killing the agent process %d: %v", child, err)
		}
		if holder == nil {
			// Another process takes the port while the agent is down: the agents started
			// from now on find it taken.
			holder = listenInNetns(t, sup, agentPort)
			portTakenAt = time.Now()
		}
		t.Logf("%s: kill %d of %d: SIGKILL to agent process %d (supervisor %d)", nameA, i, kills, child, sup)
		time.Sleep(killEvery)
	}
	next := waitChild(t, sup, waitShort)
	t.Logf("%s: the agent runs again as process %d; releasing the port", nameA, next)
	s.waitEvent(t, pa, kwv1.ReasonMetricsPortUnavailable, corev1.EventTypeWarning, portTakenAt, waitShort)
	holder.Close()
	holder = nil
	healthBack := waitFor(t, "the agent serving /healthz once its port is free again", 2*time.Minute, time.Second,
		func(ctx context.Context) (bool, string, error) {
			code, err := get(ctx, agentURL+"/healthz")
			return code == http.StatusOK, fmt.Sprintf("status %d, %v", code, err), nil
		})

	ok, failed := bg.end()
	rw.stop()
	ew.stop()
	if len(failed) > 0 {
		t.Errorf("%s: %d of %d gateway requests failed: %s", nameA, len(failed), ok+len(failed), strings.Join(failed, "; "))
	}
	if _, windows := rw.notReady(start); len(windows) > 0 {
		t.Errorf("%s: the pod was NotReady while its agent was flooded, kept off its port and killed: %s", nameA, strings.Join(windows, ", "))
	}
	if changes := ew.notReady(); len(changes) > 0 {
		t.Errorf("%s: the pod's endpoint in Service %s changed: %s", nameA, serviceName, strings.Join(changes, "; "))
	}
	pa = s.pod(t, nameA)
	for _, cs := range append(pa.Status.InitContainerStatuses, pa.Status.ContainerStatuses...) {
		want, isGateway := gatewayRestarts[cs.Name]
		switch {
		case cs.Name == kwv1.AgentContainerName && cs.RestartCount != agentRestarts:
			t.Errorf("%s: the agent container restarted (%d -> %d): a native sidecar that restarts makes the pod NotReady", nameA, agentRestarts, cs.RestartCount)
		case isGateway && cs.RestartCount != want:
			t.Errorf("%s: container %s restarted (%d -> %d)", nameA, cs.Name, want, cs.RestartCount)
		}
	}
	s.note("Step 6, %s: the agent process was killed %d times, %s apart, and its port %d held by another process from the first kill: the supervisor restarted it in its container each time (container restartCount unchanged at %d), it recorded a MetricsPortUnavailable Warning and served again %s after the port was freed; %d gateway requests answered, %d failed; the pod stayed Ready and its endpoint in Service %s stayed ready throughout (%s).",
		nameA, kills, killEvery, agentPort, agentRestarts, healthBack.Round(time.Second), ok, len(failed), serviceName, time.Since(start).Round(time.Second))

	// --- The agent that survived all that counts new traffic exactly.
	plan := afterHarmPlan()
	snd := newSender(pa.Status.PodIP)
	defer snd.close()
	snd.sendAll(t, plan)
	snd.close()
	s.waitPathCounts(t, nameA, "the batch sent after the harm", expected(plan).Paths)
}

// waitPathCounts waits until the path rows of pod name's kong-watcher.io/stats annotation hold
// exactly want (other rows are not looked at) and returns how long that took.
func (s *suite) waitPathCounts(t *testing.T, name, what string, want map[string]uint64) time.Duration {
	t.Helper()
	return waitFor(t, "the annotations of "+name+" to count "+what+" exactly", 2*statsInterval+30*time.Second, 250*time.Millisecond,
		func(ctx context.Context) (bool, string, error) {
			p, err := s.cs.CoreV1().Pods(kongNS).Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return false, "", err
			}
			stats, err := podStats(p.Annotations)
			if err != nil {
				return false, err.Error(), nil
			}
			got := statsTally(stats.Total).Paths
			var diff []string
			for k, v := range want {
				if got[k] != v {
					diff = append(diff, fmt.Sprintf("path %s: %d, want %d", k, got[k], v))
				}
			}
			return len(diff) == 0, strings.Join(diff, "; "), nil
		})
}

// agentTaskPID is the host PID of the agent container's first process: the supervisor.
func (s *suite) agentTaskPID(t *testing.T, containerID string) int {
	t.Helper()
	id := strings.TrimPrefix(containerID, "containerd://")
	out, err := exec.Command("ctr", "--address", s.containerd, "-n", "k8s.io", "tasks", "ls").CombinedOutput()
	if err != nil {
		t.Fatalf("ctr tasks ls: %v: %s", err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == id {
			pid, err := strconv.Atoi(f[1])
			if err == nil {
				return pid
			}
		}
	}
	t.Fatalf("no task for the agent container %s in:\n%s", id, out)
	return 0
}

// waitChild waits for the supervisor's child, the agent process, and returns its host PID.
func waitChild(t *testing.T, parent int, timeout time.Duration) int {
	t.Helper()
	var pid int
	waitFor(t, fmt.Sprintf("the agent process under supervisor %d", parent), timeout, 100*time.Millisecond,
		func(context.Context) (bool, string, error) {
			pid = childOf(parent)
			return pid > 0, "no child", nil
		})
	return pid
}

func childOf(parent int) int {
	paths, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...; comm may hold spaces and parentheses.
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) > 1 && f[1] == strconv.Itoa(parent) {
			pid, _ := strconv.Atoi(strings.TrimSpace(s[:strings.IndexByte(s, ' ')]))
			return pid
		}
	}
	return 0
}

// listenInNetns binds port in the network namespace of process pid (the pod's) and answers
// every request 404: another program on the agent's port. It retries while the port is still
// held (the killed agent's socket closes as it dies).
func listenInNetns(t *testing.T, pid, port int) net.Listener {
	t.Helper()
	type result struct {
		l   net.Listener
		err error
	}
	res := make(chan result, 1)
	go func() {
		// Setns moves only this thread; it is never returned to the runtime's pool.
		runtime.LockOSThread()
		f, err := os.Open(fmt.Sprintf("/proc/%d/ns/net", pid))
		if err != nil {
			res <- result{err: err}
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			res <- result{err: fmt.Errorf("setns: %w", err)}
			return
		}
		var l net.Listener
		deadline := time.Now().Add(10 * time.Second)
		for {
			l, err = net.Listen("tcp", fmt.Sprintf(":%d", port))
			if err == nil || time.Now().After(deadline) {
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
		res <- result{l, err}
	}()
	r := <-res
	if r.err != nil {
		t.Fatalf("taking port %d in the pod's network namespace: %v", port, r.err)
	}
	go func() {
		_ = http.Serve(r.l, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			http.Error(w, "not the agent", http.StatusNotFound)
		}))
	}()
	return r.l
}

func get(ctx context.Context, url string) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, nil
}

// floodResult counts a flood's answers.
type floodResult struct {
	offered, skipped, sent int
	status                 map[int]int
	errors                 int
}

func (r floodResult) String() string {
	return fmt.Sprintf("offered %d, sent %d (the rest found all clients waiting), answers by status %v, transport errors %d",
		r.offered, r.sent, r.status, r.errors)
}

type flooder struct {
	done chan floodResult
}

// flood GETs url at rate per second for d, from 64 workers (bounded: a slow server makes
// the flood send less, never pile up goroutines).
func flood(url string, rate int, d time.Duration) *flooder {
	f := &flooder{done: make(chan floodResult, 1)}
	go func() {
		client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
		jobs := make(chan struct{}, 64)
		var mu sync.Mutex
		res := floodResult{status: map[int]int{}}
		var wg sync.WaitGroup
		for range 64 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range jobs {
					resp, err := client.Get(url)
					mu.Lock()
					res.sent++
					if err != nil {
						res.errors++
					} else {
						res.status[resp.StatusCode]++
					}
					mu.Unlock()
					if err == nil {
						_, _ = io.Copy(io.Discard, resp.Body)
						resp.Body.Close()
					}
				}
			}()
		}
		tick := time.NewTicker(time.Second / time.Duration(rate))
		end := time.After(d)
	loop:
		for {
			select {
			case <-end:
				break loop
			case <-tick.C:
				mu.Lock()
				res.offered++
				mu.Unlock()
				select {
				case jobs <- struct{}{}:
				default: // every worker busy: this tick is skipped
					mu.Lock()
					res.skipped++
					mu.Unlock()
				}
			}
		}
		tick.Stop()
		close(jobs)
		wg.Wait()
		f.done <- res
	}()
	return f
}

func (f *flooder) wait() floodResult { return <-f.done }

type healthResult struct {
	total, failed int
	slowest       time.Duration
	firstErr      string
}

func (r healthResult) String() string {
	return fmt.Sprintf("%d probes, %d failed, slowest %s", r.total, r.failed, r.slowest.Round(time.Millisecond))
}

type healthProber struct {
	stopc chan struct{}
	done  chan healthResult
}

// probeHealthz GETs url every period, as a kubelet would, until stop.
func probeHealthz(url string, period time.Duration) *healthProber {
	h := &healthProber{stopc: make(chan struct{}), done: make(chan healthResult, 1)}
	go func() {
		var r healthResult
		tick := time.NewTicker(period)
		defer tick.Stop()
		for {
			select {
			case <-h.stopc:
				h.done <- r
				return
			case <-tick.C:
			}
			begin := time.Now()
			code, err := get(context.Background(), url)
			r.total++
			r.slowest = max(r.slowest, time.Since(begin))
			if err != nil || code != http.StatusOK {
				r.failed++
				if r.firstErr == "" {
					r.firstErr = fmt.Sprintf("status %d, %v", code, err)
				}
			}
		}
	}()
	return h
}

func (h *healthProber) stop() healthResult {
	close(h.stopc)
	return <-h.done
}

// endpointWatch polls the Service's EndpointSlices and records every moment the pod's
// endpoint was missing or not ready.
type endpointWatch struct {
	stopc chan struct{}
	done  chan struct{}
	mu    sync.Mutex
	bad   []string
}

func (s *suite) watchEndpoint(t *testing.T, p *corev1.Pod) *endpointWatch {
	t.Helper()
	check := func(ctx context.Context) (string, error) {
		slices, err := s.cs.DiscoveryV1().EndpointSlices(kongNS).List(ctx, metav1.ListOptions{
			LabelSelector: "kubernetes.io/service-name=" + serviceName})
		if err != nil {
			return "", err
		}
		for _, sl := range slices.Items {
			for _, ep := range sl.Endpoints {
				if ep.TargetRef != nil && ep.TargetRef.Name == p.Name {
					if ep.Conditions.Ready == nil || !*ep.Conditions.Ready {
						return "not ready", nil
					}
					return "", nil
				}
			}
		}
		return "missing", nil
	}
	if state, err := check(t.Context()); err != nil || state != "" {
		t.Fatalf("%s: its endpoint in Service %s is %q before the step (%v)", p.Name, serviceName, state, err)
	}
	w := &endpointWatch{stopc: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		tick := time.NewTicker(250 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-w.stopc:
				return
			case <-tick.C:
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			state, err := check(ctx)
			cancel()
			if err == nil && state != "" {
				w.mu.Lock()
				w.bad = append(w.bad, time.Now().Format("15:04:05.000")+" "+state)
				w.mu.Unlock()
			}
		}
	}()
	return w
}

func (w *endpointWatch) stop() {
	select {
	case <-w.stopc:
	default:
		close(w.stopc)
	}
	<-w.done
}

func (w *endpointWatch) notReady() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.bad...)
}
