// Command upstream is the Kong "service" of the end-to-end test's gateway pod
// (localhost/kong-watcher/upstream:e2e, built by hack/e2e-images.sh, CGO_ENABLED=0, static).
//
// It runs as a second container of the gateway pod, so nginx (test/e2e/gateway/nginx.conf)
// still reaches it at 127.0.0.1:8081, but in its own process: the agent watching nginx sees
// only the gateway's requests, as with a real Kong that proxies to other services. It used
// to be a server block of the same nginx, whose requests were logged and counted a second
// time (host kw-upstream). The routes are those of test/fixture/upstream.go's backendHandler
// and slowHandler, with the MD5 of the in-nginx version's /echo:
//
//	/status/<code>  answers <code> (200-599, else 400) with {"status":<code>}
//	/slow[/...]     answers 200 after delay_ms (query, 0-60000, default 50)
//	/echo[/...]     reads the whole body, answers its method, size and MD5
//	anything else   200 with a small JSON document naming the request
//
// Keep-alive (nginx pools its upstream connections), no log line per request (the access
// log is nginx's), graceful shutdown on SIGTERM/SIGINT.
//
//	upstream [-listen 127.0.0.1:8081]   (or UPSTREAM_LISTEN)
//	upstream -probe                     GET /healthz on the listen address; exit 0 on a 200
//
// -probe is for an exec probe: the server listens on loopback only, which the kubelet's
// httpGet and tcpSocket probes (made to the pod IP) cannot reach.
package main

import (
	"context"
	"crypto/md5"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"
)

const defaultListen = "127.0.0.1:8081"

func main() {
	def := defaultListen
	if v := os.Getenv("UPSTREAM_LISTEN"); v != "" {
		def = v
	}
	listen := flag.String("listen", def, "address to listen on (env UPSTREAM_LISTEN)")
	probe := flag.Bool("probe", false, "GET /healthz on -listen and exit 0 on a 200, 1 otherwise")
	flag.Parse()
	if *probe {
		if err := doProbe(*listen); err != nil {
			fmt.Fprintln(os.Stderr, "upstream: probe:", err)
			os.Exit(1)
		}
		return
	}
	if err := run(*listen); err != nil {
		fmt.Fprintln(os.Stderr, "upstream:", err)
		os.Exit(1)
	}
}

func run(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	srv := &http.Server{
		Handler:           handler(50 * time.Millisecond),
		ReadHeaderTimeout: 10 * time.Second,
		// Longer than nginx's keepalive_timeout for the kw-upstream pool (30s): nginx, not
		// this server, closes idle pooled connections, so a request is never sent on a
		// connection this side is closing (a POST would not be retried: a 502).
		IdleTimeout: 90 * time.Second,
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	fmt.Fprintf(os.Stderr, "upstream: listening on %s\n", ln.Addr())
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	// Finish the requests in flight (a /slow takes at most 60s; the kubelet's grace period
	// is shorter and ends it with SIGKILL anyway), close idle keep-alive connections.
	sctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err = srv.Shutdown(sctx)
	fmt.Fprintln(os.Stderr, "upstream: stopped")
	return err
}

// handler serves every route; def is /slow's delay when the query gives none.
func handler(def time.Duration) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p := r.URL.Path
		w.Header().Set("Content-Type", "application/json")
		switch {
		case strings.HasPrefix(p, "/status/"):
			io.Copy(io.Discard, r.Body) //nolint:errcheck
			code := statusCode(strings.TrimPrefix(p, "/status/"))
			w.WriteHeader(code)
			fmt.Fprintf(w, "{\"status\":%d}\n", code)
		case p == "/slow" || strings.HasPrefix(p, "/slow/"):
			io.Copy(io.Discard, r.Body) //nolint:errcheck
			d := def
			if ms, err := strconv.Atoi(r.URL.Query().Get("delay_ms")); err == nil && ms >= 0 && ms <= 60000 {
				d = time.Duration(ms) * time.Millisecond
			}
			t := time.NewTimer(d)
			defer t.Stop()
			select {
			case <-t.C:
			case <-r.Context().Done(): // nginx gave up (client abort, proxy_read_timeout)
				return
			}
			fmt.Fprintf(w, "{\"service\":\"slow\",\"delay_ms\":%d}\n", d.Milliseconds())
		case p == "/echo" || strings.HasPrefix(p, "/echo/"):
			h := md5.New()
			n, err := io.Copy(h, r.Body)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			writeJSON(w, struct {
				Method string `json:"method"`
				Bytes  int64  `json:"bytes"`
				MD5    string `json:"md5"`
			}{r.Method, n, hex.EncodeToString(h.Sum(nil))})
		default:
			io.Copy(io.Discard, r.Body) //nolint:errcheck
			writeJSON(w, struct {
				Service  string `json:"service"`
				Method   string `json:"method"`
				Path     string `json:"path"`
				Consumer string `json:"consumer"`
			}{"backend", r.Method, p, r.Header.Get("X-Consumer-Username")})
		}
	})
}

// statusCode is s as a status code when it is all digits in 200..599, else 400.
func statusCode(s string) int {
	if s == "" || strings.Trim(s, "0123456789") != "" {
		return http.StatusBadRequest
	}
	code, err := strconv.Atoi(s)
	if err != nil || code < 200 || code > 599 {
		return http.StatusBadRequest
	}
	return code
}

func writeJSON(w http.ResponseWriter, v any) {
	b, _ := json.Marshal(v)
	w.Write(append(b, '\n')) //nolint:errcheck
}

func doProbe(addr string) error {
	c := &http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get("http://" + addr + "/healthz")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, resp.Body) //nolint:errcheck
	if resp.StatusCode != http.StatusOK {
		return errors.New(resp.Status)
	}
	return nil
}
