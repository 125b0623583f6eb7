package aggregate

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/kong-watcher/kong-watcher/agent/model"
	"github.com/kong-watcher/kong-watcher/api/v1alpha1"
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
		checkSummaryRows(t, "total", s.Total, 2)
		checkSummaryRows(t, "window", s.Window, 2)
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

// checkSummaryRows fails unless the host and the path rows of sum each add up to its
// requests, are at most max named rows plus other, and have distinct names.
func checkSummaryRows(t *testing.T, what string, sum v1alpha1.Summary, max int) {
	t.Helper()
	for dim, rows := range map[string][]v1alpha1.Row{"hosts": sum.Hosts, "paths": sum.Paths} {
		var total uint64
		names := map[string]bool{}
		for _, r := range rows {
			total += r.Requests
			if names[r.Name] || r.Requests == 0 || r.Errors > r.Requests {
				t.Fatalf("%s %s: row %+v (duplicate, empty or more errors than requests) in %+v", what, dim, r, rows)
			}
			names[r.Name] = true
		}
		if total != sum.Requests || len(rows) > max+1 {
			t.Fatalf("%s %s: %d rows add up to %d, want at most %d adding up to %d", what, dim, len(rows), total, max+1, sum.Requests)
		}
	}
}

// A stream of requests over a few hosts and paths, some of them fuzzed, with windows closing
// on the way: whatever places change hands, the totals are exact and the rows add up.
// Each byte of ops is one request (or, for 0xff, a Rotate).
func FuzzAggregatorStream(f *testing.F) {
	f.Add([]byte{0, 1, 2, 3, 0, 1, 2, 3, 0xff, 4, 5, 6, 4, 5, 6}, "api.example.com", "/users/1")
	f.Add([]byte("aabbccddeeff\xffaabbccdd\xff\xff"), "", "")
	f.Add([]byte(strings.Repeat("\x10\x20\x30\x40\x50\x60\x70\x80", 30)), "\xff\x00", "http://x/y?z")
	f.Fuzz(func(t *testing.T, ops []byte, host, uri string) {
		const max = 3
		clk := &fakeClock{t: t0}
		a := New(Options{MaxHosts: max, MaxPaths: max, Now: clk.Now})
		ops = ops[:min(len(ops), 1024)]
		var requests, window uint64
		for _, b := range ops {
			if b == 0xff {
				a.Rotate()
				window = 0
				continue
			}
			clk.Add(time.Millisecond)
			// The low bits pick one of 8 hosts and paths (more than max), some of them
			// the fuzzed ones; the high bits the status.
			r := req("GET", fmt.Sprintf("h%d", b&7), fmt.Sprintf("/p/w%c", 'a'+b>>3&7), 200+int(b>>6)*100, time.Duration(b)*time.Millisecond)
			if b&7 == 7 {
				r.Host = host
			}
			if b>>3&7 == 7 {
				r.URI = uri
			}
			r.End = clk.Now()
			a.Observe(r)
			requests++
			window++
		}
		a.Rotate()
		s := a.Snapshot()
		if s.Total.Requests != requests || s.Window.Requests != window {
			t.Fatalf("total %d window %d, want %d and %d", s.Total.Requests, s.Window.Requests, requests, window)
		}
		checkSummaryRows(t, "total", s.Total, max)
		checkSummaryRows(t, "window", s.Window, max)
		checkRanker(t, a.hosts)
		checkRanker(t, a.paths)
	})
}

// Any sequence of keys over any number of slots: the Ranker stays consistent and bounded,
// and with no more distinct keys than slots, no key ever moves. Each byte of ops is one
// request for the key it names modulo the fuzzed alphabet size (0xff: a new epoch).
func FuzzRanker(f *testing.F) {
	f.Add([]byte{0, 1, 2, 0, 1, 2, 3, 3, 3, 0xff, 4, 4, 1}, uint8(3), uint8(5))
	f.Add([]byte(strings.Repeat("abcdefghij", 20)), uint8(4), uint8(200))
	f.Add([]byte("aaaaaaaabbbbbbbbcdefgh\xffcdcdcdcdcd"), uint8(1), uint8(0))
	f.Fuzz(func(t *testing.T, ops []byte, slots, alphabet uint8) {
		r := NewRanker(int(slots % 16))
		distinct := map[byte]int{}
		within := true
		for _, b := range ops[:min(len(ops), 4096)] {
			if b == 0xff {
				r.NextEpoch()
				continue
			}
			k := b
			if alphabet > 0 {
				k = b % alphabet
			}
			if _, ok := distinct[k]; !ok && len(distinct) >= r.Max() {
				within = false
			}
			key := string([]byte{'k', k})
			slot, displaced, moved := r.Observe([]byte(key))
			if slot >= 0 && r.Key(slot) != key || moved && (slot < 0 || displaced == key) {
				t.Fatalf("%q: slot %d, displaced %q, moved %v", key, slot, displaced, moved)
			}
			if within {
				if s, ok := distinct[k]; moved || slot < 0 || ok && s != slot {
					t.Fatalf("%d distinct keys, %d slots: k%d at slot %d (was %d), moved %v", len(distinct), r.Max(), k, slot, s, moved)
				}
			}
			distinct[k] = slot
		}
		checkRanker(t, r)
	})
}
