package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/kong-watcher/kong-watcher/test/fixture"
)

// kongStateFile, beside fixture.StateFile in the directory serve was given, says that the
// gateway is real Kong and where its Admin and Status APIs listen.
const kongStateFile = "kong.json"

type kongState struct {
	AdminAddr, StatusAddr string
	Top, Version          string
}

// serveKong runs real Kong through test/fixture's harness (StartKong: DB-less, its routes and
// plugins, the proxy on HTTP and HTTPS/HTTP2, the Admin and Status APIs, every listener on
// 127.0.0.1 and named by KONG_*_LISTEN in Kong's environment) with prefix dir/kong.
func serveKong(sigs <-chan os.Signal, dir, top string, workers int) error {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	// `kong prepare`, then every worker building its router and plugins: seconds, more on a
	// busy machine.
	ctx, cancel := context.WithTimeout(context.Background(), 110*time.Second)
	defer cancel()
	k, err := fixture.StartKong(ctx, fixture.KongOptions{Top: top, Dir: filepath.Join(dir, "kong"), Workers: workers})
	if err != nil {
		if k != nil && k.Gateway != nil && k.Prefix != "" {
			return fmt.Errorf("%w\n%s", err, k.ErrorLogTail(2000))
		}
		return err
	}
	st := kongState{AdminAddr: k.AdminAddr, StatusAddr: k.StatusAddr, Top: top, Version: "?"}
	if _, body, err := k.API(ctx, fixture.KongAdmin, "/"); err == nil {
		var info struct {
			Version string `json:"version"`
		}
		if json.Unmarshal([]byte(body), &info) == nil && info.Version != "" {
			st.Version = info.Version
		}
	}
	// Kong's prefix is dir/kong: the state goes where drive, load and probe look for it.
	err = k.WriteState(dir)
	if err == nil {
		err = writeJSON(filepath.Join(dir, kongStateFile), st)
	}
	if err != nil {
		k.Stop() //nolint:errcheck
		return err
	}
	env := append([]string{"KW_GATEWAY_KIND=kong", "KW_GATEWAY_KONG_VERSION=" + st.Version, "KW_GATEWAY_KONG_TOP=" + top},
		gatewayEnv(k.Gateway)...)
	env = append(env, "KW_GATEWAY_ADMIN="+k.AdminAddr, "KW_GATEWAY_STATUS="+k.StatusAddr,
		"KW_GATEWAY_ADMIN_ACCESS_LOG="+filepath.Join(k.LogDir, fixture.KongAdmin, "access.log"),
		"KW_GATEWAY_STATUS_ACCESS_LOG="+filepath.Join(k.LogDir, fixture.KongStatus, "access.log"))
	return run(sigs, dir, env, k.Reload, k.Stop)
}

func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(path+".tmp", append(b, '\n'), 0o644); err != nil {
		return err
	}
	return os.Rename(path+".tmp", path)
}

// attachKong returns a handle on the Kong that serveKong runs in dir (g attached to it), or
// nil when the gateway in dir is the fixture.
func attachKong(dir string, g *fixture.Gateway) (*fixture.Kong, error) {
	b, err := os.ReadFile(filepath.Join(dir, kongStateFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var st kongState
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, kongStateFile), err)
	}
	return &fixture.Kong{Gateway: g, AdminAddr: st.AdminAddr, StatusAddr: st.StatusAddr}, nil
}

// driveKong sends n requests of the Kong harness's mix (every route and plugin, HTTP/1.1,
// TLS, HTTP/2, a client abort, a malformed request).
func driveKong(ctx context.Context, k *fixture.Kong, n, conc int) error {
	reqs, err := k.DriveKong(ctx, n, conc)
	byStatus := map[int]int{}
	for _, r := range reqs {
		byStatus[r.Status]++
	}
	out := map[string]any{"total": len(reqs), "byStatus": byStatus}
	if err != nil {
		out["error"] = err.Error()
	}
	json.NewEncoder(os.Stdout).Encode(out) //nolint:errcheck
	return err
}

// probe sends what a Kong pod's Admin and Status APIs see besides the proxy's traffic: the
// kubelet's readiness and liveness probes (/status/ready, /status) every second and a
// Prometheus scrape (/metrics) every 5 s on the Status API, an operator's reads on the Admin
// API every 2 s (one in five asks for a route that does not exist: 404).
func probe(args []string) error {
	fl := flag.NewFlagSet("probe", flag.ExitOnError)
	dir := fl.String("dir", "", "directory of a running Kong (serve -kong) (required)")
	dur := fl.Duration("duration", 0, "how long (0: until SIGTERM/SIGINT)")
	fl.Parse(args) //nolint:errcheck
	g, err := fixture.Attach(*dir)
	if err != nil {
		return err
	}
	defer g.Stop() //nolint:errcheck
	k, err := attachKong(*dir, g)
	if err != nil {
		return err
	}
	if k == nil {
		return fmt.Errorf("probe: the gateway in %s is not Kong (no Admin or Status API)", *dir)
	}
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	if *dur > 0 {
		var c context.CancelFunc
		ctx, c = context.WithTimeout(ctx, *dur)
		defer c()
	}
	admin := []string{"/", "/routes", "/services", "/plugins", "/routes/no-such-route"}
	answers := map[string]int{} // "listener status" -> count
	get := func(listener, path string) {
		code, _, err := k.API(ctx, listener, path)
		if ctx.Err() != nil {
			return // the probe's end, not an answer
		}
		if err != nil {
			code = 0
		}
		answers[listener+" "+strconv.Itoa(code)]++
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for i := 0; ; i++ {
		get(fixture.KongStatus, "/status/ready")
		get(fixture.KongStatus, "/status")
		if i%5 == 0 {
			get(fixture.KongStatus, "/metrics")
		}
		if i%2 == 0 {
			get(fixture.KongAdmin, admin[(i/2)%len(admin)])
		}
		select {
		case <-ctx.Done():
			json.NewEncoder(os.Stdout).Encode(map[string]any{"answers": answers}) //nolint:errcheck
			return nil
		case <-tick.C:
		}
	}
}
