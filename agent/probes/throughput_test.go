// What the probes cost and what they do under pressure: throughput, drops.

package probes

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/go-logr/logr"
	"github.com/go-logr/logr/testr"
	"github.com/kong-watcher/kong-watcher/agent/model"
	"golang.org/x/sys/unix"
)

// TestThroughput measures what the probes cost nginx: wrk against `return 200`, alternating
// no probes / probes / probes + Lua phase probes. Set KW_BENCH=1 to run it.
func TestThroughput(t *testing.T) {
	if os.Getenv("KW_BENCH") != "1" {
		t.Skip("set KW_BENCH=1")
	}
	requireIntegration(t, "wrk")
	n := startNginx(t)
	url := fmt.Sprintf("http://127.0.0.1:%d/ok", n.Port)
	workers := n.Workers()
	// nginx workers' CPU time (user+sys, clock ticks): the uprobe traps are charged to them,
	// and CPU per request is far less sensitive than req/s to the other tenants of this VM.
	cpu := func() (ticks uint64) {
		for _, w := range workers {
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", w.PID))
			if err != nil {
				t.Fatal(err)
			}
			s := string(b)
			fs := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
			u, _ := strconv.ParseUint(fs[11], 10, 64)
			k, _ := strconv.ParseUint(fs[12], 10, 64)
			ticks += u + k
		}
		return ticks
	}
	var lastCPU []float64
	wrk := func() float64 {
		c0 := cpu()
		w := runWrk(t, 20, "5s", url)
		lastCPU = append(lastCPU, float64(cpu()-c0)*1e4/float64(w.requests)) // ticks are 10 ms: us per request
		return w.rps
	}
	run := func(opts *Options) (float64, Status) {
		if opts == nil {
			return wrk(), Status{}
		}
		if opts.RingBufferBytes == -1 {
			// An empty BPF program on the same function: the bare cost of the uprobe.
			prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.Kprobe, AttachType: ebpf.AttachTraceUprobeMulti,
				License: "GPL", Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 0), asm.Return()}})
			if err != nil {
				t.Fatal(err)
			}
			defer prog.Close()
			ex, err := link.OpenExecutable(n.Gateway(t).Exe)
			if err != nil {
				t.Fatal(err)
			}
			l, err := ex.UprobeMulti([]string{"ngx_http_free_request"}, prog, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			return wrk(), Status{}
		}
		opts.Log = logr.Discard()
		p, err := New(*opts)
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		if err := p.Track(n.Gateway(t)); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		var seen int
		go func() {
			done <- p.Run(ctx, sinkFunc(func() { seen++ }))
		}()
		// learn the layout before measuring
		client := &http.Client{}
		for i := 0; i < 50 && p.Status().Mode != "ready"; i++ {
			get(t, client, url)
			time.Sleep(10 * time.Millisecond)
		}
		v := wrk()
		time.Sleep(300 * time.Millisecond)
		cancel()
		<-done
		st := p.Status()
		// Time spent inside the BPF programs (excludes the uprobe trap itself, ~0.5-1.3 us).
		for name, prog := range map[string]*ebpf.Program{"free_request": p.objs.NginxreqFreeRequest,
			"free_request_ret": p.objs.NginxreqFreeRequestRet, "lua_enter": p.objs.NginxreqLuaEnter,
			"lua_exit": p.objs.NginxreqLuaExit} {
			if ps, err := prog.Stats(); err == nil && ps.RunCount > 0 {
				t.Logf("  %-16s %8d runs, %5.0f ns/run in BPF", name, ps.RunCount, float64(ps.Runtime.Nanoseconds())/float64(ps.RunCount))
			}
		}
		return v, st
	}
	if c, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME)); err == nil {
		defer c.Close()
	}
	names := []string{"none", "empty-uprobe", "probes", "probes+lua"}
	res, cpuRes := map[string][]float64{}, map[string][]float64{}
	for round := 0; round < 3; round++ {
		for _, name := range names {
			var v float64
			var st Status
			switch name {
			case "none":
				v, _ = run(nil)
			case "empty-uprobe":
				v, st = run(&Options{RingBufferBytes: -1})
			case "probes":
				v, st = run(&Options{})
			case "probes+lua":
				v, st = run(&Options{LuaPhases: true})
			}
			res[name] = append(res[name], v)
			cpuRes[name] = append(cpuRes[name], lastCPU[len(lastCPU)-1])
			t.Logf("round %d %-10s %8.0f req/s  %5.1f us worker CPU/request  decoded %d dropped %d errors %d",
				round, name, v, lastCPU[len(lastCPU)-1], st.Decoded, st.Dropped, st.DecodeErrors)
		}
	}
	med := func(xs []float64) float64 {
		s := append([]float64(nil), xs...)
		sort.Float64s(s)
		return s[len(s)/2]
	}
	base := med(res["none"])
	var sum []string
	for _, name := range names {
		sum = append(sum, fmt.Sprintf("%s %.0f req/s (%.2f), %.1f us CPU/req", name, med(res[name]), med(res[name])/base, med(cpuRes[name])))
	}
	t.Logf("median req/s (ratio to none): %s", strings.Join(sum, ", "))
}

