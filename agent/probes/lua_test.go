// Lua phase timing against real nginx with the lua module.

package probes

import (
	"encoding/binary"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kong-watcher/kong-watcher/agent/model"
	"github.com/kong-watcher/kong-watcher/bpf"
)

func TestLuaPhases(t *testing.T) {
	requireIntegration(t)
	n := startNginx(t)
	p, c := startProbes(t, n, Options{LuaPhases: true})
	if st := p.Status(); !st.LuaPhases || st.Err != "" {
		t.Fatalf("status %+v", st)
	}
	// Calibration events carry no Lua timing: warm up until the layout is learnt.
	client := &http.Client{}
	warm := warmUntilReady(t, p, func() { get(t, client, fmt.Sprintf("http://127.0.0.1:%d/warmup", n.Port)) })
	sent := traffic(t, n, 10) + warm
	got := checkAgainstLog(t, n, p, c, sent)
	phases, other, balanced, denied := 0, 0, 0, 0
	var deniedAcc, deniedHF []time.Duration
	for _, r := range got {
		switch {
		case strings.HasPrefix(r.URI, "/phases"):
			phases++
			for i, d := range r.LuaPhases {
				// each handler runs a 20000-iteration Lua loop: microseconds, not
				// nanoseconds; /phases is not proxied, so no balancer
				ran := model.LuaPhase(i) != model.LuaBalancer
				if !r.HasLua || ran && (d < time.Microsecond || d > time.Second) || !ran && d != 0 {
					t.Errorf("%s: %s phase %v (HasLua %v)", r.URI, model.LuaPhaseNames[i], d, r.HasLua)
				}
			}
		case strings.HasPrefix(r.URI, "/balanced") && r.LocalPort == uint16(n.Port):
			// (the upstream's side of the same request, on UpPort, runs no balancer)
			balanced++
			if d := r.LuaPhases[model.LuaBalancer]; !r.HasLua || d < time.Microsecond || d > time.Second {
				t.Errorf("%s: balancer phase %v (HasLua %v)", r.URI, d, r.HasLua)
			}
		case strings.HasPrefix(r.URI, "/denied"):
			denied++
			// The header filter spins 3 ms of CPU inside the access handler, which does
			// little else: the access handler's own time must not include the filter's
			// (checked on the medians below: a preempted worker stretches single requests).
			acc, hf := r.LuaPhases[model.LuaAccess], r.LuaPhases[model.LuaHeaderFilter]
			deniedAcc, deniedHF = append(deniedAcc, acc), append(deniedHF, hf)
			if !r.HasLua || r.Status != 403 || acc <= 0 || hf < 3*time.Millisecond {
				t.Errorf("%s: status %d access %v header_filter %v (HasLua %v)", r.URI, r.Status, acc, hf, r.HasLua)
			}
		case strings.HasPrefix(r.URI, "/ok"):
			other++
			// The lua module registers its rewrite/access/log handlers for every request once
			// any location uses them (they decline fast); only the content handler is per
			// location, and /ok has none.
			if !r.HasLua || r.LuaPhases[model.LuaContent] != 0 {
				t.Errorf("%s: Lua time %v (HasLua %v)", r.URI, r.LuaPhases, r.HasLua)
			}
		}
	}
	if phases == 0 || other == 0 || balanced == 0 || denied == 0 {
		t.Fatalf("no /phases (%d), /ok (%d), /balanced (%d) or /denied (%d) requests", phases, other, balanced, denied)
	}
	// Without the nesting, the access handler's time would include the filter's 3 ms: more
	// than the filter's own, not less than half of it.
	if a, h := medianDuration(deniedAcc), medianDuration(deniedHF); a >= h/2 {
		t.Errorf("/denied: median access %v, median header_filter %v: the filter's time is in the access handler's", a, h)
	}
	// Nothing is left on the per-thread call stacks between requests.
	var tid uint64
	var stack []byte
	for it := p.objs.NginxreqLuaCalls.Iterate(); it.Next(&tid, &stack); {
		if depth := binary.LittleEndian.Uint32(stack); depth != 0 {
			t.Errorf("thread %d: Lua call stack depth %d after the traffic", tid&0xffffffff, depth)
		}
	}
	// Every main request's Lua time was consumed by its free_request; subrequests (the
	// /phases capture of /withsub) were never timed, so nothing is left behind.
	var k bpf.NginxReqNginxreqLuaKey
	var v bpf.NginxReqNginxreqLuaAcc
	left := 0
	for it := p.objs.NginxreqLuaTime.Iterate(); it.Next(&k, &v); {
		left++
	}
	if left != 0 {
		t.Fatalf("%d Lua time entries left behind (subrequests timed?)", left)
	}
	for _, r := range got {
		if strings.HasPrefix(r.URI, "/phases") {
			t.Logf("example Lua timing: %v", r.LuaPhases)
			break
		}
	}
}

// TestLearnsWhileLuaRemovesHeaders: every request the agent learns from has had a request
// header and a response header removed by Lua, which rewrites the lists' bookkeeping (the
// lua module's removal sets nalloc to the last part's count). The layout is learnt anyway,
// and the requests are counted exactly.
func TestLearnsWhileLuaRemovesHeaders(t *testing.T) {
	requireIntegration(t)
	n := startNginx(t)
	p, c := startProbes(t, n, Options{})
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4, DisableCompression: true}}
	defer client.CloseIdleConnections()
	sent := 0
	for deadline := time.Now().Add(15 * time.Second); p.Status().Mode != "ready" || sent < 50; sent++ {
		if time.Now().After(deadline) {
			t.Fatalf("no layout learnt after %d requests: %+v", sent, p.Status())
		}
		req, _ := http.NewRequest("GET", fmt.Sprintf("http://127.0.0.1:%d/cleared?id=c%d", n.Port, sent), nil)
		for _, h := range []string{"X-A", "X-Secret", "X-Z"} {
			req.Header.Set(h, "v")
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(body) != "cleared\n" || resp.Header.Get("X-Remove") != "" || resp.Header.Get("X-Z") != "1" {
			t.Fatalf("the fixture did not remove the headers: %q %v", body, resp.Header)
		}
		time.Sleep(10 * time.Millisecond) // the reader polls; give it time to see calibration
	}
	checkAgainstLog(t, n, p, c, sent+traffic(t, n, 5))
}

func medianDuration(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}
