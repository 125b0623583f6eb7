package wire

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/go-logr/logr/testr"
	"github.com/kong-watcher/kong-watcher/agent/model"
	"golang.org/x/sys/unix"
)

// TestWrkOverhead measures what the wire probes cost nginx (`return 200`), alternating runs
// without and with the tracer. Opt-in (KW_WIRE_BENCH=1): it takes ~35 s.
func TestWrkOverhead(t *testing.T) {
	if os.Getenv("KW_WIRE_BENCH") != "1" {
		t.Skip("set KW_WIRE_BENCH=1")
	}
	havePrereqs(t, "nginx", "wrk")
	ng := startNginx(t)
	tr, err := New(Options{Log: testr.New(t), TLS: true})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	var seen int64
	var mu sync.Mutex
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- tr.Run(ctx, model.SinkFunc(func(*model.Request) { mu.Lock(); seen++; mu.Unlock() }))
	}()
	defer func() { cancel(); <-done }()
	wrk := func(url string) float64 {
		out, err := exec.Command("wrk", "-t1", "-c20", "-d5s", url).CombinedOutput()
		if err != nil {
			t.Fatalf("wrk: %v %s", err, out)
		}
		sc := bufio.NewScanner(bytes.NewReader(out))
		for sc.Scan() {
			if f := strings.Fields(sc.Text()); len(f) == 2 && f[0] == "Requests/sec:" {
				v, _ := strconv.ParseFloat(f[1], 64)
				return v
			}
		}
		t.Fatalf("no Requests/sec in %s", out)
		return 0
	}
	// Per-program run time, scoped to this test (no sysctl change).
	if st, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME)); err == nil {
		defer st.Close()
	}
	progStats := func() string {
		var out []string
		for name, p := range map[string]*ebpf.Program{"enter": tr.objs.WireEnter, "exit": tr.objs.WireExit, "retsite": tr.objs.WireRetSite} {
			if s, err := p.Stats(); err == nil && s.RunCount > 0 {
				out = append(out, fmt.Sprintf("%s %d runs %.0fns/run", name, s.RunCount, float64(s.Runtime.Nanoseconds())/float64(s.RunCount)))
			}
		}
		sort.Strings(out)
		return strings.Join(out, ", ")
	}
	for _, tc := range []struct{ name, url string }{
		{"plain", fmt.Sprintf("http://127.0.0.1:%d/", ng.plain)},
		{"tls", fmt.Sprintf("https://127.0.0.1:%d/", ng.tlsPort)},
	} {
		var ratios []float64
		for round := 0; round < 3; round++ {
			without := wrk(tc.url)
			if err := tr.Track(ng.gateway(t)); err != nil {
				t.Fatal(err)
			}
			mu.Lock()
			seen = 0
			mu.Unlock()
			before := tr.Status()
			with := wrk(tc.url)
			time.Sleep(300 * time.Millisecond)
			tr.Untrack(ng.gateway(t).ID())
			mu.Lock()
			n := seen
			mu.Unlock()
			st := tr.Status()
			ratios = append(ratios, with/without)
			t.Logf("%s round %d: without %.0f req/s, with %.0f req/s, ratio %.2f; requests seen %d (wrk ~%.0f), dropped %d, parse errors %d",
				tc.name, round+1, without, with, with/without, n, with*5, st.Dropped-before.Dropped, st.ParseErrors-before.ParseErrors)
		}
		t.Logf("%s: BPF programs (cumulative, all processes that hit the probes): %s", tc.name, progStats())
		sort.Float64s(ratios)
		t.Logf("%s: median throughput ratio with/without: %.2f (load average %s)", tc.name, ratios[1], loadavg())
	}
}

func loadavg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	return strings.Join(strings.Fields(string(b))[:3], " ")
}
