package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/kong-watcher/kong-watcher/agent/aggregate"
	"github.com/kong-watcher/kong-watcher/agent/model"
	kwv1 "github.com/kong-watcher/kong-watcher/api/v1alpha1"
)

// routeSet is one gateway's traffic: its hosts and its routes (paths with ids the agent
// normalises), as a Deployment's pods all see the same mix.
type routeSet struct {
	hosts  []string
	routes []route
}

type route struct {
	method   string
	pattern  string // %d: a number, %s: a UUID, %x: hex
	weight   float64
	upstream float64 // median upstream latency, ms
	noProxy  bool    // answered by Kong itself (no upstream)
}

var hostPool = []string{"api.example.com", "shop.example.com", "auth.example.com", "m.example.com", "partners.example.com",
	"admin.example.com", "cdn.example.com", "search.example.com", "pay.example.com", "ws.example.com"}

var routePool = []route{
	{"GET", "/users/%d", 20, 12, false}, {"GET", "/users/%d/orders", 8, 25, false}, {"POST", "/orders", 6, 40, false},
	{"GET", "/orders/%s", 6, 18, false}, {"GET", "/products/%d", 15, 9, false}, {"GET", "/products/%d/reviews", 4, 30, false},
	{"GET", "/api/v1/search", 8, 60, false}, {"POST", "/auth/token", 5, 35, false}, {"GET", "/health", 3, 0.4, true},
	{"GET", "/carts/%x", 4, 14, false}, {"PUT", "/carts/%x/items/%d", 3, 20, false}, {"DELETE", "/carts/%x/items/%d", 1, 15, false},
	{"GET", "/static/app.%x.js", 4, 3, false}, {"GET", "/api/v2/catalog/%d/variants", 3, 22, false},
	{"PATCH", "/users/%d/preferences", 1, 16, false}, {"OPTIONS", "/api/v1/search", 1, 0.3, true},
	{"GET", "/images/%s", 5, 8, false}, {"POST", "/payments/%s/capture", 1, 120, false}, {"GET", "/inventory/%d", 3, 11, false},
	{"GET", "/recommendations/%d", 2, 80, false}, {"POST", "/events", 4, 6, false}, {"GET", "/stores/%d/hours", 1, 7, false},
	{"GET", "/api/v1/flags", 2, 4, false}, {"POST", "/graphql", 5, 45, false}, {"GET", "/sitemap.xml", 0.5, 25, false},
	{"GET", "/users/%d/avatar", 2, 5, false}, {"POST", "/webhooks/%s", 1, 30, false}, {"GET", "/orders/%s/tracking", 2, 50, false},
	{"GET", "/coupons/%x", 1, 9, false}, {"GET", "/api/v2/prices/%d", 3, 13, false},
}

// routeSetFor gives Deployment d between 2 and 6 hosts and 8 to 30 routes.
func routeSetFor(d int) *routeSet {
	nh := 2 + d%5
	nr := 8 + (d*7)%23
	rs := &routeSet{}
	for k := range nh {
		rs.hosts = append(rs.hosts, hostPool[(d+k)%len(hostPool)])
	}
	for k := range nr {
		rs.routes = append(rs.routes, routePool[(d*3+k)%len(routePool)])
	}
	return rs
}

// statusMix: a mostly healthy gateway (0 = no response sent).
var statusMix = []struct {
	code   int
	weight float64
}{{200, 82}, {201, 5}, {204, 3}, {304, 2}, {400, 1}, {401, 1.5}, {404, 3}, {429, 0.5}, {500, 0.5}, {502, 0.8}, {503, 0.4}, {0, 0.3}}

func pick[T any](r *rand.Rand, items []T, weight func(T) float64) T {
	var sum float64
	for _, it := range items {
		sum += weight(it)
	}
	x := r.Float64() * sum
	for _, it := range items {
		if x -= weight(it); x < 0 {
			return it
		}
	}
	return items[len(items)-1]
}

func (rs *routeSet) uri(r *rand.Rand, rt route) string {
	var args []any
	for i := 0; i < len(rt.pattern)-1; i++ {
		if rt.pattern[i] != '%' {
			continue
		}
		switch rt.pattern[i+1] {
		case 'd':
			args = append(args, r.IntN(100000))
		case 's':
			args = append(args, fmt.Sprintf("%08x-%04x-4%03x-a%03x-%012x", r.Uint32(), r.IntN(1<<16), r.IntN(1<<12), r.IntN(1<<12), r.Uint64()&(1<<48-1)))
		case 'x':
			args = append(args, r.Uint64())
		}
	}
	u := fmt.Sprintf(rt.pattern, args...)
	if r.IntN(4) == 0 {
		u += "?page=" + strconv.Itoa(r.IntN(20)) + "&sort=asc"
	}
	return u
}

