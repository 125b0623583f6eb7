package v1alpha1

import (
	"bytes"
	"encoding/json"
	"slices"
	"testing"
	"time"
)

// keys marshals v and returns its top-level JSON keys, in order.
func keys(t *testing.T, v any) []string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	if _, err := dec.Token(); err != nil { // {
		t.Fatal(err)
	}
	var out []string
	for dec.More() {
		k, err := dec.Token()
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, k.(string))
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// Summary shares its listener fields with ListenerSummary by embedding it; the documents
// users read keep the field names they had, no more and no fewer, and a listener's entry
// none of the rows.
func TestSummaryJSONFields(t *testing.T) {
	now := time.Now()
	l := ListenerSummary{Requests: 1, Responses: 1, Errors: 1, ClientErrors: 1, RequestsPerSecond: 1,
		Methods: map[string]uint64{"GET": 1}, StatusCodes: map[string]uint64{"200": 1},
		StatusClasses: map[string]uint64{"2xx": 1}, BytesSent: 1, LastRequestTime: &now, Histograms: &Histograms{Bits: 5}}
	s := Summary{PeriodSeconds: 1, ListenerSummary: l, Hosts: []Row{}, Paths: []Row{},
		LuaPhasesMs: map[string]Latency{"access": {}}, DroppedEvents: 1, Listeners: map[string]ListenerSummary{"proxy": l}}

	listener := []string{"requests", "responses", "errors", "clientErrors", "requestsPerSecond", "latencyMs",
		"upstreamLatencyMs", "kongLatencyMs", "methods", "statusCodes", "statusClasses", "bytesSent",
		"lastRequestTime", "histograms"}
	summary := append([]string{"periodSeconds"}, listener...)
	summary = append(summary, "hosts", "paths", "luaPhasesMs", "droppedEvents", "listeners")

	if got := keys(t, l); !slices.Equal(got, listener) {
		t.Errorf("ListenerSummary's JSON keys\n got %q\nwant %q", got, listener)
	}
	got := keys(t, s)
	if !slices.Equal(sorted(got), sorted(summary)) {
		t.Errorf("Summary's JSON keys\n got %q\nwant %q", got, summary)
	}

	// A document decodes into the embedded fields as it did into flat ones.
	var back Summary
	if err := json.Unmarshal([]byte(`{"periodSeconds":30,"requests":7,"bytesSent":9,"droppedEvents":2,`+
		`"listeners":{"status":{"requests":3}}}`), &back); err != nil {
		t.Fatal(err)
	}
	if back.PeriodSeconds != 30 || back.Requests != 7 || back.BytesSent != 9 || back.DroppedEvents != 2 ||
		back.Listeners["status"].Requests != 3 {
		t.Errorf("decoded %+v", back)
	}
}

func sorted(s []string) []string { s = slices.Clone(s); slices.Sort(s); return s }
