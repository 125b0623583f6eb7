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
