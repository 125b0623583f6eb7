package main

import "testing"

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
