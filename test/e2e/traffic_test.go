//go:build e2e

package e2e

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"math"
	"net"
	"net/http"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	kwv1 "github.com/kong-watcher/kong-watcher/api/v1alpha1"
	"github.com/kong-watcher/kong-watcher/test/fixture"
)

// Protocols the test speaks to the gateway.
const (
	protoH1    = "HTTP/1.1"          // plain, keep-alive, port 8000
	protoH1TLS = "HTTP/1.1 over TLS" // port 8443, ALPN http/1.1
	protoH2    = "HTTP/2"            // port 8443, ALPN h2
)

// req is one kind of request the test sends, count times.
type req struct {
	proto  string
	method string
	host   string
	uri    string
	status int // what the gateway must answer
	count  int
	// proxied: the gateway proxies it to the service behind it (the pod's upstream container
	// on 127.0.0.1:8081, another process: nginx logs and the agent counts the request once).
	proxied bool
	// norm is the agent's row name for the path ("METHOD /normalised/path").
	norm string
}

// newClient returns an HTTP client for one protocol: HTTP/1.1 with keep-alive (plain or TLS
// with ALPN http/1.1 only), or HTTP/2 over TLS (ALPN h2 only). The gateway's certificate is
// self-signed.
func newClient(proto string) *http.Client {
	var p http.Protocols
	tr := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		MaxIdleConnsPerHost: 4,
		IdleConnTimeout:     20 * time.Second, // under nginx's keepalive_timeout (30s)
		DisableCompression:  true,
		TLSClientConfig:     &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // the gateway's self-signed test certificate
	}
	switch proto {
	case protoH2:
		p.SetHTTP2(true)
	default:
		p.SetHTTP1(true)
	}
	tr.Protocols = &p
	return &http.Client{Transport: tr, Timeout: 10 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

// sender sends requests to one pod IP with one client per protocol.
type sender struct {
	ip      string
	clients map[string]*http.Client
}

func newSender(ip string) *sender {
	return &sender{ip: ip, clients: map[string]*http.Client{
		protoH1: newClient(protoH1), protoH1TLS: newClient(protoH1TLS), protoH2: newClient(protoH2)}}
}

func (s *sender) close() {
	for _, c := range s.clients {
		c.CloseIdleConnections()
	}
}

// do sends one request and checks the protocol used and the status; it returns an error
// describing any mismatch.
func (s *sender) do(ctx context.Context, r req) error {
	scheme, port := "http", httpPort
	if r.proto != protoH1 {
		scheme, port = "https", tlsPort
	}
	url := fmt.Sprintf("%s://%s%s", scheme, net.JoinHostPort(s.ip, strconv.Itoa(port)), r.uri)
	var body io.Reader
	if r.method == http.MethodPost || r.method == http.MethodPut {
		body = strings.NewReader(`{"e2e":true}`)
	}
	hr, err := http.NewRequestWithContext(ctx, r.method, url, body)
	if err != nil {
		return err
	}
	hr.Host = r.host
	hr.Header.Set("User-Agent", "kong-watcher-e2e")
	resp, err := s.clients[r.proto].Do(hr)
	if err != nil {
		return fmt.Errorf("%s %s %s (Host %s): %w", r.proto, r.method, url, r.host, err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	switch {
	case resp.StatusCode != r.status:
		return fmt.Errorf("%s %s %s (Host %s): status %d, want %d", r.proto, r.method, url, r.host, resp.StatusCode, r.status)
	case r.proto == protoH2 && resp.ProtoMajor != 2:
		return fmt.Errorf("%s %s %s: answered over %s, want HTTP/2", r.proto, r.method, url, resp.Proto)
	case r.proto != protoH2 && resp.ProtoMajor != 1:
		return fmt.Errorf("%s %s %s: answered over %s, want HTTP/1.1", r.proto, r.method, url, resp.Proto)
	case r.proto != protoH1 && resp.TLS == nil:
		return fmt.Errorf("%s %s %s: not over TLS", r.proto, r.method, url)
	}
	return nil
}

// sendAll sends every request of plan count times, each kind spread evenly through the
// whole sequence: request j of kind i goes at position (j+phase_i)/count in [0,1). The phase
// (the fractional part of i times the golden ratio) differs from kind to kind and is
// scattered over [0,1), so kinds with the same count (the 5xx kinds: 2 each) do not land at
// the same positions, and the few errors never bunch up. It fails the test on the first
// wrong answer and returns the number of requests sent.
func (s *sender) sendAll(t *testing.T, plan []req) int {
	t.Helper()
	type slot struct {
		pos  float64
		kind int
	}
	var order []slot
	for i, r := range plan {
		_, phase := math.Modf(float64(i) * 0.6180339887498949)
		for j := 0; j < r.count; j++ {
			order = append(order, slot{(float64(j) + phase) / float64(r.count), i})
		}
	}
	sort.SliceStable(order, func(a, b int) bool { return order[a].pos < order[b].pos })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for n, o := range order {
		if err := s.do(ctx, plan[o.kind]); err != nil {
			t.Fatalf("request %d of %d to the gateway at %s: %v", n+1, len(order), s.ip, err)
		}
	}
	return len(order)
}

// background sends GET requests at a steady rate until stopped, counting answers.
type background struct {
	r       req
	stop    chan struct{}
	done    chan struct{}
	mu      sync.Mutex
	ok      int
	failed  []string
	started time.Time
	ended   time.Time
}

// startBackground sends r (count ignored) to ip every period (bounded: at most max requests).
func startBackground(ip string, r req, period time.Duration, max int) *background {
	b := &background{r: r, stop: make(chan struct{}), done: make(chan struct{}), started: time.Now()}
	snd := newSender(ip)
	go func() {
		defer close(b.done)
		defer snd.close()
		tick := time.NewTicker(period)
		defer tick.Stop()
		for i := 0; i < max; i++ {
			select {
			case <-b.stop:
				return
			case <-tick.C:
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			err := snd.do(ctx, r)
			cancel()
			b.mu.Lock()
			if err != nil {
				b.failed = append(b.failed, time.Now().Format("15:04:05.000")+" "+err.Error())
			} else {
				b.ok++
			}
			b.mu.Unlock()
		}
	}()
	return b
}

// end stops the traffic and returns the number of answered and failed requests.
func (b *background) end() (ok int, failed []string) {
	select {
	case <-b.stop:
	default:
		close(b.stop)
	}
	<-b.done
	b.ended = time.Now()
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.ok, slices.Clone(b.failed)
}

func (b *background) counts() (ok, failed int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.ok, len(b.failed)
}

// tally is a set of request counts in the agent's terms.
type tally struct {
	Requests, Errors, ClientErrors uint64
	Methods, Status, Hosts, Paths  map[string]uint64
}

func newTally() *tally {
	return &tally{Methods: map[string]uint64{}, Status: map[string]uint64{}, Hosts: map[string]uint64{}, Paths: map[string]uint64{}}
}

func (t *tally) add(method, host, norm string, status int, n uint64) {
	t.Requests += n
	switch {
	case status >= 500 || status < 100:
		t.Errors += n
	case status >= 400:
		t.ClientErrors += n
	}
	t.Methods[method] += n
	code := fmt.Sprintf("%03d", status)
	t.Status[code] += n
	t.Hosts[strings.ToLower(host)] += n
	t.Paths[norm] += n
}

// expected is what plan sent makes nginx log (and the agent count): each request once.
func expected(plan []req) *tally {
	t := newTally()
	for _, r := range plan {
		t.add(r.method, r.host, r.norm, r.status, uint64(r.count))
	}
	return t
}

// accessLog reads the gateway container's access log with kubectl logs (a recorded
// command): the JSON lines (nginx's error log lines share the container's output and are
// skipped). A failure fails the test.
func (s *suite) accessLog(t *testing.T, pod string) []fixture.LogEntry {
	t.Helper()
	entries, err := parseAccessLog(pod, s.mustKubectl(t, time.Minute, "logs", "-n", kongNS, pod, "-c", gatewayCtr))
	if err != nil {
		t.Fatal(err)
	}
	return entries
}

// pollAccessLog is accessLog for a poll: not recorded, and a failure is returned.
func (s *suite) pollAccessLog(pod string) ([]fixture.LogEntry, error) {
	out, err := s.pollKubectl(time.Minute, "logs", "-n", kongNS, pod, "-c", gatewayCtr)
	if err != nil {
		return nil, err
	}
	return parseAccessLog(pod, out)
}

func parseAccessLog(pod, out string) ([]fixture.LogEntry, error) {
	var entries []fixture.LogEntry
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if !strings.HasPrefix(line, "{") {
			continue
		}
		e, err := fixture.ParseAccessLogLine([]byte(line))
		if err != nil {
			return nil, fmt.Errorf("pod %s: access log line %q: %v", pod, line, err)
		}
		entries = append(entries, e)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("pod %s: reading the access log: %v", pod, err)
	}
	return entries, nil
}

// logTally counts log entries (those keep returns true for) with the row names of norms
// (request URI -> "METHOD /normalised"); an URI the test did not send fails the test. The
// kubelet's readiness probes are left out: they keep coming while the test waits, so
// waitCountsMatch checks them on their own (withProbes).
func logTally(t *testing.T, entries []fixture.LogEntry, norms map[string]string, keep func(fixture.LogEntry) bool) *tally {
	t.Helper()
	out := newTally()
	for _, e := range entries {
		if isProbe(e) || keep != nil && !keep(e) {
			continue
		}
		norm, ok := norms[e.Method+" "+e.RequestURI]
		if !ok {
			t.Fatalf("access log: a request the test did not send: %+v", e)
		}
		out.add(e.Method, e.Host, norm, e.Status, 1)
	}
	return out
}

// norms maps "METHOD URI" to the agent's row name, for every request of the plans.
func norms(plans ...[]req) map[string]string {
	m := map[string]string{}
	for _, p := range plans {
		for _, r := range p {
			m[r.method+" "+r.uri] = r.norm
		}
	}
	return m
}

// diffTally compares got with want key by key and returns the differences.
func diffTally(got, want *tally) []string {
	var d []string
	cmp := func(what string, g, w uint64) {
		if g != w {
			d = append(d, fmt.Sprintf("%s: %d, want %d", what, g, w))
		}
	}
	cmp("requests", got.Requests, want.Requests)
	cmp("errors", got.Errors, want.Errors)
	cmp("clientErrors", got.ClientErrors, want.ClientErrors)
	for _, m := range []struct {
		name string
		g, w map[string]uint64
	}{{"method", got.Methods, want.Methods}, {"status", got.Status, want.Status}, {"host", got.Hosts, want.Hosts}, {"path", got.Paths, want.Paths}} {
		keys := map[string]bool{}
		for k := range m.g {
			keys[k] = true
		}
		for k := range m.w {
			keys[k] = true
		}
		for _, k := range slices.Sorted(maps.Keys(keys)) {
			cmp(m.name+" "+k, m.g[k], m.w[k])
		}
	}
	return d
}

// statsTally turns the agent's Summary into a tally.
func statsTally(s kwv1.Summary) *tally {
	t := newTally()
	t.Requests, t.Errors, t.ClientErrors = s.Requests, s.Errors, s.ClientErrors
	for k, v := range s.Methods {
		if v > 0 {
			t.Methods[k] = v
		}
	}
	for k, v := range s.StatusCodes {
		if v > 0 {
			t.Status[k] = v
		}
	}
	for _, r := range s.Hosts {
		if r.Requests > 0 {
			t.Hosts[r.Name] = r.Requests
		}
	}
	for _, r := range s.Paths {
		if r.Requests > 0 {
			t.Paths[r.Name] = r.Requests
		}
	}
	return t
}

func isProbe(e fixture.LogEntry) bool { return e.Method == "GET" && e.RequestURI == probePath }

// probesLogged counts the kubelet's readiness probes (GET /healthz) the access log holds
// from since on (the agent cannot count what came before it started), and early: those of
// them logged before attachedBy (the agent may have been still attaching).
func probesLogged(entries []fixture.LogEntry, since, attachedBy time.Time) (logged, early uint64) {
	from := float64(since.UnixNano()) / 1e9
	by := float64(attachedBy.UnixNano()) / 1e9
	for _, e := range entries {
		if isProbe(e) && e.Msec >= from {
			logged++
			if e.Msec < by {
				early++
			}
		}
	}
	return logged, early
}

// withProbes checks the agent's count of the kubelet's readiness probes (its GET /healthz
// row, n) against the access log, read after the annotations, counting only the probes
// logged at or after the agent's start (st.Since): the agent cannot have counted more than
// the log holds, and may lag it by one probe (the probe period is 10s, the stats interval
// 5s: at most one probe is logged and not yet in the annotation's snapshot). A probe logged
// between the agent's start and its ProbesAttached Event (attachedBy) may have come before
// the probes were attached: it may be missing too. It returns want plus n probes (Host: the
// pod IP) and n, or why the count is wrong; an error is "cannot tell yet" (the access log
// could not be read).
func (s *suite) withProbes(pod string, want, got *tally, podIP string, since, attachedBy time.Time) (*tally, uint64, string, error) {
	n := got.Paths["GET "+probePath]
	entries, err := s.pollAccessLog(pod)
	if err != nil {
		return nil, 0, "", err
	}
	logged, early := probesLogged(entries, since, attachedBy)
	w := cloneTally(want)
	if n > 0 {
		w.add("GET", podIP, "GET "+probePath, 200, n)
	}
	if n > logged || n+1+early < logged {
		return w, n, fmt.Sprintf("the agent counted %d readiness probes, the access log holds %d since its start (%s; %d of them before its ProbesAttached Event)",
			n, logged, since.Format("15:04:05.000"), early), nil
	}
	return w, n, "", nil
}

func cloneTally(t *tally) *tally {
	c := *t
	c.Methods, c.Status, c.Hosts, c.Paths = maps.Clone(t.Methods), maps.Clone(t.Status), maps.Clone(t.Hosts), maps.Clone(t.Paths)
	return &c
}

// podStats reads the kong-watcher.io/stats annotation of the pod.
func podStats(ann map[string]string) (kwv1.Stats, error) {
	var st kwv1.Stats
	raw, ok := ann[kwv1.AnnotationStats]
	if !ok {
		return st, fmt.Errorf("no %s annotation yet", kwv1.AnnotationStats)
	}
	if err := json.Unmarshal([]byte(raw), &st); err != nil {
		return st, fmt.Errorf("%s: %v", kwv1.AnnotationStats, err)
	}
	if st.APIVersion != kwv1.StatsAPIVersion || st.Kind != kwv1.StatsKind {
		return st, fmt.Errorf("%s: apiVersion %q kind %q", kwv1.AnnotationStats, st.APIVersion, st.Kind)
	}
	return st, nil
}

// checkShortAnnotations checks that the human-readable annotations say what the Stats JSON
// says: requests total and errors, the status classes, the methods, and the top hosts and
// paths that are shown.
func checkShortAnnotations(ann map[string]string, s kwv1.Summary) []string {
	var d []string
	req := ann[kwv1.AnnotationRequests]
	if !strings.HasPrefix(req, fmt.Sprintf("total=%d errors=%d ", s.Requests, s.Errors)) {
		d = append(d, fmt.Sprintf("%s=%q, want total=%d errors=%d", kwv1.AnnotationRequests, req, s.Requests, s.Errors))
	}
	wantPairs := func(key string, m map[string]uint64) {
		got := pairs(ann[key], " ")
		for k, v := range m {
			if v > 0 && got[k] != v {
				d = append(d, fmt.Sprintf("%s=%q: %s=%d, want %d", key, ann[key], k, got[k], v))
			}
		}
		for k, v := range got {
			if m[k] != v {
				d = append(d, fmt.Sprintf("%s=%q: %s=%d, not in the stats (%d)", key, ann[key], k, v, m[k]))
			}
		}
	}
	wantPairs(kwv1.AnnotationMethods, s.Methods)
	wantPairs(kwv1.AnnotationStatus, s.StatusClasses)
	rows := func(key, sep string, rs []kwv1.Row) {
		byName := map[string]uint64{}
		for _, r := range rs {
			byName[r.Name] = r.Requests
		}
		got := pairs(ann[key], sep)
		if len(got) == 0 && s.Requests > 0 {
			d = append(d, fmt.Sprintf("%s is empty", key))
		}
		for k, v := range got {
			if k == kwv1.OtherRow {
				continue
			}
			if byName[k] != v {
				d = append(d, fmt.Sprintf("%s=%q: %s=%d, the stats say %d", key, ann[key], k, v, byName[k]))
			}
		}
	}
	rows(kwv1.AnnotationTopHosts, " ", s.Hosts)
	rows(kwv1.AnnotationTopPaths, ", ", s.Paths)
	return d
}

// pairs parses "k=v<sep>k=v" (a path row's name may hold spaces: "GET /x=3, POST /y=1").
func pairs(v, sep string) map[string]uint64 {
	m := map[string]uint64{}
	if v == "" {
		return m
	}
	for _, p := range strings.Split(v, sep) {
		i := strings.LastIndex(p, "=")
		if i < 0 {
			continue
		}
		n, err := strconv.ParseUint(strings.TrimSpace(p[i+1:]), 10, 64)
		if err != nil {
			continue
		}
		m[strings.TrimSpace(p[:i])] = n
	}
	return m
}

// describeTally renders a tally on one line for logs.
func (t *tally) String() string {
	f := func(m map[string]uint64) string {
		keys := slices.Collect(maps.Keys(m))
		sort.Strings(keys)
		var b []string
		for _, k := range keys {
			b = append(b, fmt.Sprintf("%s=%d", k, m[k]))
		}
		return strings.Join(b, " ")
	}
	return fmt.Sprintf("requests=%d errors=%d clientErrors=%d methods[%s] status[%s] hosts[%s] paths[%s]",
		t.Requests, t.Errors, t.ClientErrors, f(t.Methods), f(t.Status), f(t.Hosts), f(t.Paths))
}

// metricsTally reads the agent's Prometheus endpoint (what a PodMonitor scrapes) and counts
// kong_watcher_requests_total by the same rows as the access log, leaving out the kubelet's
// probes (path "/healthz"). The counters move with every request, so once the annotations
// have caught up they must equal the log exactly.
func metricsTally(ip string) (*tally, error) {
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{}}
	defer c.CloseIdleConnections()
	resp, err := c.Get(fmt.Sprintf("http://%s:%d/metrics", ip, agentPort))
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /metrics: %s", resp.Status)
	}
	out := newTally()
	series := 0
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Text()
		rest, ok := strings.CutPrefix(line, "kong_watcher_requests_total{")
		if !ok {
			continue
		}
		labelText, value, ok := strings.Cut(rest, "} ")
		if !ok {
			return nil, fmt.Errorf("/metrics: malformed line %q", line)
		}
		labels := map[string]string{}
		for _, kv := range strings.Split(labelText, ",") {
			k, v, _ := strings.Cut(kv, "=")
			labels[k] = strings.Trim(v, `"`)
		}
		n, err := strconv.ParseFloat(value, 64)
		if err != nil {
			return nil, fmt.Errorf("/metrics: value of %q: %w", line, err)
		}
		code, err := strconv.Atoi(labels["code"])
		if err != nil {
			return nil, fmt.Errorf("/metrics: code of %q: %w", line, err)
		}
		series++
		if labels["path"] == probePath {
			continue
		}
		out.add(labels["method"], labels["host"], labels["method"]+" "+labels["path"], code, uint64(n))
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if series == 0 {
		return nil, fmt.Errorf("/metrics has no kong_watcher_requests_total series")
	}
	return out, nil
}
