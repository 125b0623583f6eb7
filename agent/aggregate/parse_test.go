package aggregate

import (
	"encoding/json"
	"fmt"
	"math"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/kong-watcher/kong-watcher/agent/model"
	"github.com/kong-watcher/kong-watcher/api/v1alpha1"
)

// sampleDoc is a small real snapshot as JSON.
func sampleDoc(t testing.TB) string {
	clk := &fakeClock{t: t0}
	a := New(Options{Now: clk.Now})
	for i := 0; i < 40; i++ {
		q := req([]string{"GET", "POST"}[i%2], "api.example.com", fmt.Sprintf("/users/%d", i), []int{200, 503}[i%7/6], time.Duration(i*i)*time.Millisecond)
		q.HasUpstream, q.Upstream = i%3 == 0, time.Duration(i)*time.Millisecond
		a.Observe(q)
	}
	for i, l := range []string{"admin", "status", "status", model.ListenerUnix} {
		q := req("GET", "localhost", "/status", 200+i%2*101, time.Duration(i+1)*time.Second)
		q.Listener = l
		a.Observe(q)
	}
	clk.Add(30 * time.Second)
	a.Rotate()
	b, err := json.Marshal(a.Snapshot())
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// edit returns the sample document with f applied to its decoded form.
func edit(t *testing.T, f func(s *v1alpha1.Stats)) string {
	t.Helper()
	var s v1alpha1.Stats
	if err := json.Unmarshal([]byte(sampleDoc(t)), &s); err != nil {
		t.Fatal(err)
	}
	f(&s)
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestParseStatsRefusesForgeries(t *testing.T) {
	if _, err := ParseStats(sampleDoc(t)); err != nil {
		t.Fatalf("a real snapshot is refused: %v", err)
	}
	lat := func(s *v1alpha1.Stats) *v1alpha1.Histogram { return s.Total.Histograms.Latency }
	for name, doc := range map[string]string{
		"garbage":        "not json",
		"empty":          "",
		"null":           "null",
		"wrong kind":     edit(t, func(s *v1alpha1.Stats) { s.Kind = "Report" }),
		"too big":        strings.Repeat(" ", MaxStatsBytes+1) + sampleDoc(t),
		"negative count": strings.Replace(sampleDoc(t), `"requests":40`, `"requests":-40`, 1),
		"count overflow": strings.Replace(sampleDoc(t), `"requests":40`, `"requests":18446744073709551616`, 1),
		"huge count":     edit(t, func(s *v1alpha1.Stats) { s.Total.Requests = MaxCount + 1 }),
		"errors > reqs":  edit(t, func(s *v1alpha1.Stats) { s.Window.Errors = s.Window.Requests + 1 }),
		"bits 0":         edit(t, func(s *v1alpha1.Stats) { s.Total.Histograms.Bits = 0 }),
		"bits 6":         edit(t, func(s *v1alpha1.Stats) { s.Total.Histograms.Bits = 6 }),
		"span too long": edit(t, func(s *v1alpha1.Stats) {
			sp := lat(s).Spans
			sp[len(sp)-1] = append([]uint64{460}, make([]uint64, 5)...)
		}),
		"span past end":   edit(t, func(s *v1alpha1.Stats) { sp := lat(s).Spans; sp[len(sp)-1][0] = 464 }),
		"span huge start": edit(t, func(s *v1alpha1.Stats) { sp := lat(s).Spans; sp[len(sp)-1][0] = math.MaxUint64 - 1 }),
		"span overlaps":   edit(t, func(s *v1alpha1.Stats) { sp := lat(s).Spans; sp[1][0] = sp[0][0] }),
		"spans unsorted":  edit(t, func(s *v1alpha1.Stats) { sp := lat(s).Spans; sp[0], sp[1] = sp[1], sp[0] }),
		"span of nothing": edit(t, func(s *v1alpha1.Stats) { lat(s).Spans[1] = lat(s).Spans[1][:1] }),
		"span starts at 0": edit(t, func(s *v1alpha1.Stats) {
			sp := lat(s).Spans
			sp[1] = append([]uint64{sp[1][0] - 1, 0}, sp[1][1:]...)
		}),
		"zero count":      edit(t, func(s *v1alpha1.Stats) { sp := lat(s).Spans; sp[1][len(sp[1])-1] = 0 }),
		"counts mismatch": edit(t, func(s *v1alpha1.Stats) { lat(s).Spans[1][1]++ }),
		"counts overflow": edit(t, func(s *v1alpha1.Stats) {
			sp := lat(s).Spans
			sp[0][1], sp[1][1] = math.MaxUint64, 2+uint64(s.Total.LatencyMs.Count)
		}),
		"min outside":    edit(t, func(s *v1alpha1.Stats) { lat(s).MinUs = lat(s).MaxUs }),
		"max outside":    edit(t, func(s *v1alpha1.Stats) { lat(s).MaxUs = 1 << 62 }),
		"min > max":      edit(t, func(s *v1alpha1.Stats) { lat(s).MinUs, lat(s).MaxUs = lat(s).MaxUs, lat(s).MinUs }),
		"missing hist":   edit(t, func(s *v1alpha1.Stats) { s.Window.Histograms.Upstream = nil }),
		"too many rows":  edit(t, func(s *v1alpha1.Stats) { s.Total.Paths = make([]v1alpha1.Row, v1alpha1.MaxReportedRows+1) }),
		"long name":      edit(t, func(s *v1alpha1.Stats) { s.Total.Hosts[0].Name = strings.Repeat("h", v1alpha1.MaxReportedNames+1) }),
		"empty name":     edit(t, func(s *v1alpha1.Stats) { s.Total.Methods[""] = 1 }),
		"row > requests": edit(t, func(s *v1alpha1.Stats) { s.Window.Hosts[0].Requests = s.Window.Requests + 1 }),
		"huge float":     edit(t, func(s *v1alpha1.Stats) { s.Window.RequestsPerSecond = 1e300 }),
		"negative float": edit(t, func(s *v1alpha1.Stats) { s.Window.LatencyMs.P99 = -1 }),
		"lua count":      edit(t, func(s *v1alpha1.Stats) { s.Total.LuaPhasesMs = map[string]v1alpha1.Latency{"access": {Count: 1 << 40}} }),
		"latency count":  edit(t, func(s *v1alpha1.Stats) { s.Total.UpstreamLatencyMs.Count = s.Total.Requests + 1 }),
		"span as object": strings.Replace(sampleDoc(t), `"spans":[[`, `"spans":[{"a":1},[`, 1),
		"too many listeners": edit(t, func(s *v1alpha1.Stats) {
			for i := range v1alpha1.MaxListeners {
				s.Total.Listeners[fmt.Sprint(9000+i)] = v1alpha1.ListenerSummary{}
			}
		}),
		"listener name": edit(t, func(s *v1alpha1.Stats) { s.Window.Listeners[""] = v1alpha1.ListenerSummary{} }),
		"listener errors": edit(t, func(s *v1alpha1.Stats) {
			l := s.Total.Listeners["status"]
			l.Errors = l.Requests + 1
			s.Total.Listeners["status"] = l
		}),
		"listener histogram": edit(t, func(s *v1alpha1.Stats) {
			l := s.Window.Listeners["unix"]
			l.LatencyMs.Count++
			s.Window.Listeners["unix"] = l
		}),
		"listener count": edit(t, func(s *v1alpha1.Stats) {
			l := s.Total.Listeners["admin"]
			l.Requests = MaxCount + 1
			s.Total.Listeners["admin"] = l
		}),
	} {
		if _, err := ParseStats(doc); err == nil {
			t.Errorf("%s: accepted", name)
		} else {
			t.Logf("%s: %v", name, err)
		}
	}
}

// The largest annotation ParseStats reads costs a bounded amount of memory, whatever it holds.
func TestParseStatsMemory(t *testing.T) {
	spans := strings.Repeat("[1,1],", MaxStatsBytes/6-100)
	doc := `{"apiVersion":"kong-watcher.io/v1alpha1","kind":"Stats","total":{"histograms":{"bits":5,"latency":{"spans":[` + spans + `[2,1]]}}}}`
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	if _, err := ParseStats(doc[:min(len(doc), MaxStatsBytes)]); err == nil {
		t.Error("accepted")
	}
	runtime.ReadMemStats(&after)
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 8<<20 {
		t.Errorf("parsing %d bytes allocated %d MiB", len(doc), grew>>20)
	}
}

// Whatever an annotation holds, ParseStats refuses it with an error or returns a document that
// merges without a panic into a valid document.
func FuzzParseStats(f *testing.F) {
	doc := sampleDoc(f)
	f.Add(doc)
	f.Add(strings.Replace(doc, `"bits":5`, `"bits":2`, 1))
	f.Add(`{"apiVersion":"kong-watcher.io/v1alpha1","kind":"Stats","total":{"requests":1,"latencyMs":{"count":1},"histograms":{"bits":1,"latency":{"spans":[[0,1]]}}}}`)
	f.Add(`{"apiVersion":"kong-watcher.io/v1alpha1","kind":"Stats","total":{"requests":281474976710656,"latencyMs":{"count":281474976710656},"histograms":{"bits":5,"latency":{"spans":[[463,281474976710656]],"minUs":18446744073709551615,"maxUs":18446744073709551615}}}}`)
	f.Add(`{"apiVersion":"kong-watcher.io/v1alpha1","kind":"Stats","window":{"periodSeconds":1e15,"requests":3,"hosts":[{"name":"other","requests":3,"p99Ms":1e15}]}}`)
	f.Add(`{"apiVersion":"kong-watcher.io/v1alpha1","kind":"Stats","total":{"requests":9,"latencyMs":{"count":9},"histograms":{"bits":5,"latency":{"spans":[[18446744073709551615,9]]}}}}`)
	f.Fuzz(func(t *testing.T, data string) {
		s, err := ParseStats(data)
		if err != nil {
			return
		}
		one := Merge([]v1alpha1.Stats{s}, MergeOptions{MaxRows: 3})
		if err := Validate(&one); err != nil {
			t.Fatalf("the merge of one valid document is invalid: %v", err)
		}
		two := Merge([]v1alpha1.Stats{s, s, one}, MergeOptions{MaxRows: 3})
		if want := 3 * s.Total.Requests; two.Total.Requests != want { // validated: at most MaxCount
			t.Fatalf("requests %d, want %d", two.Total.Requests, want)
		}
		if len(two.Total.Hosts) > 4 || len(two.Window.Paths) > 4 {
			t.Fatalf("rows not bounded: %d, %d", len(two.Total.Hosts), len(two.Window.Paths))
		}
		if _, err := json.Marshal(two); err != nil {
			t.Fatalf("the merge does not encode: %v", err)
		}
		if two.Total.Histograms != nil && two.Total.LatencyMs.Count <= MaxCount {
			if err := validateHistograms(two.Total.Histograms, [3]*v1alpha1.Latency{&two.Total.LatencyMs, &two.Total.UpstreamLatencyMs, &two.Total.KongLatencyMs}); err != nil {
				t.Fatalf("merged histograms: %v", err)
			}
		}
	})
}
