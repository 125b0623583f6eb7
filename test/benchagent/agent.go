package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/kong-watcher/kong-watcher/api/v1alpha1"
	"github.com/kong-watcher/kong-watcher/test/benchkit"
)

// agentRunner starts and stops the agent binary against one gateway.
type agentRunner struct {
	bin       string // path of kong-watcher-agent; "" = no agent (A/A self-test mode)
	master    int    // the gateway's master PID (KONG_WATCHER_ONLY_PIDS)
	luaPhases string // KONG_WATCHER_LUA_PHASES, "" = the agent's default
	dataPath  string // KONG_WATCHER_DATA_PATH, "" = the agent's default
	logPath   string // the agent's stdout+stderr, appended across starts
	readyWait time.Duration
	label     string // which gateway, for the log

	cmd    *exec.Cmd
	done   chan struct{}
	addr   string
	starts int
	// maxHWM is the largest VmHWM seen over every agent process this run.
	maxHWM uint64
}

func (a *agentRunner) enabled() bool { return a.bin != "" }

func (a *agentRunner) running() bool { return a.cmd != nil }

// start starts the agent and waits until /readyz answers 200. poke, when set, is called
// every 50 ms while waiting: it sends a request to the gateway, so an agent that learns
// nginx's layout from live requests gets some.
func (a *agentRunner) start(ctx context.Context, poke func()) error {
	if !a.enabled() {
		return nil
	}
	if a.running() {
		return errors.New("agent already running")
	}
	port, err := benchkit.FreePort()
	if err != nil {
		return err
	}
	a.addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	logf, err := os.OpenFile(a.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	a.starts++
	fmt.Fprintf(logf, "\n===== bench: agent start #%d on %s (master %d) at %s =====\n", a.starts, a.label, a.master, time.Now().UTC().Format(time.RFC3339Nano))
	cmd := exec.Command(a.bin)
	cmd.Env = append(os.Environ(),
		"METRICS_ADDR="+a.addr,
		"KONG_WATCHER_ONLY_PIDS="+strconv.Itoa(a.master),
		"STATS_INTERVAL=5s",
		"LOG_LEVEL=info",
	)
	if a.luaPhases != "" {
		cmd.Env = append(cmd.Env, "KONG_WATCHER_LUA_PHASES="+a.luaPhases)
	}
	if a.dataPath != "" {
		cmd.Env = append(cmd.Env, "KONG_WATCHER_DATA_PATH="+a.dataPath)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting %s: %w", a.bin, err)
	}
	a.cmd = cmd
	a.done = make(chan struct{})
	go func(done chan struct{}) { cmd.Wait(); close(done) }(a.done) //nolint:errcheck

	deadline := time.Now().Add(a.readyWait)
	client := &http.Client{Timeout: time.Second}
	for {
		select {
		case <-a.done:
			a.cmd = nil
			return fmt.Errorf("the agent exited before it was ready (%s); see %s:\n%s", cmd.ProcessState, a.logPath, tail(a.logPath, 1500))
		default:
		}
		if resp, err := client.Get("http://" + a.addr + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) {
			a.stop()
			return fmt.Errorf("the agent was not ready within %v; see %s:\n%s", a.readyWait, a.logPath, tail(a.logPath, 1500))
		}
		if ctx.Err() != nil {
			a.stop()
			return ctx.Err()
		}
		if poke != nil {
			poke()
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// pid is the running agent's PID (0 when none).
func (a *agentRunner) pid() int {
	if a.cmd == nil {
		return 0
	}
	return a.cmd.Process.Pid
}

// stop stops the agent (SIGTERM, SIGKILL after 5 s) and records its peak RSS first.
func (a *agentRunner) stop() {
	if a.cmd == nil {
		return
	}
	if _, hwm, err := benchkit.ProcMem(a.cmd.Process.Pid); err == nil && hwm > a.maxHWM {
		a.maxHWM = hwm
	}
	a.cmd.Process.Signal(syscall.SIGTERM) //nolint:errcheck
	select {
	case <-a.done:
	case <-time.After(5 * time.Second):
		a.cmd.Process.Kill() //nolint:errcheck
		<-a.done
	}
	a.cmd = nil
}

// stats fetches the agent's /stats.
func (a *agentRunner) stats() (v1alpha1.Stats, error) {
	var s v1alpha1.Stats
	if a.cmd == nil {
		return s, errors.New("no agent running")
	}
	client := &http.Client{Timeout: 3 * time.Second}
	resp, err := client.Get("http://" + a.addr + "/stats")
	if err != nil {
		return s, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return s, fmt.Errorf("/stats: %s", resp.Status)
	}
	err = json.NewDecoder(resp.Body).Decode(&s)
	return s, err
}

// settledStats polls /stats until total.requests stops moving (the agent has drained
// what the kernel handed it) or max elapses, and returns the last document. /stats serves a
// snapshot up to a second old, so only two different snapshots (their updated times differ)
// with the same total prove that the count has settled.
func (a *agentRunner) settledStats(max time.Duration) (v1alpha1.Stats, error) {
	deadline := time.Now().Add(max)
	prev, err := a.stats()
	if err != nil {
		return prev, err
	}
	for time.Now().Before(deadline) {
		time.Sleep(250 * time.Millisecond)
		cur, err := a.stats()
		if err != nil {
			return prev, err
		}
		if !cur.Updated.After(prev.Updated) {
			continue // the same snapshot again
		}
		if cur.Total.Requests == prev.Total.Requests {
			return cur, nil
		}
		prev = cur
	}
	return prev, nil
}

func tail(path string, n int) string {
	data, _ := os.ReadFile(path)
	if len(data) > n {
		data = data[len(data)-n:]
	}
	return strings.TrimSpace(string(data))
}
