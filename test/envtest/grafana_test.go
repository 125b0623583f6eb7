package envtest

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/kong-watcher/kong-watcher/agent/model"
	"github.com/kong-watcher/kong-watcher/agent/report"

	"github.com/kong-watcher/kong-watcher/test/fixture"
)

// TestGrafanaDashboardMetrics: every metric the dashboard (config/grafana) queries is one the
// agent exports. The exported names come from the agent's own code (report.NewMetrics,
// registered and gathered), not from a list kept here.
func TestGrafanaDashboardMetrics(t *testing.T) {
	exported := agentMetricNames(t)
	dash := readDashboard(t)

	for _, k := range []string{"uid", "title", "schemaVersion", "panels", "templating"} {
		if _, ok := dash[k]; !ok {
			t.Errorf("dashboard has no %q: not importable as is", k)
		}
	}
	// Every panel and query variable uses the datasource variable, so the dashboard imports
	// into any Grafana without inputs.
	vars := map[string]string{}
	for _, v := range asList(asMap(dash["templating"])["list"]) {
		vars[asString(asMap(v)["name"])] = asString(asMap(v)["type"])
	}
	if vars["datasource"] != "datasource" {
		t.Errorf("no datasource template variable (variables: %v)", vars)
	}

	var exprs []string
	panels := 0
	var walk func(ps []any)
	walk = func(ps []any) {
		for _, p := range ps {
			pm := asMap(p)
			walk(asList(pm["panels"])) // rows may nest panels
			if asString(pm["type"]) == "row" {
				continue
			}
			panels++
			if uid := asString(asMap(pm["datasource"])["uid"]); uid != "${datasource}" {
				t.Errorf("panel %q datasource uid %q, want ${datasource}", pm["title"], uid)
			}
			ts := asList(pm["targets"])
			if len(ts) == 0 {
				t.Errorf("panel %q has no queries", pm["title"])
			}
			for _, tg := range ts {
				e := asString(asMap(tg)["expr"])
				if e == "" {
					t.Errorf("panel %q has a target without expr", pm["title"])
				}
				exprs = append(exprs, e)
			}
		}
	}
	walk(asList(dash["panels"]))
	for _, v := range asList(asMap(dash["templating"])["list"]) {
		vm := asMap(v)
		if asString(vm["type"]) != "query" {
			continue
		}
		q := asString(asMap(vm["query"])["query"])
		if q == "" {
			q = asString(vm["query"])
		}
		// label_values(<series selector>, <label>): the selector is PromQL, the label is not.
		if m := regexp.MustCompile(`^label_values\((.*),\s*\w+\)$`).FindStringSubmatch(q); m != nil {
			q = m[1]
		}
		exprs = append(exprs, q)
	}
	if panels < 15 {
		t.Errorf("%d panels, want the full set (traffic, latency, top-N, Lua, agent health)", panels)
	}

	used := map[string]bool{}
	for _, e := range exprs {
		for _, n := range promqlMetricNames(e) {
			used[n] = true
		}
	}
	var unknown []string
	for n := range used {
		if !exported[n] {
			unknown = append(unknown, n)
		}
	}
	sort.Strings(unknown)
	if len(unknown) > 0 {
		t.Errorf("the dashboard queries metrics the agent does not export: %v\nexported: %v", unknown, keys(exported))
	}
	// The dashboard covers what the issue asks for.
	for _, want := range []string{
		"kong_watcher_requests_total", "kong_watcher_request_duration_seconds_bucket",
		"kong_watcher_upstream_duration_seconds_bucket", "kong_watcher_kong_duration_seconds_bucket",
		"kong_watcher_lua_phase_duration_seconds_bucket", "kong_watcher_probes_attached",
		"kong_watcher_events_dropped_total", "kong_watcher_processes_tracked", "kong_watcher_decode_errors_total",
	} {
		if !used[want] {
			t.Errorf("the dashboard does not query %s", want)
		}
	}
	t.Logf("%d panels, %d queries, metrics used: %v", panels, len(exprs), keys(used))
}

// agentMetricNames: the series names the agent's /metrics can carry (histograms as
// _bucket/_sum/_count).
func agentMetricNames(t *testing.T) map[string]bool {
	t.Helper()
	m := report.NewMetrics(report.MetricsOptions{})
	reg := prometheus.NewRegistry()
	if err := m.Register(reg); err != nil {
		t.Fatal(err)
	}
	// Vectors have no series until used: one request and the info metric make every family
	// appear.
	now := time.Now()
	r := &model.Request{Start: now.Add(-10 * time.Millisecond), End: now, Method: "GET", Host: "example.com",
		URI: "/users/1", Proto: "HTTP/1.1", Status: 200, Latency: 10 * time.Millisecond,
		Upstream: 5 * time.Millisecond, HasUpstream: true, BytesSent: 100, HasLua: true}
	for i := range r.LuaPhases {
		r.LuaPhases[i] = time.Millisecond
	}
	m.Observe(r)
	m.SetInfo("test", "nginx-request")
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, mf := range mfs {
		n := mf.GetName()
		switch mf.GetType() {
		case dto.MetricType_HISTOGRAM, dto.MetricType_GAUGE_HISTOGRAM:
			names[n+"_bucket"], names[n+"_sum"], names[n+"_count"] = true, true, true
		case dto.MetricType_SUMMARY:
			names[n], names[n+"_sum"], names[n+"_count"] = true, true, true
		default:
			names[n] = true
		}
	}
	if len(mfs) < 11 {
		t.Fatalf("gathered %d metric families from report.Metrics, want every one: %v", len(mfs), keys(names))
	}
	return names
}

