package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// loadResult is one closed-loop run of wrk or h2load.
type loadResult struct {
	RPS      float64 // requests per second as the tool reports it
	Requests int     // requests completed
	Errors   int     // socket errors, non-2xx/3xx responses, failed streams
	Raw      string  // the tool's output (for diagnostics)
}

// loadTool runs a closed-loop load generator as a child process, optionally pinned with
// taskset. The child gets SIGKILL if the harness dies.
type loadTool struct {
	pinCPUs string // taskset -c list; "" = not pinned
}

func (t loadTool) command(ctx context.Context, name string, args ...string) *exec.Cmd {
	var cmd *exec.Cmd
	if t.pinCPUs != "" {
		cmd = exec.CommandContext(ctx, "taskset", append([]string{"-c", t.pinCPUs, name}, args...)...)
	} else {
		cmd = exec.CommandContext(ctx, name, args...)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

var (
	wrkRPS       = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)
	wrkTotal     = regexp.MustCompile(`(\d+) requests in`)
	wrkSockErr   = regexp.MustCompile(`Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)`)
	wrkNon2xx    = regexp.MustCompile(`Non-2xx or 3xx responses: (\d+)`)
	h2Finished   = regexp.MustCompile(`finished in [0-9.]+m?s, ([0-9.]+) req/s`)
	h2Requests   = regexp.MustCompile(`requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout`)
	h2StatusBad  = regexp.MustCompile(`status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx`)
	errNoRPSLine = fmt.Errorf("no throughput line in the output")
)

// wrk runs `wrk -t<threads> -c<conns> -d<dur>` against url, with the given request headers
// ("Name: value").
func (t loadTool) wrk(ctx context.Context, url string, threads, conns int, dur time.Duration, headers ...string) (loadResult, error) {
	secs := int(dur.Round(time.Second) / time.Second)
	if secs < 1 {
		secs = 1
	}
	ctx, cancel := context.WithTimeout(ctx, dur+30*time.Second)
	defer cancel()
	args := []string{"-t" + strconv.Itoa(threads), "-c" + strconv.Itoa(conns), "-d" + strconv.Itoa(secs) + "s", "--timeout", "5s"}
	for _, h := range headers {
		args = append(args, "-H", h)
	}
	out, err := t.command(ctx, "wrk", append(args, url)...).CombinedOutput()
	if err != nil {
		return loadResult{Raw: string(out)}, fmt.Errorf("wrk: %w: %s", err, out)
	}
	return parseWrk(string(out))
}

// parseWrk reads wrk's summary.
func parseWrk(out string) (loadResult, error) {
	r := loadResult{Raw: out}
	m := wrkRPS.FindStringSubmatch(r.Raw)
	if m == nil {
		return r, fmt.Errorf("wrk: %w: %s", errNoRPSLine, out)
	}
	r.RPS, _ = strconv.ParseFloat(m[1], 64)
	if m := wrkTotal.FindStringSubmatch(r.Raw); m != nil {
		r.Requests, _ = strconv.Atoi(m[1])
	}
	if m := wrkSockErr.FindStringSubmatch(r.Raw); m != nil {
		for _, s := range m[1:] {
			n, _ := strconv.Atoi(s)
			r.Errors += n
		}
	}
	if m := wrkNon2xx.FindStringSubmatch(r.Raw); m != nil {
		n, _ := strconv.Atoi(m[1])
		r.Errors += n
	}
	return r, nil
}

// h2loadPerConn is how many requests one h2load connection sends: fewer than the
// fixture's keepalive_requests (1000), after which nginx ends an HTTP/2 connection with a
// GOAWAY that h2load does not recover from (it opens no new connection, and a run by time
// then idles once every connection has had its 1000 requests).
const h2loadPerConn = 900

// h2load runs `h2load -c<conns> -m<streams> -t<threads> -n <conns x h2loadPerConn>` against
// an https url (HTTP/2 negotiated with ALPN; h2load does not verify the certificate) in
// back-to-back batches for at least dur, and returns the batches' total requests over their
// total time (h2load's own "finished in").
func (t loadTool) h2load(ctx context.Context, url string, threads, conns, streams int, dur time.Duration) (loadResult, error) {
	var total loadResult
	var secs float64
	n := conns * h2loadPerConn
	if dur < 3*time.Second {
		n = conns * 200 // a warm-up
	}
	for secs < dur.Seconds() {
		r, took, err := t.h2loadBatch(ctx, url, threads, conns, streams, n)
		total.Raw += r.Raw
		if err != nil {
			return total, err
		}
		total.Requests += r.Requests
		total.Errors += r.Errors
		secs += took
		if took <= 0 {
			break
		}
	}
	if secs > 0 {
		total.RPS = float64(total.Requests) / secs
	}
	return total, nil
}

var h2FinishedIn = regexp.MustCompile(`finished in ([0-9.]+)(m?s),`)

func (t loadTool) h2loadBatch(ctx context.Context, url string, threads, conns, streams, n int) (loadResult, float64, error) {
	ctx, cancel := context.WithTimeout(ctx, 120*time.Second)
	defer cancel()
	out, err := t.command(ctx, "h2load", "-t", strconv.Itoa(threads), "-c", strconv.Itoa(conns),
		"-m", strconv.Itoa(streams), "-n", strconv.Itoa(n), url).CombinedOutput()
	if err != nil {
		return loadResult{Raw: string(out)}, 0, fmt.Errorf("h2load: %w: %s", err, out)
	}
	r, err := parseH2load(string(out))
	if err != nil {
		return r, 0, err
	}
	took := 0.0
	if m := h2FinishedIn.FindStringSubmatch(r.Raw); m != nil {
		took, _ = strconv.ParseFloat(m[1], 64)
		if m[2] == "ms" {
			took /= 1000
		}
	}
	return r, took, nil
}

// parseH2load reads h2load's summary.
func parseH2load(out string) (loadResult, error) {
	r := loadResult{Raw: out}
	m := h2Finished.FindStringSubmatch(r.Raw)
	if m == nil {
		return r, fmt.Errorf("h2load: %w: %s", errNoRPSLine, out)
	}
	r.RPS, _ = strconv.ParseFloat(m[1], 64)
	if m := h2Requests.FindStringSubmatch(r.Raw); m != nil {
		r.Requests, _ = strconv.Atoi(m[4])
		// "failed" also counts the streams still open when -D ends: only errored and
		// timed-out streams (and 4xx/5xx below) are errors.
		for _, s := range m[6:] {
			n, _ := strconv.Atoi(s)
			r.Errors += n
		}
	}
	if m := h2StatusBad.FindStringSubmatch(r.Raw); m != nil {
		for _, s := range m[3:] {
			n, _ := strconv.Atoi(s)
			r.Errors += n
		}
	}
	if r.Requests == 0 {
		return r, fmt.Errorf("h2load: no request succeeded: %s", out)
	}
	return r, nil
}

// pacedResult is one open-loop run of the paced generator.
type pacedResult struct {
	Due, Sent, OK, Failed int
	Elapsed               time.Duration
	MaxLag                time.Duration // worst lateness of a request against its schedule
	Errs                  []string      // the first few errors
}

// paced sends rate requests per second for dur over conns keep-alive HTTP/1.1 connections
// (one per goroutine) to url. Request i is due at start + i/rate: a goroutine that falls
// behind sends at once until it has caught up, so the total stays rate*dur as long as the
// gateway keeps up (MaxLag says whether it did).
func paced(ctx context.Context, url string, rate int, dur time.Duration, conns int) pacedResult {
	return pacedH(ctx, url, nil, rate, dur, conns)
}

// pacedH is paced with request headers.
func pacedH(ctx context.Context, url string, header http.Header, rate int, dur time.Duration, conns int) pacedResult {
	total := int(float64(rate) * dur.Seconds())
	res := pacedResult{Due: total}
	var mu sync.Mutex
	var wg sync.WaitGroup
	start := time.Now().Add(20 * time.Millisecond)
	interval := float64(time.Second) / float64(rate)
	for c := 0; c < conns; c++ {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			tr := &http.Transport{
				DialContext:         (&net.Dialer{Timeout: 2 * time.Second}).DialContext,
				MaxIdleConnsPerHost: 1, MaxConnsPerHost: 1, DisableCompression: true,
				TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // loopback fixture
			}
			defer tr.CloseIdleConnections()
			client := &http.Client{Transport: tr, Timeout: 10 * time.Second}
			var sent, ok, failed int
			var maxLag time.Duration
			var errs []string
			for i := c; i < total; i += conns {
				due := start.Add(time.Duration(float64(i) * interval))
				if d := time.Until(due); d > 0 {
					select {
					case <-ctx.Done():
						i = total
						continue
					case <-time.After(d):
					}
				} else if lag := -d; lag > maxLag {
					maxLag = lag
				}
				sent++
				req, err := http.NewRequestWithContext(ctx, "GET", url, nil)
				if err != nil {
					failed++
					continue
				}
				for k, v := range header {
					req.Header[k] = v
				}
				resp, err := client.Do(req)
				if err != nil {
					failed++
					if len(errs) < 3 {
						errs = append(errs, err.Error())
					}
					continue
				}
				io.Copy(io.Discard, resp.Body) //nolint:errcheck
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					ok++
				} else {
					failed++
					if len(errs) < 3 {
						errs = append(errs, "status "+resp.Status)
					}
				}
			}
			mu.Lock()
			res.Sent += sent
			res.OK += ok
			res.Failed += failed
			if maxLag > res.MaxLag {
				res.MaxLag = maxLag
			}
			if len(res.Errs) < 5 {
				res.Errs = append(res.Errs, errs...)
			}
			mu.Unlock()
		}(c)
	}
	wg.Wait()
	res.Elapsed = time.Since(start)
	return res
}

// poker returns a function that sends one request to url with header (errors ignored): the
// trickle that keeps the gateway busy while the agent starts.
func poker(url string, header http.Header) func() {
	client := &http.Client{Timeout: 2 * time.Second}
	return func() {
		req, err := http.NewRequest("GET", url, nil)
		if err != nil {
			return
		}
		for k, v := range header {
			req.Header[k] = v
		}
		resp, err := client.Do(req)
		if err == nil {
			io.Copy(io.Discard, resp.Body) //nolint:errcheck
			resp.Body.Close()
		}
	}
}

func shortErr(err error) string {
	s := err.Error()
	if len(s) > 600 {
		s = s[:600] + "..."
	}
	return strings.TrimSpace(s)
}
