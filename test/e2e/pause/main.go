// Command pause is the pod sandbox ("pause") image of the end-to-end test cluster: no image
// can be pulled there, so hack/e2e-images.sh builds this instead of registry.k8s.io/pause.
//
// It holds the pod's namespaces open. As PID 1 of a pod with shareProcessNamespace it is the
// parent every orphaned process is re-parented to (nginx's old workers after a reload, the
// children of `kubectl exec`), so it reaps them on SIGCHLD; otherwise they would stay
// zombies. It exits 0 on SIGTERM or SIGINT. Built with CGO_ENABLED=0: a static binary in a
// FROM-scratch image.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	if len(os.Args) > 1 && (os.Args[1] == "-v" || os.Args[1] == "--version") {
		fmt.Println("kong-watcher e2e pause")
		return
	}
	if os.Getpid() != 1 {
		fmt.Fprintln(os.Stderr, "pause: warning: not running as PID 1")
	}
	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	// Children that died before the handler was installed.
	reap()
	for sig := range sigs {
		switch sig {
		case syscall.SIGCHLD:
			reap()
		default:
			fmt.Fprintf(os.Stderr, "pause: %v, exiting\n", sig)
			os.Exit(0)
		}
	}
}

// reap collects every exited child without blocking. Signals coalesce, so one SIGCHLD may
// stand for several children: loop until none is left.
func reap() int {
	n := 0
	for {
		var ws syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
		if err == syscall.EINTR {
			continue
		}
		if pid <= 0 || err != nil {
			return n
		}
		n++
	}
}
