package main

import (
	"math"
	"strings"
	"testing"
)

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

func TestOrder(t *testing.T) {
	sides := []side{sideNone, sideFloor, sideAgent}
	pos := map[side]map[int]int{}
	var got []string
	for r := 0; r < 6; r++ {
		o := order(sides, r)
		var names []string
		for i, s := range o {
			if pos[s] == nil {
				pos[s] = map[int]int{}
			}
			pos[s][i]++
			names = append(names, s.String())
		}
		got = append(got, strings.Join(names, ","))
	}
	want := []string{"none,floor,agent", "floor,agent,none", "agent,none,floor", "agent,floor,none", "none,agent,floor", "floor,none,agent"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("orders %v, want %v", got, want)
	}
	// Over 3 rounds (and 6) every side is in every position equally often.
	for s, ps := range pos {
		for i := 0; i < 3; i++ {
			if ps[i] != 2 {
				t.Errorf("%s at position %d %d times in 6 rounds", s, i, ps[i])
			}
		}
	}
	if o := order([]side{sideNone, sideAgent}, 1); o[0] != sideAgent {
		t.Errorf("two sides, round 2: %v", o)
	}
}

func TestSpread(t *testing.T) {
	s := spreadOf([]float64{0.9, math.NaN(), 0.8, 1.0})
	if s.med != 0.9 || s.min != 0.8 || s.max != 1.0 || s.n != 3 || s.String() != "0.900 (0.800-1.000)" {
		t.Fatalf("%+v %s", s, s)
	}
	if e := spreadOf(nil); e.String() != "NA" {
		t.Fatal(e)
	}
}

func TestKongConfig(t *testing.T) {
	conf, err := kongConfig([]kongService{{Name: "backend", Host: "127.0.0.1", Port: 5, Protocol: "http"}, {Name: "slow", Host: "127.0.0.1", Port: 6, Protocol: "http"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{`"url":"http://127.0.0.1:5"`, `"name":"key-auth"`, `"name":"rate-limiting"`, `"name":"request-transformer"`, `"service":"backend"`, `"key":"` + kongBenchKey + `"`} {
		if !strings.Contains(string(conf), w) {
			t.Errorf("config lacks %s: %s", w, conf)
		}
	}
	if _, err := kongConfig([]kongService{{Name: "slow"}}); err == nil {
		t.Error("no error without a backend service")
	}
}

func TestPairRatios(t *testing.T) {
	// Gateway A is 10% faster than B whatever runs on it; the agent costs 2% against the floor,
	// the floor 1% against none; round 2 runs during a burst that halves both gateways.
	run := func(round int, a, b side, burst float64) pairResult {
		cost := map[side]float64{sideNone: 1, sideFloor: 0.99, sideAgent: 0.99 * 0.98}
		ra, rb := 11000*cost[a]*burst, 10000*cost[b]*burst
		return pairResult{round: round, cfg: pairCfg{a, b}, a: loadResult{RPS: ra, Requests: int(ra * 4)},
			b: loadResult{RPS: rb, Requests: int(rb * 4)}, wall: 4, ncpu: 2}
	}
	var rs []pairResult
	for r, burst := range []float64{1, 0.5, 1} {
		for _, pc := range pairCfgs {
			rs = append(rs, run(r+1, pc.a, pc.b, burst))
		}
	}
	rs = append(rs, run(4, sideAgent, sideFloor, 1)) // a round without its swapped run counts for nothing
	for _, c := range []struct {
		x, y side
		want float64
	}{{sideAgent, sideFloor, 0.98}, {sideFloor, sideNone, 0.99}} {
		got := pairRatios(rs, c.x, c.y)
		if len(got) != 3 {
			t.Fatalf("%v/%v: %d rounds, want 3", c.x, c.y, len(got))
		}
		for _, v := range got {
			if math.Abs(v-c.want) > 1e-9 {
				t.Errorf("%v/%v = %v, want %v", c.x, c.y, v, c.want)
			}
		}
	}

	// The agent process: 0.1 s of CPU over 4 s on 2 CPUs while its gateway served 40,000 of
	// 80,000 requests: 2.5 us per request of its own against 100 us of the machine's.
	pr := pairResult{cfg: pairCfg{sideFloor, sideAgent}, a: loadResult{Requests: 40000}, b: loadResult{Requests: 40000},
		agentCPU: 0.1, wall: 4, ncpu: 2}
	if v, ok := agentShare(pr); !ok || math.Abs(v-0.025) > 1e-9 {
		t.Errorf("agentShare = %v, %v; want 0.025", v, ok)
	}
	if _, ok := agentShare(pairResult{cfg: pairCfg{sideFloor, sideNone}}); ok {
		t.Error("agentShare without an agent side")
	}

	for i := range rs {
		if rs[i].cfg.a == sideAgent || rs[i].cfg.b == sideAgent {
			rs[i].agentCPU = 0.001
		}
	}
	s := summarisePairs(rs, 0.02)
	if !s.ok || s.rounds != 3 {
		t.Fatalf("summary: ok %v rounds %d", s.ok, s.rounds)
	}
	if s.workers.med != s.workers.min || math.Abs(s.workers.med-0.98) > 1e-9 {
		t.Errorf("workers = %v, want 0.98 in every round", s.workers)
	}
	if !(s.agentFloor.med < 0.98) || s.share.med <= 0 {
		t.Errorf("the agent process's share is not subtracted: %v - %v = %v", s.workers, s.share, s.agentFloor)
	}
	if want := 0.99 * (1 - s.agentFloor.med); math.Abs(s.gap-want) > 1e-9 || s.met != (s.gap <= 0.02) {
		t.Errorf("gap %v met %v, want %v", s.gap, s.met, want)
	}
}