// simAgent is one simulated agent: its pod, its token, its own Aggregator (the real one),
// fed synthetic requests before each report.
type simAgent struct {
	i        int
	ns, pod  string
	token    string
	replica  int
	agg      *aggregate.Aggregator
	rng      *rand.Rand
	routes   *routeSet
	perRound int
	req      model.Request
}

func newSimAgent(i int, pod *corev1.Pod, token string, replica int, routes *routeSet, perRound int) *simAgent {
	a := &simAgent{i: i, ns: pod.Namespace, pod: pod.Name, token: token, replica: replica,
		agg: aggregate.New(aggregate.Options{}), rng: rand.New(rand.NewPCG(uint64(i)+1, 0x6b77)), routes: routes, perRound: perRound}
	a.agg.SetDataPath("nginx-request")
	return a
}

// traffic observes one interval's synthetic requests (ending now) and closes the window, as
// the agent's stats loop does every STATS_INTERVAL.
func (a *simAgent) traffic(interval time.Duration, now time.Time) {
	n := a.perRound/2 + a.rng.IntN(a.perRound+1) // perRound on average
	r := &a.req
	for k := range n {
		rt := pick(a.rng, a.routes.routes, func(x route) float64 { return x.weight })
		st := pick(a.rng, statusMix, func(x struct {
			code   int
			weight float64
		}) float64 {
			return x.weight
		})
		*r = model.Request{Method: rt.method, Host: a.routes.hosts[a.rng.IntN(len(a.routes.hosts))], URI: a.routes.uri(a.rng, rt),
			Proto: "HTTP/1.1", Status: st.code, BytesSent: uint64(200 + a.rng.IntN(20000)), PID: 20 + a.rng.IntN(2)}
		if a.rng.IntN(5) == 0 {
			r.Proto = "HTTP/2.0"
		}
		kong := time.Duration((0.3 + a.rng.ExpFloat64()*0.7) * float64(time.Millisecond))
		if rt.noProxy || st.code == 401 || st.code == 429 || (st.code == 404 && a.rng.IntN(2) == 0) {
			r.Latency = kong
		} else {
			up := time.Duration(rt.upstream * math.Exp(a.rng.NormFloat64()*0.8) * float64(time.Millisecond))
			if st.code == 502 || st.code == 503 {
				up = time.Duration(a.rng.IntN(5000)) * time.Millisecond
			}
			r.Upstream, r.HasUpstream = up, true
			r.Latency = (up + kong).Truncate(time.Millisecond)
		}
		if a.rng.IntN(30) == 0 { // Lua phase timing, sampled (2 s of every minute)
			r.HasLua = true
			r.LuaPhases[model.LuaRewrite] = 40 * time.Microsecond
			r.LuaPhases[model.LuaAccess] = kong / 2
			r.LuaPhases[model.LuaHeaderFilter] = 15 * time.Microsecond
			r.LuaPhases[model.LuaBodyFilter] = 10 * time.Microsecond
			r.LuaPhases[model.LuaLog] = 80 * time.Microsecond
			r.LuaPhases[model.LuaBalancer] = 20 * time.Microsecond
		}
		r.End = now.Add(-interval + time.Duration(k+1)*interval/time.Duration(n+1))
		r.Start = r.End.Add(-r.Latency)
		a.agg.Observe(r)
	}
	a.agg.Rotate()
}

// report builds the agent's Report: its Stats and the Events it would send now.
func (a *simAgent) report(round int, startupEvents bool) kwv1.Report {
	s := a.agg.Snapshot()
	rep := kwv1.Report{APIVersion: kwv1.StatsAPIVersion, Kind: kwv1.ReportKind,
		Pod: kwv1.PodRef{Namespace: a.ns, Name: a.pod}, Stats: &s}
	if round == 0 && startupEvents {
		// What a starting agent reports first (agent/kube/notify.go).
		rep.Events = append(rep.Events,
			kwv1.ReportEvent{Type: corev1.EventTypeNormal, Reason: kwv1.ReasonKongDetected,
				Message: "gateway found: master PID 1 with 2 workers (nginx: master process /usr/local/openresty/nginx/sbin/nginx -p /kong_prefix/ -c nginx.conf), openresty/1.25.3.2 nginx/1.25.3"},
			kwv1.ReportEvent{Type: corev1.EventTypeNormal, Reason: kwv1.ReasonProbesAttached,
				Message: "probes attached to master PID 1 (3 processes), data path nginx-request"})
	}
	// TrafficStats every 5 minutes (the agent's default), phases spread over the fleet as for
	// agents started at different times: a tenth of the agents each 30 s round.
	if round > 0 && (a.i+round)%10 == 0 {
		w, t := s.Window, s.Total
		ratio := 0.0
		if w.Requests > 0 {
			ratio = float64(w.Errors) / float64(w.Requests)
		}
		rep.Events = append(rep.Events, kwv1.ReportEvent{Type: corev1.EventTypeNormal, Reason: kwv1.ReasonTrafficStats,
			Message: fmt.Sprintf("last %s: %d requests (%.1f/s), %d errors (%.1f%%), p50 %.1fms p99 %.1fms; since start: %d requests, %d errors",
				(time.Duration(math.Round(w.PeriodSeconds)) * time.Second).String(), w.Requests, w.RequestsPerSecond, w.Errors, 100*ratio,
				w.LatencyMs.P50, w.LatencyMs.P99, t.Requests, t.Errors)})
	}
	return rep
}

