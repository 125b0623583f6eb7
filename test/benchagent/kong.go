package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/kong-watcher/kong-watcher/test/fixture"
)

// The real-Kong round set: Kong 3.8.1 (hack/kong.sh's build, started by test/fixture's
// harness, DB-less, 2 workers) on a route as a production one is configured: key-auth,
// rate-limiting with limits that never trigger and a request transformer, proxied to the
// fixture's Go upstream (which answers at once), Kong's Prometheus plugin global as in the
// fixture. wrk sends the consumer's key.
const (
	kongBenchPath = "/bench"
	kongBenchKey  = "kw-bench-key"
)

type kongResult struct {
	skipped string // why there was no Kong round set ("" = it ran)
	done    bool
	what    string
	warmup  []float64 // req/s of each 5 s slice of the warm-up: LuaJIT's climb
	version string
}

// kongConfig is the declarative configuration POSTed to Kong's /config (DB-less): the
// fixture's services as Kong reports them, the bench route and its consumer, the fixture's
// /fast route (what its own readiness ping asks for) and its global Prometheus plugin.
func kongConfig(services []kongService) ([]byte, error) {
	type obj = map[string]any
	var svcs []obj
	backend := ""
	for _, s := range services {
		svcs = append(svcs, obj{"name": s.Name, "url": fmt.Sprintf("%s://%s:%d", s.Protocol, s.Host, s.Port)})
		if s.Name == "backend" {
			backend = s.Name
		}
	}
	if backend == "" {
		return nil, fmt.Errorf("Kong has no service named backend (services: %+v)", services)
	}
	conf := obj{
		"_format_version": "3.0",
		"services":        svcs,
		"routes": []obj{
			{"name": "bench", "service": backend, "paths": []string{kongBenchPath}, "strip_path": false,
				"plugins": []obj{
					{"name": "key-auth", "config": obj{"key_names": []string{"apikey"}, "hide_credentials": true}},
					// Counted per consumer in each worker's shared memory; never reached.
					{"name": "rate-limiting", "config": obj{"second": 1000000, "minute": 60000000, "policy": "local", "limit_by": "consumer"}},
					{"name": "request-transformer", "config": obj{
						"add": obj{"headers": []string{"X-Kw-Bench:1"}, "querystring": []string{"kwbench:1"}},
					}},
				}},
			{"name": "fast", "service": backend, "paths": []string{"/fast"}, "strip_path": false,
				"plugins": []obj{{"name": "request-termination", "config": obj{"status_code": 200, "body": "ok\n", "content_type": "text/plain"}}}},
		},
		"consumers": []obj{{"username": "bench", "keyauth_credentials": []obj{{"key": kongBenchKey}}}},
		"plugins": []obj{{"name": "prometheus", "config": obj{"status_code_metrics": true, "latency_metrics": true,
			"bandwidth_metrics": false, "upstream_health_metrics": false, "per_consumer": false}}},
	}
	return json.Marshal(conf)
}

type kongService struct {
	Name     string `json:"name"`
	Host     string `json:"host"`
	Port     int    `json:"port"`
	Protocol string `json:"protocol"`
}

// kongRuns runs the round set on real Kong, or says why not.
func (b *bench) kongRuns(ctx context.Context) (err error) {
	c := b.cfg
	if c.kongTop == "none" {
		b.kong.skipped = "the real-Kong round set was turned off (KW_KONG=none)"
		b.note("%s", b.kong.skipped)
		return nil
	}
	if c.kongTop == "" {
		b.kong.skipped = "real Kong is not built (`make kong` builds Kong 3.8.1 into the cache, 2-4 minutes; hack/bench-agent.sh then finds it, or pass KW_KONG=<TOP>): no real-Kong round set"
		b.note("%s", b.kong.skipped)
		return nil
	}
	for _, f := range []string{"bin/kong", "openresty/bin/resty", "stripped/nginx"} {
		if _, err := os.Stat(filepath.Join(c.kongTop, f)); err != nil {
			b.kong.skipped = fmt.Sprintf("the real Kong build %s is incomplete (%s missing; `make kong` rebuilds it): no real-Kong round set", c.kongTop, f)
			b.note("%s", b.kong.skipped)
			return nil
		}
	}
	top, err := privateKongTop(c.kongTop, filepath.Join(b.workDir, "kong-top"))
	if err != nil {
		return err
	}
	b.logf("starting real Kong (%s, 2 workers; its nginx copied to %s)", c.kongTop, filepath.Join(top, "stripped", "nginx"))
	k, err := fixture.StartKong(ctx, fixture.KongOptions{Top: top, Dir: filepath.Join(b.workDir, "kong"), Workers: 2})
	if err != nil {
		if k != nil && k.Gateway != nil && k.Prefix != "" {
			return fmt.Errorf("%w\n%s", err, k.ErrorLogTail(2000))
		}
		return err
	}
	defer func() {
		if serr := k.Stop(); serr != nil && err == nil {
			err = serr
		}
	}()
	if err := configureKong(ctx, k); err != nil {
		return err
	}
	_, body, _ := k.API(ctx, fixture.KongAdmin, "/")
	var info struct {
		Version string `json:"version"`
	}
	json.Unmarshal([]byte(body), &info) //nolint:errcheck
	b.kong.version = info.Version

	url := "http://" + k.HTTPAddr + kongBenchPath + "/items/42"
	hdr := "apikey: " + kongBenchKey
	t := &target{name: "kong", g: k.Gateway, agent: b.newAgent("kong", k.MasterPID()), dur: c.kongDur,
		poke: poker(url, http.Header{"Apikey": {kongBenchKey}})}
	t.floor = b.newFloor("kong", k.MasterPID())
	defer func() { t.agent.stop(); b.collectAgent(t.agent) }()
	defer t.floor.stop()
	workers, _ := k.WorkerPIDs()
	b.logf("Kong %s: master %d (%s), workers %v, proxy %s; floor: %v", info.Version, k.MasterPID(), exeOf(k.MasterPID()), workers, k.HTTPAddr, t.floor)

	s := scenario{name: "kong",
		what: fmt.Sprintf("wrk -t%d -c%d, HTTP/1.1 keep-alive, GET %s/items/42 with the consumer's key: key-auth + rate-limiting (never reached) + request-transformer, proxied to the fixture's Go upstream; Prometheus plugin on", c.wrkThreads, c.kongConns, kongBenchPath),
		run: func(ctx context.Context, d time.Duration) (loadResult, error) {
			return b.tool.wrk(ctx, url, c.wrkThreads, c.kongConns, d, hdr)
		}}
	b.kong.what = s.what
	// LuaJIT compiles Kong's hot paths as they run: throughput climbs for ~15 s after the
	// start. Warm up in 5 s slices (logged, so the climb shows) before any measured round.
	b.logf("Kong warm-up: %v of the bench load, no probe, not measured", c.kongWarmup)
	for left := c.kongWarmup; left > 0; left -= 5 * time.Second {
		d := min(left, 5*time.Second)
		if d < time.Second {
			break
		}
		r, err := s.run(ctx, d)
		if err != nil {
			return fmt.Errorf("Kong warm-up: %w", err)
		}
		if r.Errors > 0 {
			return fmt.Errorf("Kong warm-up: %d errors: %s", r.Errors, errorLines(r.Raw))
		}
		b.kong.warmup = append(b.kong.warmup, r.RPS)
		b.logf("  warm-up slice %d: %.0f req/s", len(b.kong.warmup), r.RPS)
	}
	b.logf("real Kong: %s", s.what)
	if err := b.roundSet(ctx, t, s, c.kongRounds); err != nil {
		return err
	}
	b.kong.done = true
	t.agent.stop()
	return b.kongLuaRuns(ctx, t, url, http.Header{"Apikey": {kongBenchKey}})
}