// wrkRun is what wrk reported: the requests it counted, over how long, and req/s.
type wrkRun struct {
	requests  uint64
	secs, rps float64
}

var (
	wrkCount = regexp.MustCompile(`([0-9]+) requests in ([0-9.]+)s`)
	wrkRate  = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)
)

// runWrk runs `wrk -t1 -c<conns> -d<dur> url` and parses its report.
func runWrk(t *testing.T, conns int, dur, url string) wrkRun {
	t.Helper()
	out, err := exec.Command("wrk", "-t1", fmt.Sprintf("-c%d", conns), "-d"+dur, url).CombinedOutput()
	if err != nil {
		t.Fatalf("wrk: %v\n%s", err, out)
	}
	mc, mr := wrkCount.FindSubmatch(out), wrkRate.FindSubmatch(out)
	if mc == nil || mr == nil {
		t.Fatalf("wrk output: %s", out)
	}
	var w wrkRun
	w.requests, _ = strconv.ParseUint(string(mc[1]), 10, 64)
	w.secs, _ = strconv.ParseFloat(string(mc[2]), 64)
	w.rps, _ = strconv.ParseFloat(string(mr[1]), 64)
	return w
}

type sinkFunc func()

func (f sinkFunc) Observe(_ *model.Request) { f() }

// TestDropsCounted: with a one-page ring buffer and nobody reading it, the kernel cannot
// queue the events, and every lost one is counted.
func TestDropsCounted(t *testing.T) {
	requireOuter(t)
	n := startNginx(t)
	p, err := New(Options{RingBufferBytes: 4096, Log: testr.New(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if err := p.Track(n.Gateway(t)); err != nil {
		t.Fatal(err)
	}
	client := &http.Client{}
	const reqs = 30
	for i := 0; i < reqs; i++ {
		get(t, client, fmt.Sprintf("http://127.0.0.1:%d/ok?i=%d", n.Port, i))
	}
	st := p.Status()
	// A calibration event is ~2.8 KB: one fits in a page, the rest are dropped and counted.
	if st.Dropped < reqs-2 || st.Dropped > reqs {
		t.Fatalf("dropped %d of %d (status %+v)", st.Dropped, reqs, st)
	}
	t.Logf("dropped %d of %d", st.Dropped, reqs)
}

// TestBurstWakesReader: the reader drains on a deadline and the programs wake it early only
// once a quarter of the ring is queued (wakeup_bytes). With the deadline 2 s away, far more
// than the ring holds arrives under wrk before it, so nothing is lost only if the wake-ups
// come, and in time: the other three quarters of the ring (~60 ms of this traffic) are the
// reader's time to start.
func TestBurstWakesReader(t *testing.T) {
	requireOuter(t, "wrk")
	n := startNginx(t)
	const ring = 1 << 20
	p, err := New(Options{RingBufferBytes: ring, Log: testr.New(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	p.poll = 2 * time.Second
	if err := p.Track(n.Gateway(t)); err != nil {
		t.Fatal(err)
	}
	var seen atomic.Uint64
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx, sinkFunc(func() { seen.Add(1) })) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	url := fmt.Sprintf("http://127.0.0.1:%d/ok", n.Port)
	client := &http.Client{}
	warmUntilReady(t, p, func() { get(t, client, url) })
	// The warm-up's records, once they have all come (at the next deadline).
	time.Sleep(p.poll + 500*time.Millisecond)
	base := seen.Load()

	w := runWrk(t, 10, "2s", url)
	sent, secs := w.requests, w.secs
	// The test only says something if a deadline's worth of records overflows the ring.
	perDeadline := float64(sent) / secs * p.poll.Seconds() * 150 // bytes, 150 or more a record
	if perDeadline < 2*ring {
		t.Skipf("too slow to fill the ring between two deadlines: %.0f req/s", float64(sent)/secs)
	}
	deadline := time.Now().Add(p.poll + 3*time.Second)
	for seen.Load()-base < sent && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	st := p.Status()
	if st.Dropped != 0 || seen.Load()-base < sent {
		t.Fatalf("wrk sent %d requests (%.0f/s), %d reached the sink, %d dropped (ring %d bytes)", sent,
			float64(sent)/secs, seen.Load()-base, st.Dropped, ring)
	}
	t.Logf("%d requests (%.0f/s) through a %d-byte ring, none dropped", sent, float64(sent)/secs, ring)
}