// attempt is one POST as the agent saw it.
type attempt struct {
	start   time.Time
	status  int // 0: transport error
	latency time.Duration
	late    time.Duration // how late the load generator started it (CPU starved), not in latency
	bytes   int
	events  int
	err     string
}

// newTransport is the load generator's connection pool to one manager replica: shared by the
// agents that replica serves (see the package doc), keep-alive, trusting only the managers' CA,
// as the agent's own client (agent/kube.NewHTTPClient) but with up to conns connections.
func newTransport(caPEM []byte, conns int) (*http.Transport, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("no CA")
	}
	return &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		TLSClientConfig:     &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12, ServerName: managerService + "." + managerNamespace + ".svc"},
		TLSHandshakeTimeout: 5 * time.Second,
		MaxConnsPerHost:     conns,
		MaxIdleConns:        conns,
		MaxIdleConnsPerHost: conns,
		IdleConnTimeout:     5 * time.Minute,
	}, nil
}

// post sends one report as agent/kube.Reporter.post does.
func post(ctx context.Context, hc *http.Client, url, token string, payload []byte) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(payload))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("User-Agent", "kong-watcher-agent")
	resp, err := hc.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	return resp.StatusCode, body, nil
}

// schedule runs the agents' rounds: agent i sends its round-r report at
// t0 + r*interval + (i+1/2)*interval/n (spread evenly over the interval, the same phase every round,
// as agents started at different moments). A failed report is retried as the agent does
// (backoff from 1 s, doubling, jittered) until the agent's next report is due.
type schedule struct {
	t0       time.Time
	interval time.Duration
	rounds   int
	urls     []string
	clients  []*http.Client
	startup  bool
	// results[round][agent]: the attempts of that report, in order.
	results [][][]attempt
}

func (s *schedule) run(ctx context.Context, agents []*simAgent) {
	n := len(agents)
	s.results = make([][][]attempt, s.rounds)
	for r := range s.results {
		s.results[r] = make([][]attempt, n)
	}
	var wg sync.WaitGroup
	for _, a := range agents {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Half a slot in, so that a round boundary (where the snapshots are read) falls
			// between two agents' reports.
			offset := time.Duration(2*a.i+1) * s.interval / time.Duration(2*n)
			for r := range s.rounds {
				at := s.t0.Add(time.Duration(r)*s.interval + offset)
				if !sleepUntil(ctx, at) {
					return
				}
				a.traffic(s.interval, time.Now())
				rep := a.report(r, s.startup)
				payload, err := json.Marshal(rep)
				if err != nil {
					panic(err)
				}
				next := at.Add(s.interval)
				backoff := time.Second
				for {
					start := time.Now()
					cctx, cancel := context.WithTimeout(ctx, 10*time.Second) // the agent's RequestTimeout
					status, body, err := post(cctx, s.clients[a.replica], s.urls[a.replica], a.token, payload)
					cancel()
					res := attempt{start: start, status: status, latency: time.Since(start), bytes: len(payload), events: len(rep.Events)}
					if len(s.results[r][a.i]) == 0 {
						res.late = start.Sub(at)
					}
					if err != nil {
						res.err = err.Error()
					} else if status != http.StatusOK {
						res.err = firstLine(body)
					}
					s.results[r][a.i] = append(s.results[r][a.i], res)
					if status == http.StatusOK || status == http.StatusGone || status == http.StatusBadRequest || ctx.Err() != nil {
						break
					}
					d := backoff/2 + time.Duration(rand.Int64N(int64(backoff)))
					backoff *= 2
					if time.Now().Add(d).After(next) {
						break
					}
					if !sleepUntil(ctx, time.Now().Add(d)) {
						return
					}
				}
			}
		}()
	}
	wg.Wait()
}

func sleepUntil(ctx context.Context, t time.Time) bool {
	d := time.Until(t)
	if d <= 0 {
		return ctx.Err() == nil
	}
	tm := time.NewTimer(d)
	defer tm.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-tm.C:
		return true
	}
}

func firstLine(b []byte) string {
	s := string(bytes.TrimSpace(b))
	if i := bytes.IndexByte([]byte(s), '\n'); i >= 0 {
		s = s[:i]
	}
	if len(s) > 200 {
		s = s[:200] + "..."
	}
	return s
}
