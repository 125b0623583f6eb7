// Package supervise keeps the agent running inside its container without the container ever
// exiting. The agent is a native sidecar: while the kubelet restarts a sidecar container that
// exited, the whole pod is NotReady and Kong leaves its Service. So the container's first
// process is a small supervisor that runs the agent as its child and starts it again when it
// dies (a crash, an OOM kill of the child, a SIGKILL): the container keeps running and Kong's
// pod stays Ready. A stop request (SIGTERM, SIGINT) is passed to the child, and the supervisor
// exits with the child's status.
package supervise

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"syscall"
	"time"
)

// EnvSupervised is set in the child's environment: the child runs the agent itself.
const EnvSupervised = "KONG_WATCHER_SUPERVISED"

// Options tune the restart policy; the zero value is the production policy.
type Options struct {
	// MinBackoff and MaxBackoff bound the wait before a restart; it doubles after each quick
	// exit and starts again at MinBackoff after a child ran for StableAfter.
	MinBackoff, MaxBackoff, StableAfter time.Duration
	// Log receives one line per event (start, exit, restart); os.Stderr by default.
	Log io.Writer
}

func (o *Options) defaults() {
	if o.MinBackoff <= 0 {
		o.MinBackoff = time.Second
	}
	if o.MaxBackoff <= 0 {
		o.MaxBackoff = 30 * time.Second
	}
	if o.StableAfter <= 0 {
		o.StableAfter = time.Minute
	}
	if o.Log == nil {
		o.Log = os.Stderr
	}
}

// Child reports whether this process is the supervised agent.
func Child() bool { return os.Getenv(EnvSupervised) == "1" }

// Run runs exe with args as a supervised child until ctx ends, and returns the exit code the
// supervisor should exit with. The child dies with the supervisor (PR_SET_PDEATHSIG), so a
// killed supervisor never leaves an agent behind.
func Run(ctx context.Context, exe string, args []string, opts Options) int {
	opts.defaults()
	stop := make(chan os.Signal, 2)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(stop)

	backoff := opts.MinBackoff
	for restarts := 0; ; restarts++ {
		cmd := exec.Command(exe, args...)
		cmd.Env = append(os.Environ(), EnvSupervised+"=1")
		cmd.Stdin, cmd.Stdout, cmd.Stderr = nil, os.Stdout, os.Stderr
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		started := time.Now()
		if err := cmd.Start(); err != nil {
			fmt.Fprintf(opts.Log, `{"level":"error","logger":"supervisor","msg":"cannot start the agent","error":%q}`+"\n", err.Error())
			if !wait(ctx, stop, backoff) {
				return 0
			}
			backoff = min(2*backoff, opts.MaxBackoff)
			continue
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()

		var err error
		select {
		case err = <-exited:
		case sig := <-stop:
			return forward(cmd, sig, exited)
		case <-ctx.Done():
			return forward(cmd, syscall.SIGTERM, exited)
		}
		if time.Since(started) >= opts.StableAfter {
			backoff = opts.MinBackoff
		}
		fmt.Fprintf(opts.Log, `{"level":"error","logger":"supervisor","msg":"the agent exited; restarting it in the same container so Kong's pod stays Ready","status":%q,"ranFor":%q,"restartIn":%q,"restarts":%d}`+"\n",
			status(err), time.Since(started).Round(time.Millisecond).String(), backoff.String(), restarts+1)
		if !wait(ctx, stop, backoff) {
			return 0
		}
		backoff = min(2*backoff, opts.MaxBackoff)
	}
}

// forward passes a stop request to the child and returns its exit code once it has exited.
func forward(cmd *exec.Cmd, sig os.Signal, exited <-chan error) int {
	_ = cmd.Process.Signal(sig)
	err := <-exited
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal())
		}
		return ee.ExitCode()
	}
	return 0
}

// wait sleeps d unless a stop request or ctx ends it first (false).
func wait(ctx context.Context, stop <-chan os.Signal, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-stop:
		return false
	case <-ctx.Done():
		return false
	}
}

func status(err error) string {
	if err == nil {
		return "exit status 0"
	}
	return err.Error()
}
