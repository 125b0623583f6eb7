// Comparing what the probes delivered with nginx's access log, field by field.

package probes

import (
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/kong-watcher/kong-watcher/agent/model"
	"github.com/kong-watcher/kong-watcher/agent/nginxlayout"
	"github.com/kong-watcher/kong-watcher/test/fixture"
)

// settle waits until the access log stops growing (checked every pause, for at most 10s) and
// the agent has caught up with it: upstream requests of aborted clients finish late. It
// returns the log and the agent's records.
func settle(t *testing.T, n *testNginx, c *collector, pause time.Duration) ([]fixture.LogEntry, []model.Request) {
	t.Helper()
	var lines []fixture.LogEntry
	var got []model.Request
	for prev, deadline := -1, time.Now().Add(10*time.Second); ; {
		time.Sleep(pause)
		lines = readAccessLog(t, n)
		got = c.waitFor(t, len(lines), 3*time.Second)
		if len(lines) == prev || time.Now().After(deadline) {
			return lines, got
		}
		prev = len(lines)
	}
}

// pairWithLog waits for the sent requests' log lines and records, and pairs every log line
// with a record that matches it (host, URI, cut flags, ...); it returns the records.
func pairWithLog(t *testing.T, n *testNginx, c *collector, sent int) []model.Request {
	t.Helper()
	lines, got := settle(t, n, c, 300*time.Millisecond)
	if len(got) != len(lines) || len(lines) != sent {
		t.Fatalf("sent %d requests, %d log lines, %d agent records", sent, len(lines), len(got))
	}
	used := make([]bool, len(got))
	for _, l := range lines {
		found := false
		for i, r := range got {
			if !used[i] && compare(l, r, true) == "" {
				used[i], found = true, true
				break
			}
		}
		if !found {
			t.Errorf("no agent record matches log line %+v", l)
		}
	}
	return got
}

// checkAgainstLog compares the agent's records with nginx's access log line by line.
func checkAgainstLog(t *testing.T, n *testNginx, p *Probes, c *collector, sent int) []model.Request {
	t.Helper()
	lines, got := settle(t, n, c, 400*time.Millisecond)
	st := p.Status()
	t.Logf("sent %d requests, %d log lines, %d agent records; status %+v", sent, len(lines), len(got), st)

	if st.Mode != "ready" {
		t.Errorf("mode %q, want ready (%s)", st.Mode, st.Err)
	}
	if !strings.Contains(st.Layout, nginxlayout.Debian1221.String()) {
		t.Errorf("learnt layout %q, want Debian 1.22.1's known %v", st.Layout, nginxlayout.Debian1221)
	}
	if want := fmt.Sprintf("srv_conf=%d server_name=%d", nginxlayout.SrvConfOffset, nginxlayout.Debian1221ServerName); !strings.Contains(st.Layout, want) {
		t.Errorf("learnt layout %q, want %s", st.Layout, want)
	}
	if st.Dropped != 0 || st.DecodeErrors != 0 {
		t.Errorf("dropped %d, decode errors %d", st.Dropped, st.DecodeErrors)
	}
	if len(got) != len(lines) {
		t.Errorf("agent saw %d requests, access log has %d", len(got), len(lines))
	}

	byKey := map[string][]model.Request{}
	for _, r := range got {
		k := reqKey(r.URI, r.Method, r.Status)
		byKey[k] = append(byKey[k], r)
	}
	mismatches := 0
	seen := map[string]int{}
	for _, l := range lines {
		k := reqKey(l.RequestURI, l.Method, l.Status)
		rs := byKey[k]
		if len(rs) == 0 {
			t.Errorf("no agent record for log line %+v", l)
			mismatches++
			continue
		}
		// Proxied requests appear twice with one id: the client's and the upstream server's
		// (the same nginx serves both); pair each log line with the record that fits it.
		best := 0
		for i := range rs {
			if compare(l, rs[i], p.opts.ClientAddr) == "" {
				best = i
				break
			}
		}
		r := rs[best]
		byKey[k] = append(rs[:best:best], rs[best+1:]...)
		if diff := compare(l, r, p.opts.ClientAddr); diff != "" {
			mismatches++
			if mismatches < 30 {
				t.Errorf("log %+v\n  agent %+v\n  %s", l, r, diff)
			}
		}
		seen[fmt.Sprintf("%s %d", l.Protocol, l.Status)]++
	}
	for k, rs := range byKey {
		for _, r := range rs {
			t.Errorf("agent record %q without log line: %+v", k, r)
		}
	}
	var kinds []string
	for k, v := range seen {
		kinds = append(kinds, fmt.Sprintf("%s=%d", k, v))
	}
	sort.Strings(kinds)
	t.Logf("compared %d lines, %d mismatches; %s", len(lines), mismatches, strings.Join(kinds, " "))
	for _, want := range []string{"HTTP/1.1 200", "HTTP/1.1 404", "HTTP/1.1 502", "HTTP/1.1 499", "HTTP/2.0 200", "HTTP/1.0 200"} {
		if seen[want] == 0 {
			t.Errorf("traffic produced no %q", want)
		}
	}
	// Requests without Host, answered by each server: $host is its server_name.
	noHost := map[string]int{}
	for _, l := range lines {
		if strings.Contains(l.RequestURI, "id=raw10-") || strings.Contains(l.RequestURI, "id=rawalt-") || l.Status == 400 {
			noHost[fmt.Sprintf("%s %d", l.Host, l.Status)]++
		}
	}
	t.Logf("requests without Host by $host and status: %v", noHost)
	for _, want := range []string{"kw.test 200", "kw.test 400", "alt.kw.test 204", "alt.kw.test 400"} {
		if noHost[want] == 0 {
			t.Errorf("traffic produced no request without Host for %q", want)
		}
	}
	return got
}

