package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// floorRunner runs the yardstick of the "floor" side: an EMPTY BPF program on the uprobe the
// agent needs (nginx's ngx_http_free_request), attached by Debian's bpftrace to the exact
// binary the gateway runs. What it costs the gateway is what any design that traps once per
// request pays on this machine: the physical limit the agent is measured against.
type floorRunner struct {
	bpftrace string // the bpftrace binary ("" = not available: no floor side)
	binary   string // the nginx executable the gateway's master runs (/proc/<pid>/exe)
	symbol   string
	logPath  string

	cmd  *exec.Cmd
	done chan struct{}
}

func newFloorRunner(master int, logPath string) (*floorRunner, error) {
	f := &floorRunner{symbol: "ngx_http_free_request", logPath: logPath}
	bt, err := exec.LookPath("bpftrace")
	if err != nil {
		return f, errors.New("bpftrace not found (hack/install-deps.sh installs it): no floor side")
	}
	f.bpftrace = bt
	// The uprobe is keyed on the file's inode: attach to the very file the master executes
	// (for Kong, the stripped binary behind the nginx link).
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", master))
	if err != nil {
		return f, fmt.Errorf("the gateway's binary: %w", err)
	}
	f.binary = exe
	return f, nil
}

func (f *floorRunner) enabled() bool { return f != nil && f.bpftrace != "" }

func (f *floorRunner) pid() int {
	if f == nil || f.cmd == nil {
		return 0
	}
	return f.cmd.Process.Pid
}

// start starts bpftrace and returns once its probe is attached: bpftrace has printed
// "Attaching 1 probe..." and the kernel lists a uprobe held by its PID on the binary.
func (f *floorRunner) start(ctx context.Context) error {
	if !f.enabled() {
		return errors.New("no bpftrace")
	}
	if f.cmd != nil {
		return errors.New("bpftrace already running")
	}
	prog := fmt.Sprintf("uprobe:%s:%s {}", f.binary, f.symbol)
	logf, err := os.OpenFile(f.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	fmt.Fprintf(logf, "\n===== bench: bpftrace -e '%s' at %s =====\n", prog, time.Now().UTC().Format(time.RFC3339Nano))
	cmd := exec.Command(f.bpftrace, "-e", prog)
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	cmd.Stderr = logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting bpftrace: %w", err)
	}
	f.cmd = cmd
	f.done = make(chan struct{})
	attaching := make(chan struct{})
	go func(done chan struct{}, logPath string) {
		sc := bufio.NewScanner(out)
		said := false
		lf, _ := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		for sc.Scan() {
			if lf != nil {
				fmt.Fprintln(lf, sc.Text())
			}
			if !said && strings.HasPrefix(sc.Text(), "Attaching") {
				said = true
				close(attaching)
			}
		}
		if lf != nil {
			lf.Close()
		}
		cmd.Wait() //nolint:errcheck
		close(done)
	}(f.done, f.logPath)

	deadline := time.Now().Add(30 * time.Second)
	sawLine := false
	for {
		select {
		case <-f.done:
			f.cmd = nil
			return fmt.Errorf("bpftrace exited before its probe was attached (%s); see %s:\n%s", cmd.ProcessState, f.logPath, tail(f.logPath, 800))
		case <-attaching:
			sawLine = true
			attaching = nil
		default:
		}
		if sawLine && f.attached() {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			f.stop()
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("bpftrace's probe not attached within 30 s (said Attaching: %v); see %s", sawLine, f.logPath)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// attached says whether the kernel lists a uprobe of bpftrace's on the gateway's binary.
func (f *floorRunner) attached() bool {
	out, err := exec.Command("bpftool", "-j", "perf", "list").Output()
	if err != nil {
		return false
	}
	var entries []struct {
		PID      int    `json:"pid"`
		FDType   string `json:"fd_type"`
		Filename string `json:"filename"`
	}
	if json.Unmarshal(out, &entries) != nil {
		return false
	}
	for _, e := range entries {
		if e.PID == f.pid() && strings.Contains(e.FDType, "uprobe") && sameFile(e.Filename, f.binary) {
			return true
		}
	}
	return false
}

func sameFile(a, b string) bool {
	if a == b {
		return true
	}
	ra, err1 := filepath.EvalSymlinks(a)
	rb, err2 := filepath.EvalSymlinks(b)
	return err1 == nil && err2 == nil && ra == rb
}

// stop ends bpftrace by its PID (SIGINT, its normal way out; SIGKILL after 5 s).
func (f *floorRunner) stop() {
	if f == nil || f.cmd == nil {
		return
	}
	f.cmd.Process.Signal(syscall.SIGINT) //nolint:errcheck
	select {
	case <-f.done:
	case <-time.After(5 * time.Second):
		f.cmd.Process.Kill() //nolint:errcheck
		<-f.done
	}
	f.cmd = nil
}

func (f *floorRunner) String() string {
	if !f.enabled() {
		return "none"
	}
	return "bpftrace -e '" + "uprobe:" + f.binary + ":" + f.symbol + " {}' (pid " + strconv.Itoa(f.pid()) + ")"
}
