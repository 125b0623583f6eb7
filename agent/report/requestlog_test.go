package report

import (
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/go-logr/logr/funcr"

	"github.com/kong-watcher/kong-watcher/agent/model"
)

func TestMaskQuery(t *testing.T) {
	for in, want := range map[string]string{
		"/a":                         "/a",
		"/a?":                        "/a?",
		"/a?token=abc":               "/a?token=***",
		"/a?token=abc&page=2":        "/a?token=***&page=***",
		"/a?secret":                  "/a?***",
		"/a?x=&y=1&&z":               "/a?x=***&y=***&&***",
		"/a?k=v=w":                   "/a?k=***",
		"/a?apikey=s3cr3t#frag":      "/a?apikey=***",
		"/a#frag?x=1":                "/a",
		"https://h/p?access_token=x": "https://h/p?access_token=***",
	} {
		if got := MaskQuery(in); got != want {
			t.Errorf("MaskQuery(%q) = %q, want %q", in, got, want)
		}
	}
}

func FuzzMaskQuery(f *testing.F) {
	for _, s := range []string{"/a?token=abc&page=2", "/a?secret", "?", "/a?x=&&=y#z", "/\xff?\xfe=\xfd"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		out := MaskQuery(in)
		q := strings.IndexByte(out, '?')
		if q < 0 {
			if strings.Contains(in, "?") && !strings.Contains(in[:strings.IndexByte(in, '?')], "#") {
				t.Fatalf("MaskQuery(%q) = %q lost the query marker", in, out)
			}
			return
		}
		if strings.Contains(out, "#") {
			t.Fatalf("MaskQuery(%q) = %q keeps a fragment", in, out)
		}
		// Every item of the masked query ends in the mask (or is empty): no value survives.
		for _, item := range strings.Split(out[q+1:], "&") {
			if item != "" && !strings.HasSuffix(item, Masked) {
				t.Fatalf("MaskQuery(%q) = %q leaks item %q", in, out, item)
			}
		}
		if again := MaskQuery(out); again != out {
			t.Fatalf("not idempotent: %q -> %q -> %q", in, out, again)
		}
	})
}

// captured collects log lines.
type captured struct {
	mu    sync.Mutex
	lines []string
}

func (c *captured) logger(verbosity int) logr.Logger {
	return funcr.New(func(prefix, args string) {
		c.mu.Lock()
		c.lines = append(c.lines, args)
		c.mu.Unlock()
	}, funcr.Options{Verbosity: verbosity})
}

func TestRequestLogger(t *testing.T) {
	r := &model.Request{Method: "GET", Host: "api.example.com", URI: "/users/42?token=abc", Status: 200, Latency: 3500 * time.Microsecond,
		HasUpstream: true, Upstream: 2 * time.Millisecond, BytesSent: 99, ClientAddr: "10.0.0.7", Proto: "HTTP/1.1"}

	var c captured
	l := NewRequestLogger(c.logger(1), RequestLogOptions{})
	l.Observe(r)
	if len(c.lines) != 1 {
		t.Fatalf("lines = %q", c.lines)
	}
	want := `"level"=1 "msg"="request" "method"="GET" "host"="api.example.com" "path"="/users/{id}" "uri"="/users/42?token=***" "status"=200 "latencyMs"=3.5 "upstreamMs"=2 "bytes"=99 "client"="10.0.0.7" "proto"="HTTP/1.1"`
	if c.lines[0] != want {
		t.Errorf("line = %s\nwant   %s", c.lines[0], want)
	}
	if strings.Contains(c.lines[0], "abc") {
		t.Error("query value leaked")
	}

	// Unmasked when asked.
	c.lines = nil
	NewRequestLogger(c.logger(1), RequestLogOptions{Mask: &Mask{}}).Observe(r)
	if !strings.Contains(c.lines[0], "token=abc") {
		t.Errorf("unmasked line = %s", c.lines[0])
	}

	// Off at info level, and cheap: no allocation.
	var off captured
	quiet := NewRequestLogger(off.logger(0), RequestLogOptions{})
	if quiet.Enabled() {
		t.Error("enabled at info level")
	}
	if n := testing.AllocsPerRun(100, func() { quiet.Observe(r) }); n != 0 || len(off.lines) != 0 {
		t.Errorf("disabled logger: %v allocs, %d lines", n, len(off.lines))
	}
}

func TestRequestLoggerRateLimit(t *testing.T) {
	now := time.Unix(1000, 0)
	var c captured
	l := NewRequestLogger(c.logger(1), RequestLogOptions{MaxPerSecond: 3, Now: func() time.Time { return now }})
	r := &model.Request{Method: "GET", URI: "/"}
	for i := 0; i < 10; i++ {
		l.Observe(r)
	}
	now = now.Add(time.Second)
	l.Observe(r)
	if len(c.lines) != 5 {
		t.Fatalf("%d lines: %q", len(c.lines), c.lines)
	}
	if want := `"msg"="request lines suppressed" "count"=7 "maxPerSecond"=3`; !strings.Contains(c.lines[3], want) {
		t.Errorf("suppression line = %s", c.lines[3])
	}
}

func BenchmarkRequestLoggerDisabled(b *testing.B) {
	l := NewRequestLogger(logr.Discard(), RequestLogOptions{})
	r := &model.Request{Method: "GET", URI: "/users/42?token=abc"}
	b.ReportAllocs()
	for b.Loop() {
		l.Observe(r)
	}
}
