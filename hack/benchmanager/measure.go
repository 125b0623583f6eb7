package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"k8s.io/client-go/kubernetes"

	"github.com/kong-watcher/kong-watcher/test/benchkit"
)

var sigterm = syscall.SIGTERM

// procAttr makes a child die with this process (no stray managers after a crash).
func procAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}

// metricKey identifies an apiserver_request_total series, without its code.
type metricKey struct {
	verb, group, resource, subresource string
}

func (k metricKey) String() string {
	r := k.resource
	if k.subresource != "" {
		r += "/" + k.subresource
	}
	if k.group != "" {
		r += "." + k.group
	}
	return k.verb + " " + r
}

// apiCounts is a reading of the API server's request counters.
type apiCounts struct {
	total   map[metricKey]float64
	codes   map[metricKey]map[string]float64
	durSum  map[metricKey]float64 // apiserver_request_duration_seconds_sum
	durCnt  map[metricKey]float64
	readErr error
}

// readAPIMetrics reads apiserver_request_total (and the request duration's sum and count) from
// the API server's /metrics with the administrator's credentials.
func readAPIMetrics(ctx context.Context, admin *kubernetes.Clientset) apiCounts {
	c := apiCounts{total: map[metricKey]float64{}, codes: map[metricKey]map[string]float64{},
		durSum: map[metricKey]float64{}, durCnt: map[metricKey]float64{}}
	raw, err := admin.CoreV1().RESTClient().Get().AbsPath("/metrics").DoRaw(ctx)
	if err != nil {
		c.readErr = err
		return c
	}
	sc := bufio.NewScanner(bytes.NewReader(raw))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		var name string
		switch {
		case strings.HasPrefix(line, "apiserver_request_total{"):
			name = "total"
		case strings.HasPrefix(line, "apiserver_request_duration_seconds_sum{"):
			name = "sum"
		case strings.HasPrefix(line, "apiserver_request_duration_seconds_count{"):
			name = "count"
		default:
			continue
		}
		open, closeB := strings.IndexByte(line, '{'), strings.LastIndexByte(line, '}')
		labels := parseLabels(line[open+1 : closeB])
		v, err := strconv.ParseFloat(strings.TrimSpace(line[closeB+1:]), 64)
		if err != nil {
			continue
		}
		if labels["dry_run"] != "" {
			continue
		}
		k := metricKey{verb: labels["verb"], group: labels["group"], resource: labels["resource"], subresource: labels["subresource"]}
		switch name {
		case "total":
			c.total[k] += v
			if c.codes[k] == nil {
				c.codes[k] = map[string]float64{}
			}
			c.codes[k][labels["code"]] += v
		case "sum":
			c.durSum[k] += v
		case "count":
			c.durCnt[k] += v
		}
	}
	return c
}

func parseLabels(s string) map[string]string {
	out := map[string]string{}
	for s != "" {
		eq := strings.IndexByte(s, '=')
		if eq < 0 || eq+1 >= len(s) || s[eq+1] != '"' {
			break
		}
		key := s[:eq]
		rest := s[eq+2:]
		end := strings.IndexByte(rest, '"')
		if end < 0 {
			break
		}
		out[key] = rest[:end]
		s = strings.TrimPrefix(rest[end+1:], ",")
	}
	return out
}

// delta is b - a per series.
func (b apiCounts) delta(a apiCounts) map[metricKey]float64 {
	out := map[metricKey]float64{}
	for k, v := range b.total {
		if d := v - a.total[k]; d > 0 {
			out[k] = d
		}
	}
	return out
}

// codesDelta is b - a by status code for one series.
func (b apiCounts) codesDelta(a apiCounts, k metricKey) map[string]float64 {
	out := map[string]float64{}
	for code, v := range b.codes[k] {
		if d := v - a.codes[k][code]; d > 0 {
			out[code] = d
		}
	}
	return out
}

// meanLatency is the mean API-server handling time of one series between a and b.
func (b apiCounts) meanLatency(a apiCounts, k metricKey) time.Duration {
	n := b.durCnt[k] - a.durCnt[k]
	if n <= 0 {
		return 0
	}
	return time.Duration((b.durSum[k] - a.durSum[k]) / n * float64(time.Second))
}

