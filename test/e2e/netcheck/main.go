// Command netcheck is the client pod of the end-to-end test's network step
// (localhost/kong-watcher/netcheck:e2e, built by hack/e2e-images.sh, CGO_ENABLED=0, static):
// from inside a pod it checks what the cluster's DNS and kube-proxy give every pod.
//
//	netcheck [-timeout 30s] [-resolve NAME=IP]... [-get URL=STATUS]... [-api]
//
//	-resolve NAME=IP  NAME resolves to IP, through the pod's /etc/resolv.conf (search domains
//	                  and ndots apply: a short Service name resolves in the pod's namespace)
//	-get URL=STATUS   an HTTP GET of URL answers STATUS (the name in URL resolved as above)
//	-api              GET https://kubernetes.default.svc/version with the pod's service-account
//	                  CA and token answers 200 with a gitVersion: the `kubernetes` Service,
//	                  its name and the API server's certificate, as client-go in a pod uses them
//
// It first prints /etc/resolv.conf, then one line per check ("ok ..." or "FAIL ..."). Every
// check is retried until it passes or -timeout has passed since the start (a Service's rules
// and records may trail the pod's start by a moment). Exit 0 when every check passed, 1 when
// one failed, 2 on bad arguments.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
)

const saDir = "/var/run/secrets/kubernetes.io/serviceaccount"

type multi []string

func (m *multi) String() string     { return strings.Join(*m, ",") }
func (m *multi) Set(v string) error { *m = append(*m, v); return nil }

type check struct {
	what string
	run  func(ctx context.Context) (string, error)
}

func main() {
	var resolves, gets multi
	timeout := flag.Duration("timeout", 30*time.Second, "retry every check until it passes or this much time has passed")
	flag.Var(&resolves, "resolve", "NAME=IP: NAME resolves to IP (repeatable)")
	flag.Var(&gets, "get", "URL=STATUS: GET URL answers STATUS (repeatable)")
	api := flag.Bool("api", false, "GET https://kubernetes.default.svc/version with the service account's CA and token")
	flag.Parse()

	checks, err := parse(resolves, gets, *api)
	if err != nil || flag.NArg() > 0 || len(checks) == 0 {
		fmt.Fprintln(os.Stderr, "netcheck: usage: netcheck [-timeout D] [-resolve NAME=IP]... [-get URL=STATUS]... [-api]")
		if err != nil {
			fmt.Fprintln(os.Stderr, "netcheck:", err)
		}
		os.Exit(2)
	}

	if b, err := os.ReadFile("/etc/resolv.conf"); err == nil {
		for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
			fmt.Println("resolv.conf:", l)
		}
	} else {
		fmt.Println("resolv.conf: (unreadable)", err)
	}

	deadline := time.Now().Add(*timeout)
	failed := 0
	for _, c := range checks {
		start := time.Now()
		tries := 0
		for {
			tries++
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			got, err := c.run(ctx)
			cancel()
			if err == nil {
				fmt.Printf("ok %s: %s (try %d, %s)\n", c.what, got, tries, time.Since(start).Round(time.Millisecond))
				break
			}
			if time.Now().After(deadline) {
				fmt.Printf("FAIL %s: %v (%d tries in %s)\n", c.what, err, tries, time.Since(start).Round(time.Millisecond))
				failed++
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	if failed > 0 {
		os.Exit(1)
	}
}

// parse turns the flags into checks.
func parse(resolves, gets []string, api bool) ([]check, error) {
	var checks []check
	for _, r := range resolves {
		name, ip, ok := strings.Cut(r, "=")
		want := net.ParseIP(ip)
		if !ok || name == "" || want == nil {
			return nil, fmt.Errorf("-resolve %q: want NAME=IP", r)
		}
		checks = append(checks, check{"resolve " + name, func(ctx context.Context) (string, error) {
			return resolve(ctx, name, want)
		}})
	}
	for _, g := range gets {
		i := strings.LastIndex(g, "=")
		if i < 0 {
			return nil, fmt.Errorf("-get %q: want URL=STATUS", g)
		}
		url := g[:i]
		status, err := strconv.Atoi(g[i+1:])
		if err != nil || status < 100 || status > 599 || !strings.HasPrefix(url, "http://") {
			return nil, fmt.Errorf("-get %q: want http://...=STATUS", g)
		}
		checks = append(checks, check{"GET " + url, func(ctx context.Context) (string, error) {
			got, _, err := get(ctx, http.DefaultTransport, url, "", status)
			return got, err
		}})
	}
	if api {
		checks = append(checks, check{"GET https://kubernetes.default.svc/version (service account)", apiVersion})
	}
	return checks, nil
}

func resolve(ctx context.Context, name string, want net.IP) (string, error) {
	addrs, err := net.DefaultResolver.LookupHost(ctx, name)
	if err != nil {
		return "", err
	}
	if !slices.ContainsFunc(addrs, func(a string) bool { return net.ParseIP(a).Equal(want) }) {
		return "", fmt.Errorf("resolved to %v, want %s", addrs, want)
	}
	return strings.Join(addrs, ","), nil
}

// get GETs url on a fresh connection and wants status; it returns who answered and the body.
func get(ctx context.Context, rt http.RoundTripper, url, token string, status int) (string, []byte, error) {
	var remote string
	ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) {
		remote = i.Conn.RemoteAddr().String()
	}})
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", nil, err
	}
	req.Close = true
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	c := &http.Client{Transport: rt, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := c.Do(req)
	if err != nil {
		return "", nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return "", nil, err
	}
	if resp.StatusCode != status {
		return "", nil, fmt.Errorf("status %d, want %d: %.200s", resp.StatusCode, status, body)
	}
	return fmt.Sprintf("%d from %s, %d bytes", resp.StatusCode, remote, len(body)), body, nil
}

func apiVersion(ctx context.Context) (string, error) {
	ca, err := os.ReadFile(saDir + "/ca.crt")
	if err != nil {
		return "", err
	}
	token, err := os.ReadFile(saDir + "/token")
	if err != nil {
		return "", err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		return "", errors.New(saDir + "/ca.crt holds no certificate")
	}
	rt := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}
	defer rt.CloseIdleConnections()
	got, body, err := get(ctx, rt, "https://kubernetes.default.svc/version", strings.TrimSpace(string(token)), http.StatusOK)
	if err != nil {
		return "", err
	}
	var v struct {
		GitVersion string `json:"gitVersion"`
	}
	if err := json.Unmarshal(body, &v); err != nil || v.GitVersion == "" {
		return "", fmt.Errorf("no gitVersion in /version (%v): %.200s", err, body)
	}
	return got + ", gitVersion " + v.GitVersion, nil
}
