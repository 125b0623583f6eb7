package supervise

import (
	"context"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kong-watcher/kong-watcher/test/fixture"
)

// The test binary doubles as the supervised child: with KW_SUPERVISE_TEST_DIR set it writes
// its PID to a file named after it and then behaves as KW_SUPERVISE_TEST_MODE says.
func TestMain(m *testing.M) {
	if dir := os.Getenv("KW_SUPERVISE_TEST_DIR"); dir != "" && Child() {
		_ = os.WriteFile(filepath.Join(dir, strconv.Itoa(os.Getpid())), nil, 0o644)
		switch os.Getenv("KW_SUPERVISE_TEST_MODE") {
		case "crash":
			os.Exit(3)
		default: // run until SIGTERM, then exit 0 like the agent
			c := make(chan os.Signal, 1)
			signal.Notify(c, syscall.SIGTERM)
			<-c
			os.Exit(0)
		}
	}
	os.Exit(m.Run())
}

func children(t *testing.T, dir string) []int {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, e := range entries {
		pid, _ := strconv.Atoi(e.Name())
		pids = append(pids, pid)
	}
	return pids
}

func waitFor(t *testing.T, what string, f func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !f() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func start(t *testing.T, mode string) (dir string, log *fixture.SyncBuffer, cancel func(), done <-chan int) {
	t.Helper()
	dir = t.TempDir()
	t.Setenv("KW_SUPERVISE_TEST_DIR", dir)
	t.Setenv("KW_SUPERVISE_TEST_MODE", mode)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancelCtx := context.WithCancel(context.Background())
	log = &fixture.SyncBuffer{}
	d := make(chan int, 1)
	go func() {
		d <- Run(ctx, exe, []string{"-test.run=^$"}, Options{MinBackoff: 10 * time.Millisecond, MaxBackoff: 40 * time.Millisecond, Log: log})
	}()
	return dir, log, cancelCtx, d
}

// TestKilledAgentIsRestartedInPlace: SIGKILL of the agent (what the OOM killer does) starts a
// new one; the supervisor, and so the container, goes on.
func TestKilledAgentIsRestartedInPlace(t *testing.T) {
	dir, log, cancel, done := start(t, "serve")
	for round := 1; round <= 3; round++ {
		waitFor(t, "child "+strconv.Itoa(round), func() bool { return len(children(t, dir)) == round })
		pids := children(t, dir)
		newest := 0
		for _, p := range pids {
			newest = max(newest, p)
		}
		if err := syscall.Kill(newest, syscall.SIGKILL); err != nil && round < 3 {
			t.Fatal(err)
		}
		if round == 3 {
			break
		}
	}
	waitFor(t, "a fourth child", func() bool { return len(children(t, dir)) == 4 })
	select {
	case code := <-done:
		t.Fatalf("the supervisor exited (%d) after its child was killed", code)
	default:
	}
	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Errorf("stop: exit code %d, want the child's 0", code)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the supervisor did not stop with its child")
	}
	if n := strings.Count(log.String(), "restarting it in the same container"); n != 3 {
		t.Errorf("%d restart lines, want 3:\n%s", n, log.String())
	}
}

// TestCrashingAgentBacksOff: an agent that exits at once is restarted with a growing wait,
// never in a tight loop.
func TestCrashingAgentBacksOff(t *testing.T) {
	dir, log, cancel, done := start(t, "crash")
	waitFor(t, "six starts", func() bool { return len(children(t, dir)) >= 6 })
	cancel()
	<-done
	out := log.String()
	if !strings.Contains(out, `"restartIn":"40ms"`) || !strings.Contains(out, "exit status 3") {
		t.Errorf("want the wait capped at MaxBackoff and the exit status logged:\n%s", out)
	}
}