// isWrite: a request that changes what etcd stores (TokenReviews and access reviews are
// POSTs that store nothing).
func isWrite(k metricKey) bool {
	switch k.verb {
	case "POST", "PUT", "PATCH", "DELETE", "APPLY", "DELETECOLLECTION":
	default:
		return false
	}
	switch k.resource {
	case "tokenreviews", "subjectaccessreviews", "selfsubjectaccessreviews", "selfsubjectreviews", "localsubjectaccessreviews", "selfsubjectrulesreviews":
		return false
	}
	return true
}

// snapshot is everything read at one moment.
type snapshot struct {
	at       time.Time
	mgrCPU   []time.Duration
	mgrRSS   []uint64
	apiCPU   time.Duration
	etcdCPU  time.Duration
	genCPU   time.Duration
	api      apiCounts
	loadavg  string
	mgrAlive []bool
}

type procs struct {
	managers  []*manager
	apiserver []int
	etcd      []int
}

func takeSnapshot(ctx context.Context, admin *kubernetes.Clientset, p procs) snapshot {
	s := snapshot{api: readAPIMetrics(ctx, admin), at: time.Now(), genCPU: benchkit.SelfCPU(), loadavg: benchkit.LoadAvg()}
	for _, m := range p.managers {
		c, err := benchkit.ProcCPU(m.pid)
		rss, _, _ := benchkit.ProcMem(m.pid)
		s.mgrCPU = append(s.mgrCPU, c)
		s.mgrRSS = append(s.mgrRSS, rss)
		s.mgrAlive = append(s.mgrAlive, err == nil)
	}
	for _, pid := range p.apiserver {
		c, _ := benchkit.ProcCPU(pid)
		s.apiCPU += c
	}
	for _, pid := range p.etcd {
		c, _ := benchkit.ProcCPU(pid)
		s.etcdCPU += c
	}
	return s
}

// rssSampler reads every manager's VmRSS once a second.
type rssSampler struct {
	mu      sync.Mutex
	samples [][]rssSample // by manager
}

type rssSample struct {
	at  time.Time
	rss uint64
}

func (r *rssSampler) run(ctx context.Context, managers []*manager) {
	r.samples = make([][]rssSample, len(managers))
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		for i, m := range managers {
			if rss, _, err := benchkit.ProcMem(m.pid); err == nil {
				r.mu.Lock()
				r.samples[i] = append(r.samples[i], rssSample{time.Now(), rss})
				r.mu.Unlock()
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// peak is the largest RSS sample of manager i.
func (r *rssSampler) peak(i int) uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	var m uint64
	for _, s := range r.samples[i] {
		m = max(m, s.rss)
	}
	return m
}

// window returns the max and the mean RSS of manager i between from and to.
func (r *rssSampler) window(i int, from, to time.Time) (maxRSS, meanRSS uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var sum, n uint64
	for _, s := range r.samples[i] {
		if s.at.Before(from) || s.at.After(to) {
			continue
		}
		maxRSS = max(maxRSS, s.rss)
		sum += s.rss
		n++
	}
	if n > 0 {
		meanRSS = sum / n
	}
	return maxRSS, meanRSS
}

// readManagerMetrics reads the report counters and Go runtime gauges from a manager's /metrics.
func readManagerMetrics(m *manager) error {
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", m.metricsPort))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	m.reportsTotal = map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		sp := strings.LastIndexByte(line, ' ')
		if sp < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[sp+1:], 64)
		if err != nil {
			continue
		}
		name := line[:sp]
		switch {
		case strings.HasPrefix(name, "kong_watcher_manager_reports_total{"):
			m.reportsTotal[parseLabels(name[strings.IndexByte(name, '{')+1 : len(name)-1])["result"]] += v
		case name == "go_memstats_heap_inuse_bytes":
			m.heapInuse = v
		case name == "go_goroutines":
			m.goroutines = v
		case name == "process_open_fds":
			m.openFDs = v
		case name == "go_threads":
			m.threads = v
		}
	}
	return sc.Err()
}

func httpGet(url string) (int, error) {
	c := &http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}
