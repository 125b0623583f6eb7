package report

import (
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/kong-watcher/kong-watcher/agent/aggregate"
	"github.com/kong-watcher/kong-watcher/agent/model"
	"github.com/kong-watcher/kong-watcher/agent/pathnorm"
	"github.com/kong-watcher/kong-watcher/api/v1alpha1"
)

// Whatever a broken decoder or a hostile client hands over, Metrics.Observe must not panic,
// every label value must be valid UTF-8 and bounded, the series must stay within their bound,
// and the cached series must be exactly the registered ones. Each byte of ops is one request
// built from the fuzzed values and that byte, so that values gain and lose their places.
func FuzzMetricsObserve(f *testing.F) {
	f.Add([]byte{0, 1, 2, 3, 64, 65, 66, 128, 129, 192}, "GET", "api.example.com", "/users/1?x=1", 200, int64(3_000_000), int64(1_000_000), uint64(10))
	f.Add([]byte("\x00\xff\x10\x80\x41\x41\x42\x42\x43\x43"), "", "", "", 0, int64(-5), int64(1<<62), uint64(0))
	f.Add([]byte(strings.Repeat("\x07\x47\x87\xc7", 20)), "\xff", "\x00OTHER", "http://x/a/b?c", 999, int64(1<<62), int64(-1), ^uint64(0))
	f.Add([]byte("abcabcabcxyzxyzxyz"), "PURGE", "other", "*", 404, int64(-1<<63), int64(1<<63-1), uint64(1))
	f.Add([]byte("\x01\x02\x03\x04"), "GET", strings.Repeat("h", 300), "/"+strings.Repeat("a/", 200), 503, int64(0), int64(0), uint64(0))
	f.Fuzz(func(t *testing.T, ops []byte, method, host, uri string, status int, latency, upstream int64, bytes uint64) {
		const maxHosts, maxPaths, maxSeries = 3, 3, 8
		m, reg := newTestMetrics(t, MetricsOptions{MaxHosts: maxHosts, MaxPaths: maxPaths, MaxSeries: maxSeries})
		ops = ops[:min(len(ops), 512)]
		methods := [...]string{method, "GET", "POST", "get", "PURGE", "\x00", "OPTIONS", "BREW"}
		for _, b := range ops {
			r := &model.Request{Method: methods[b&7], Host: host, URI: uri, Status: status, Latency: time.Duration(latency),
				Upstream: time.Duration(upstream), HasUpstream: b&1 == 1, HasLua: b&2 == 2, BytesSent: bytes,
				HostTruncated: b&4 == 4, URITruncated: b&8 == 8, Listener: [...]string{"", "admin", model.ListenerUnix, v1alpha1.OtherRow}[b>>4&3]}
			for i := range r.LuaPhases {
				r.LuaPhases[i] = time.Duration(latency >> i)
			}
			// Four shapes: as fuzzed, with a variant number (new values), cut, or a status of
			// its own.
			v := strconv.Itoa(int(b>>3) & 7)
			switch b >> 6 {
			case 1:
				r.Host += v
				r.URI += "/" + strings.Repeat("w", int(b>>3)&7+1)
			case 2:
				r.Host = r.Host[:min(len(r.Host), int(b&31))]
				r.URI = r.URI[:min(len(r.URI), int(b&31))]
			case 3:
				r.Status = int(b) * 3
			}
			m.Observe(r)
		}

		checkSeries(t, m, reg)
		var sum float64
		codes := map[string]bool{}
		for _, mf := range must(reg.Gather()) {
			if mf.GetName() != "kong_watcher_requests_total" {
				continue
			}
			for _, s := range mf.Metric {
				sum += s.GetCounter().GetValue()
				if s.GetCounter().GetValue() < 1 {
					t.Errorf("series %v counts %v", s.Label, s.GetCounter().GetValue())
				}
				for _, lp := range s.Label {
					name, val := lp.GetName(), lp.GetValue()
					if !utf8.ValidString(val) {
						t.Fatalf("%s=%q is not UTF-8", name, val)
					}
					switch name {
					case "host":
						// The longest host row name, plus the mark of a cut value.
						if len(val) > 253+len(pathnorm.Truncated) || !isPlace(m.rank[hostDim], val) {
							t.Fatalf("host=%q: too long or without a place", val)
						}
					case "path":
						if len(val) > pathnorm.MaxLen+len("/"+pathnorm.Truncated) || !isPlace(m.rank[pathDim], val) {
							t.Fatalf("path=%q: too long or without a place", val)
						}
					case "method":
						if aggregate.Method(val) != val {
							t.Fatalf("method=%q", val)
						}
					case "listener":
						if m.listeners[m.listenerIndex[val]].name != val {
							t.Fatalf("listener=%q", val)
						}
					case "code":
						codes[val] = true
						if n, err := strconv.Atoi(val); err != nil || val != "000" && !aggregate.ValidStatus(n) {
							t.Fatalf("code=%q", val)
						}
					}
				}
			}
		}
		// Deleted series took their counts with them, so the series add up to at most the
		// requests.
		if sum > float64(len(ops)) {
			t.Fatalf("series add up to %v, %d requests", sum, len(ops))
		}
		// Beyond maxSeries only {method, other, other, code, listener} series.
		if n := len(m.series.index); n > maxSeries+len(aggregate.Methods)*len(codes)*len(m.listeners) {
			t.Fatalf("%d series for %d codes", n, len(codes))
		}
		if m.rank[hostDim].Len() > maxHosts || m.rank[pathDim].Len() > maxPaths {
			t.Fatalf("%d hosts, %d paths have a place", m.rank[hostDim].Len(), m.rank[pathDim].Len())
		}
	})
}

// isPlace reports whether v is "other" or the value of one of r's slots.
func isPlace(r *aggregate.Ranker, v string) bool {
	if v == v1alpha1.OtherRow {
		return true
	}
	for s := range r.Len() {
		if r.Key(s) == v {
			return true
		}
	}
	return false
}
