package aggregate

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/kong-watcher/kong-watcher/agent/model"
)

func FuzzAppendHost(f *testing.F) {
	for _, s := range []string{"", "API.Example.COM", "[::1]", "h\x00st", "caf\xc3\xa9.fr", strings.Repeat("a", 300), "{none}"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, host string) {
		out := string(AppendHost(nil, host))
		if out == "" || len(out) > maxHostLen || !utf8.ValidString(out) {
			t.Fatalf("AppendHost(%q) = %q", host, out)
		}
		for i := 0; i < len(out); i++ {
			if c := out[i]; c < 0x21 || c > 0x7e || 'A' <= c && c <= 'Z' {
				t.Fatalf("AppendHost(%q) = %q has byte %q", host, out, c)
			}
		}
		if out != NoHost && out != InvalidHost {
			if again := string(AppendHost(nil, out)); again != out {
				t.Fatalf("not idempotent: %q -> %q -> %q", host, out, again)
			}
		}
	})
}

// Whatever a broken decoder hands over, Observe must not panic and the Stats must stay
// consistent, bounded and encodable.
func FuzzObserve(f *testing.F) {
	f.Add("GET", "api.example.com", "/users/1?x=1", 200, int64(3_000_000), int64(1_000_000), true, uint64(10))
	f.Add("", "", "", 0, int64(-5), int64(1<<62), false, uint64(0))
	f.Add("\xff", "\x00", "http://x", 999, int64(1<<62), int64(-1), true, ^uint64(0))
	f.Fuzz(func(t *testing.T, method, host, uri string, status int, latency, upstream int64, hasUp bool, bytes uint64) {
		a := New(Options{MaxHosts: 2, MaxPaths: 2})
		r := &model.Request{Method: method, Host: host, URI: uri, Status: status, Latency: time.Duration(latency),
			Upstream: time.Duration(upstream), HasUpstream: hasUp, HasLua: hasUp, BytesSent: bytes}
		for i := 0; i < 3; i++ {
			a.Observe(r)
			r.Host += "x"
			r.URI += "/y"
		}
		a.Rotate()
		a.Observe(r)
		s := a.Snapshot()
		if s.Total.Requests != 4 || s.Window.Requests != 3 {
			t.Fatalf("requests total %d window %d", s.Total.Requests, s.Window.Requests)
		}
		if s.Total.Errors+s.Total.Responses < s.Total.Requests {
			t.Fatalf("errors %d + responses %d < requests %d", s.Total.Errors, s.Total.Responses, s.Total.Requests)
		}
		if len(s.Total.Hosts) > 3 || len(s.Total.Paths) > 3 {
			t.Fatalf("rows not bounded: %+v", s.Total)
		}
		for _, l := range []float64{s.Total.LatencyMs.P50, s.Total.LatencyMs.P99, s.Total.UpstreamLatencyMs.Max} {
			if l < 0 {
				t.Fatalf("negative latency %v", l)
			}
		}
		if b, err := json.Marshal(s); err != nil || !utf8.Valid(b) {
			t.Fatalf("Stats does not encode: %v", err)
		}
	})
}