// configureKong replaces Kong's declarative configuration with kongConfig (POST /config on the
// Admin API, DB-less) and waits until every worker routes the bench route.
func configureKong(ctx context.Context, k *fixture.Kong) error {
	_, body, err := k.API(ctx, fixture.KongAdmin, "/services")
	if err != nil {
		return fmt.Errorf("Kong /services: %w", err)
	}
	var svcs struct {
		Data []kongService `json:"data"`
	}
	if err := json.Unmarshal([]byte(body), &svcs); err != nil {
		return fmt.Errorf("Kong /services: %w: %s", err, body)
	}
	conf, err := kongConfig(svcs.Data)
	if err != nil {
		return err
	}
	payload, _ := json.Marshal(map[string]string{"config": string(conf)})
	req, err := http.NewRequestWithContext(ctx, "POST", "http://"+k.AdminAddr+"/config", bytes.NewReader(payload))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		return fmt.Errorf("Kong POST /config: %w", err)
	}
	out, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated && resp.StatusCode != http.StatusOK {
		return fmt.Errorf("Kong POST /config: %s: %s", resp.Status, strings.TrimSpace(string(out)))
	}
	// Each worker rebuilds its router on its own: wait for 20 answers in a row over new
	// connections (spread over both workers) with the key, and a 401 without it.
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	url := "http://" + k.HTTPAddr + kongBenchPath + "/items/42"
	deadline := time.Now().Add(30 * time.Second)
	okRun := 0
	last := ""
	for okRun < 20 {
		if time.Now().After(deadline) {
			return fmt.Errorf("Kong does not serve the bench route 30 s after POST /config (last: %s)", last)
		}
		key := kongBenchKey
		if okRun == 10 {
			key = ""
		}
		req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
		if key != "" {
			req.Header.Set("apikey", key)
		}
		resp, err := client.Do(req)
		if err != nil {
			last = err.Error()
			okRun = 0
			time.Sleep(100 * time.Millisecond)
			continue
		}
		io.Copy(io.Discard, resp.Body) //nolint:errcheck
		resp.Body.Close()
		want := http.StatusOK
		if key == "" {
			want = http.StatusUnauthorized
		}
		if resp.StatusCode != want || (key != "" && resp.Header.Get("X-RateLimit-Limit-Second") == "") {
			last = fmt.Sprintf("%s (want %d with rate-limit headers)", resp.Status, want)
			okRun = 0
			time.Sleep(100 * time.Millisecond)
			continue
		}
		okRun++
	}
	return nil
}

// privateKongTop makes dir a Kong TOP that runs a private copy of the build's stripped nginx
// and links everything else to the build: uprobes are set on a file, and Kong tests running
// on this machine at the same time attach theirs to the build's binary, where they would fire
// in our workers on every side. The build's absolute paths (rpath, Lua package paths) still
// point into the build, so nothing else needs copying.
func privateKongTop(top, dir string) (string, error) {
	ents, err := os.ReadDir(top)
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(filepath.Join(dir, "stripped"), 0o755); err != nil {
		return "", err
	}
	for _, e := range ents {
		if e.Name() == "stripped" {
			continue
		}
		if err := os.Symlink(filepath.Join(top, e.Name()), filepath.Join(dir, e.Name())); err != nil && !os.IsExist(err) {
			return "", err
		}
	}
	src, err := filepath.EvalSymlinks(filepath.Join(top, "stripped", "nginx"))
	if err != nil {
		return "", err
	}
	if err := copyFile(src, filepath.Join(dir, "stripped", "nginx")); err != nil {
		return "", err
	}
	return dir, nil
}