var (
	promqlStrings   = regexp.MustCompile(`"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|` + "`[^`]*`")
	promqlMatchers  = regexp.MustCompile(`\{[^{}]*\}`)
	promqlRanges    = regexp.MustCompile(`\[[^\[\]]*\]`)
	promqlGrouping  = regexp.MustCompile(`(?i)\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)`)
	promqlIdent     = regexp.MustCompile(`[A-Za-z_:][A-Za-z0-9_:]*`)
	promqlNumberish = regexp.MustCompile(`^(?i:inf|nan)$`)
	promqlKeywords  = []string{"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
		"group_left", "group_right", "atan2", "start", "end"}
)

// promqlMetricNames returns the metric names in a PromQL expression (Grafana variables
// allowed): the identifiers left once strings, label matchers, ranges and grouping clauses are
// removed that are not keywords and not function calls.
func promqlMetricNames(expr string) []string {
	s := promqlStrings.ReplaceAllString(expr, `""`)
	s = promqlMatchers.ReplaceAllString(s, " ")
	s = promqlRanges.ReplaceAllString(s, " ")
	s = promqlGrouping.ReplaceAllString(s, " ")
	s = regexp.MustCompile(`\$\{?\w+\}?`).ReplaceAllString(s, " ") // $__rate_interval, ${var}
	var out []string
	for _, loc := range promqlIdent.FindAllStringIndex(s, -1) {
		id := s[loc[0]:loc[1]]
		if loc[0] > 0 && (s[loc[0]-1] >= '0' && s[loc[0]-1] <= '9' || s[loc[0]-1] == '.') {
			continue // the unit or exponent of a number (5m, 1e3)
		}
		rest := strings.TrimLeft(s[loc[1]:], " \t\n")
		if strings.HasPrefix(rest, "(") || slices.Contains(promqlKeywords, strings.ToLower(id)) || promqlNumberish.MatchString(id) {
			continue
		}
		out = append(out, id)
	}
	return out
}

func TestPromQLMetricNames(t *testing.T) {
	for _, tc := range []struct {
		expr string
		want []string
	}{
		{`sum(rate(foo_total{a="b", c=~"x|y"}[$__rate_interval]))`, []string{"foo_total"}},
		{`histogram_quantile(0.99, sum by (le, method) (rate(h_bucket{pod=~"$pod"}[5m])))`, []string{"h_bucket"}},
		{`sum(rate(a_sum[1m])) / sum(rate(a_count[1m])) > 0`, []string{"a_sum", "a_count"}},
		{`sum by (class) (label_replace(rate(r_total[1m]), "class", "${1}xx", "code", "([0-9]).."))`, []string{"r_total"}},
		{`topk(10, sum by (host) (increase(r_total[$__range]))) and on (pod) up`, []string{"r_total", "up"}},
		{`count by (version) (info{x="y"}) * 1e3 + Inf`, []string{"info"}},
		{`kong_watcher_info`, []string{"kong_watcher_info"}},
	} {
		if got := promqlMetricNames(tc.expr); !slices.Equal(got, tc.want) {
			t.Errorf("promqlMetricNames(%q) = %v, want %v", tc.expr, got, tc.want)
		}
	}
}

func readDashboard(t *testing.T) map[string]any {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(fixture.RepoRoot(t), "config", "grafana", "kong-watcher-dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	var d map[string]any
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("dashboard JSON: %v", err)
	}
	return d
}

func asMap(v any) map[string]any { m, _ := v.(map[string]any); return m }
func asList(v any) []any         { l, _ := v.([]any); return l }
func asString(v any) string      { s, _ := v.(string); return s }

func keys(m map[string]bool) []string {
	var l []string
	for k := range m {
		l = append(l, k)
	}
	sort.Strings(l)
	return l
}

// TestKustomizeGrafana: config/grafana renders the dashboard, byte for byte, in a ConfigMap
// that Grafana's dashboard sidecar picks up.
func TestKustomizeGrafana(t *testing.T) {
	objs := kustomize(t, "grafana")
	cm := objs.find("ConfigMap", "kong-watcher-dashboard")
	if cm == nil {
		t.Fatal("config/grafana renders no ConfigMap kong-watcher-dashboard")
	}
	if cm.GetLabels()["grafana_dashboard"] != "1" {
		t.Errorf("ConfigMap labels = %v, want grafana_dashboard: \"1\"", cm.GetLabels())
	}
	want, err := os.ReadFile(filepath.Join(fixture.RepoRoot(t), "config", "grafana", "kong-watcher-dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	data, _ := cm.Object["data"].(map[string]any)
	if got, _ := data["kong-watcher-dashboard.json"].(string); got != string(want) {
		t.Errorf("ConfigMap data differs from the dashboard file (%d vs %d bytes)", len(got), len(want))
	}
}
