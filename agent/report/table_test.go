package report

import (
	"flag"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/kong-watcher/kong-watcher/api/v1alpha1"
)

var update = flag.Bool("update", false, "rewrite golden files")

func TestTableGolden(t *testing.T) {
	for name, s := range map[string]v1alpha1.Stats{"table.golden": sampleStats(), "table-empty.golden": {Since: since, Updated: since}} {
		got := Table(s)
		path := filepath.Join("testdata", name)
		if *update {
			if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		want, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("%v (run go test -run TestTableGolden -update)", err)
		}
		if got != string(want) {
			t.Errorf("%s mismatch:\n--- got\n%s\n--- want\n%s", name, got, want)
		}
	}
}

// listenerStats is sampleStats with the listeners of a Kong pod: the proxy (the headline's
// numbers), the Admin and Status APIs, Kong's worker events (unix), an unnamed port, and a
// listener of the whole run that had nothing in the window's document.
func listenerStats() v1alpha1.Stats {
	s := sampleStats()
	lat := func(n uint64, p50, p99 float64) v1alpha1.Latency {
		return v1alpha1.Latency{Count: n, Avg: p50, P50: p50, P95: p99, P99: p99, Max: p99}
	}
	s.Total.Listeners = map[string]v1alpha1.ListenerSummary{
		"proxy":  {Requests: 1234, Responses: 1230, Errors: 5, ClientErrors: 30, RequestsPerSecond: 0.33, LatencyMs: s.Total.LatencyMs},
		"status": {Requests: 3723, Responses: 3723, RequestsPerSecond: 1.0, LatencyMs: lat(3723, 0.2, 1.4)},
		"admin":  {Requests: 41, Responses: 41, ClientErrors: 8, RequestsPerSecond: 0.01, LatencyMs: lat(41, 1.1, 12.5)},
		"unix":   {Requests: 4, Responses: 4, RequestsPerSecond: 0, LatencyMs: lat(4, 3720000, 3720000)},
		"8444":   {Requests: 2, Responses: 1, Errors: 1, LatencyMs: lat(2, 0.5, 0.9)},
		"9000":   {Requests: 1, Responses: 1, LatencyMs: lat(1, 0.3, 0.3)},
		"other":  {Requests: 3, Responses: 3, LatencyMs: lat(3, 0.1, 0.2)},
	}
	s.Window.Listeners = map[string]v1alpha1.ListenerSummary{
		"proxy":  {Requests: 369, Responses: 368, Errors: 1, ClientErrors: 30, RequestsPerSecond: 12.3, LatencyMs: s.Window.LatencyMs},
		"status": {Requests: 30, Responses: 30, RequestsPerSecond: 1.0, LatencyMs: lat(30, 0.2, 0.9)},
		"admin":  {Requests: 0}, // listed (it had requests before), none in the window
		"unix":   {},
		"8444":   {},
		"other":  {},
	}
	return s
}

func TestTableListenersGolden(t *testing.T) {
	got := Table(listenerStats())
	path := filepath.Join("testdata", "table-listeners.golden")
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -run TestTableListenersGolden -update)", err)
	}
	if got != string(want) {
		t.Errorf("mismatch:\n--- got\n%s\n--- want\n%s", got, want)
	}
}

// TestTableListeners: one row per listener of either period, proxy, admin, status first,
// ports by number, "-" for a period without the listener or without requests; no block at
// all without listeners; no line wider than 100 columns.
func TestTableListeners(t *testing.T) {
	got := Table(listenerStats())
	var rows []string
	in := false
	for _, line := range strings.Split(got, "\n") {
		if len(line) > 100 {
			t.Errorf("line of %d columns: %q", len(line), line)
		}
		switch {
		case strings.HasPrefix(line, "listeners "):
			in = true
		case in && line == "":
			in = false
		case in && !strings.HasPrefix(line, "    "):
			rows = append(rows, strings.Fields(line)[0])
		}
	}
	if want := []string{"proxy", "admin", "status", "unix", "8444", "9000", "(other)"}; !slices.Equal(rows, want) {
		t.Errorf("listener rows %v, want %v", rows, want)
	}
	for _, c := range []struct{ prefix, want string }{
		{"proxy ", "1234 0.3/s 5 2.1 20.1 | 369 12.3/s 1 2.1 20.1"},
		{"admin ", "41 0.0/s 0 1.1 12.5 | 0 0.0/s 0 - -"},
		{"9000 ", "1 0.0/s 0 0.3 0.3 | - - - - -"},
		{"unix ", "4 0.0/s 0 3720000 3720000 | 0 0.0/s 0 - -"},
	} {
		line := ""
		block := got[strings.Index(got, "\nlisteners "):]
		for _, l := range strings.Split(block, "\n") {
			if strings.HasPrefix(l, c.prefix) {
				line = strings.Join(strings.Fields(l)[1:], " ")
				break
			}
		}
		if line != c.want {
			t.Errorf("%s row %q, want %q", strings.TrimSpace(c.prefix), line, c.want)
		}
	}
	if s := Table(sampleStats()); strings.Contains(s, "listeners") {
		t.Errorf("a document without listeners has a listener block:\n%s", s)
	}
	for _, s := range []v1alpha1.Stats{sampleStats(), {Since: since, Updated: since}} {
		for _, line := range strings.Split(Table(s), "\n") {
			if len(line) > 100 {
				t.Errorf("line of %d columns: %q", len(line), line)
			}
		}
	}
}
