package listeners

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// An nginx master writes its process title over the environment /proc/<pid>/environ shows;
// KongEnviron reads Kong's settings from where nginx moved them, for Debian's nginx (libc's
// environ) and OpenResty's (the executable's copy of it), and from a process that left its
// environment in place.
func TestKongEnviron(t *testing.T) {
	// Debian's nginx, and the stripped builds of OpenResty and Kong that `make test` hands over
	// (KW_OPENRESTY, KW_KONG: their TOPs).
	bins := map[string]string{"sleep": "sleep", "debian-nginx": "/usr/sbin/nginx"}
	for _, top := range append(filepath.SplitList(os.Getenv("KW_OPENRESTY")), os.Getenv("KW_KONG")) {
		if top != "" {
			bins[filepath.Base(top)] = filepath.Join(top, "stripped", "nginx")
		}
	}
	for name, bin := range bins {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			args := []string{"30"}
			if name != "sleep" {
				// No http block: OpenResty's would want its Lua library path.
				conf := fmt.Sprintf("daemon off; master_process on; worker_processes 1; pid %[1]s/nginx.pid; error_log %[1]s/error.log;\nevents {}\n", dir)
				if err := os.WriteFile(filepath.Join(dir, "nginx.conf"), []byte(conf), 0o644); err != nil {
					t.Fatal(err)
				}
				args = []string{"-p", dir, "-c", filepath.Join(dir, "nginx.conf"), "-e", filepath.Join(dir, "error.log")}
			}
			cmd := exec.Command(bin, args...)
			cmd.Env = []string{"PATH=/usr/bin:/bin", "KONG_PROXY_LISTEN=0.0.0.0:8000 reuseport, [::]:8443 ssl", "HOME=/", "KONG_ADMIN_LISTEN=off"}
			// Its own process group: the worker dies with the master instead of being left
			// to PID 1 when the test kills the master.
			cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
			if err := cmd.Start(); err != nil {
				t.Skipf("%s: %v", bin, err)
			}
			defer func() {
				syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) //nolint:errcheck
				cmd.Wait()                                      //nolint:errcheck
				for deadline := time.Now().Add(5 * time.Second); syscall.Kill(-cmd.Process.Pid, 0) == nil; time.Sleep(10 * time.Millisecond) {
					if time.Now().After(deadline) {
						t.Errorf("%s: a process of its group outlived SIGKILL", bin)
						return
					}
				}
			}()
			pid := cmd.Process.Pid
			want := map[string]string{"KONG_PROXY_LISTEN": "0.0.0.0:8000 reuseport, [::]:8443 ssl", "KONG_ADMIN_LISTEN": "off"}
			var env map[string]string
			var err error
			for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
				title, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
				if name != "sleep" && !strings.HasPrefix(string(title), "nginx: master process") {
					continue // not yet where nginx has moved its environment
				}
				if env, err = KongEnviron("/proc", pid); err == nil && len(env) == len(want) {
					break
				}
			}
			if err != nil || fmt.Sprint(env) != fmt.Sprint(want) {
				t.Fatalf("KongEnviron = %v, %v; want %v", env, err, want)
			}
			raw, _ := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
			t.Logf("/proc/%d/environ holds KONG_PROXY_LISTEN: %v", pid, strings.Contains(string(raw), "KONG_PROXY_LISTEN"))
		})
	}
}
