package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestWriteAgentSection(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "docs", "benchmarks.md")

	// Missing file: created with a title and the section.
	if err := writeAgentSection(p, "## Agent\n\nv1\n"); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(p)
	if !strings.HasPrefix(string(got), "# Benchmarks\n") || !strings.HasSuffix(string(got), "## Agent\n\nv1\n") {
		t.Fatalf("created file:\n%s", got)
	}

	// Another section after ours is kept; ours is replaced in place.
	os.WriteFile(p, []byte("# B\n\n## Agent\n\nold\n```\n## not a heading\n```\n\n## Webhook\n\nw\n"), 0o644)
	if err := writeAgentSection(p, "## Agent\n\nnew\n"); err != nil {
		t.Fatal(err)
	}
	got, _ = os.ReadFile(p)
	if want := "# B\n\n## Agent\n\nnew\n\n## Webhook\n\nw\n"; string(got) != want {
		t.Fatalf("replace:\n%q\nwant\n%q", got, want)
	}

	// Only the webhook section: ours goes after it.
	os.WriteFile(p, []byte("# B\n\n## Webhook\n\nw\n"), 0o644)
	if err := writeAgentSection(p, "## Agent\n\nx\n"); err != nil {
		t.Fatal(err)
	}
	got, _ = os.ReadFile(p)
	if want := "# B\n\n## Webhook\n\nw\n\n## Agent\n\nx\n"; string(got) != want {
		t.Fatalf("append:\n%q\nwant\n%q", got, want)
	}
}

func TestParseWrk(t *testing.T) {
	out := `Running 5s test @ http://127.0.0.1:1/fast
  1 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.20ms  300.00us   5.00ms   90.00%
    Req/Sec    40.00k     1.00k   42.00k    80.00%
  200000 requests in 5.00s, 30.00MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:  39999.50
Transfer/sec:      6.00MB
`
	r, err := parseWrk(out)
	if err != nil {
		t.Fatal(err)
	}
	if r.RPS != 39999.5 || r.Requests != 200000 || r.Errors != 7 {
		t.Fatalf("%+v", r)
	}
	if _, err := parseWrk("nonsense"); err == nil {
		t.Fatal("no error for output without a throughput line")
	}
}

func TestParseH2load(t *testing.T) {
	out := `starting benchmark...
finished in 5.00s, 6307.40 req/s, 2.10MB/s
requests: 31537 total, 31600 started, 31537 done, 31530 succeeded, 7 failed, 0 errored, 0 timeout
status codes: 31530 2xx, 0 3xx, 2 4xx, 1 5xx
`
	r, err := parseH2load(out)
	if err != nil {
		t.Fatal(err)
	}
	if r.RPS != 6307.4 || r.Requests != 31530 || r.Errors != 3 {
		t.Fatalf("%+v", r)
	}
}

func TestMedian(t *testing.T) {
	if m := median([]float64{3, 1, 2}); m != 2 {
		t.Fatal(m)
	}
	if m := median([]float64{4, 1, 3, 2}); m != 2.5 {
		t.Fatal(m)
	}
}