// pidInLog, when set, relates the PID nginx logs ($pid, in its own namespace) to the one the
// agent reports (in the agent's namespace).
var pidInLog func(logPID, agentPID int) bool

// latencyTolerance is 0 (exact ms) unless a test uses the kernel-clock fallback.
var latencyTolerance time.Duration

func abs(x int64) int64 {
	if x < 0 {
		return -x
	}
	return x
}

// cutDiff says how a value the record holds at most max bytes of (got, marked cut or not)
// differs from the log's want ("" when it matches): a longer value arrives as its marked
// max-byte prefix, a shorter one whole and unmarked.
func cutDiff(what, got string, cut bool, want string, max int) string {
	if len(want) > max {
		if !strings.HasPrefix(want, got) || len(got) != max || !cut {
			return fmt.Sprintf("%s %q (cut %v) is not the marked %d-byte prefix of %q", what, got, cut, max, want)
		}
	} else if got != want || cut {
		return fmt.Sprintf("%s %q (cut %v) != %q", what, got, cut, want)
	}
	return ""
}

// compare lists how r differs from the access log's l ("" when it matches); withAddr: the
// probes read client addresses.
func compare(l fixture.LogEntry, r model.Request, withAddr bool) string {
	var d []string
	if r.Status != l.Status {
		d = append(d, fmt.Sprintf("status %d != %d", r.Status, l.Status))
	}
	// Without Host, $host is the server's server_name: the agent must report it too.
	if s := cutDiff("host", r.Host, r.HostTruncated, l.Host, model.MaxHostLen); s != "" {
		d = append(d, s)
	}
	if r.Method != l.Method {
		d = append(d, fmt.Sprintf("method %q != %q", r.Method, l.Method))
	}
	if s := cutDiff("uri", r.URI, r.URITruncated, l.RequestURI, model.MaxURILen); s != "" {
		d = append(d, s)
	}
	reqMs := l.RequestTime.Milliseconds()
	if ms := r.Latency.Milliseconds(); latencyTolerance == 0 && ms != reqMs ||
		latencyTolerance > 0 && time.Duration(abs(ms-reqMs))*time.Millisecond > latencyTolerance {
		d = append(d, fmt.Sprintf("latency %d ms != %d ms", ms, reqMs))
	}
	if r.HasUpstream != l.HasUpstream || r.Upstream.Milliseconds() != l.UpstreamTime.Milliseconds() {
		d = append(d, fmt.Sprintf("upstream %v/%v != %v/%v", r.HasUpstream, r.Upstream, l.HasUpstream, l.UpstreamTime))
	}
	// The listener: the port $server_port names, or a unix-domain socket when it names none.
	if l.ServerPort != 0 {
		if !r.ListenerKnown || r.UnixListener || int(r.LocalPort) != l.ServerPort {
			d = append(d, fmt.Sprintf("listener known %v unix %v port %d != port %d", r.ListenerKnown, r.UnixListener, r.LocalPort, l.ServerPort))
		}
	} else if !r.ListenerKnown || !r.UnixListener || r.LocalPort != 0 {
		d = append(d, fmt.Sprintf("listener known %v unix %v port %d != unix", r.ListenerKnown, r.UnixListener, r.LocalPort))
	}
	if r.BytesSent != l.BytesSent {
		d = append(d, fmt.Sprintf("bytes %d != %d", r.BytesSent, l.BytesSent))
	}
	if r.Proto != l.Protocol {
		d = append(d, fmt.Sprintf("proto %q != %q", r.Proto, l.Protocol))
	}
	if want := l.RemoteAddr; r.ClientAddr != want && !(r.ClientAddr == "" && !withAddr) {
		d = append(d, fmt.Sprintf("addr %q != %q", r.ClientAddr, want))
	}
	if r.ClientAddr != "" && !withAddr {
		d = append(d, fmt.Sprintf("addr %q read though ClientAddr is off", r.ClientAddr))
	}
	if pidInLog != nil && !pidInLog(l.PID, r.PID) || pidInLog == nil && r.PID != l.PID {
		d = append(d, fmt.Sprintf("pid %d != %d", r.PID, l.PID))
	}
	return strings.Join(d, "; ")
}
