package kube

import (
	"errors"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/kong-watcher/kong-watcher/agent/discovery"
)

func TestNotifierEvents(t *testing.T) {
	t.Parallel()
	m := newManager(t)
	r, _ := newReporter(t, m, &statsBox{s: stats(100, 1, 5)}, nil)
	gw := discovery.Gateway{Master: discovery.Process{PID: 7, Title: "nginx: master process"}, Workers: []discovery.Process{{PID: 8}}}
	r.ProbesAttached(gw, "nginx-request")
	r.ProbeAttachFailed(gw, errors.New("no symbol"))
	r.KongDetected(gw) // reads the version in its own goroutine
	waitFor(t, "KongDetected queued", func() bool { r.mu.Lock(); defer r.mu.Unlock(); return len(r.pending) == 3 })
	start(t, r)
	waitFor(t, "3 Events", func() bool { return len(m.delivered()) >= 3 })
	ev := m.delivered()
	if len(ev) != 3 {
		t.Fatalf("got %q", ev)
	}
	slices.Sort(ev)
	if !strings.HasPrefix(ev[1], "Normal ProbesAttached ") || !strings.Contains(ev[1], "nginx-request") ||
		!strings.HasPrefix(ev[2], "Warning ProbeAttachFailed ") || !strings.Contains(ev[2], "no symbol") ||
		!strings.HasPrefix(ev[0], "Normal KongDetected ") || !strings.Contains(ev[0], "master PID 7 with 1 workers (nginx: master process), version unknown") {
		t.Fatalf("got %q", ev)
	}
}

func TestNginxVersion(t *testing.T) {
	const exe = "/usr/sbin/nginx"
	if _, err := os.Stat(exe); err != nil {
		t.Skip("no nginx binary here")
	}
	v := NginxVersion(exe)
	if !strings.HasPrefix(v, "nginx/1.") {
		t.Fatalf("NginxVersion(%s) = %q", exe, v)
	}
	t.Logf("%s: %s", exe, v)
	if NginxVersion("/nonexistent") != "" {
		t.Fatal("a missing file must give no version")
	}
}
