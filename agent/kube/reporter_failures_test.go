package kube

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"
)

// While the manager is unavailable the reporter backs off, keeps its Events and logs once;
// when it is back they are delivered and that is logged once.
func TestUnavailableThenBack(t *testing.T) {
	t.Parallel()
	m := newManager(t)
	down := true
	m.answer = func(n int) int {
		switch {
		case !down:
			return http.StatusOK
		case n < 3:
			return http.StatusServiceUnavailable
		default:
			return http.StatusTooManyRequests
		}
	}
	r, logs := newReporter(t, m, &statsBox{s: stats(100, 1, 5)}, nil)
	note(r, "e1")
	note(r, "e2")
	start(t, r)
	waitFor(t, "5 attempts", func() bool { return m.count() >= 5 })
	note(r, "e3")
	m.set(func(*fakeManager) { down = false })
	m.waitDelivered("e3")
	waitFor(t, "the recovery logged", func() bool { return logs.count("reachable again") > 0 })

	got := m.reports()
	backoff := r.o.InitialBackoff
	for i, g := range got {
		if g.status == http.StatusOK {
			break
		}
		if ev := eventStrings(g.rep.Events); len(ev) < 2 || !slices.Equal(ev[:2], notes("e", 1, 2)) {
			t.Errorf("attempt %d carried %q, want the queued Events", i, ev)
		}
		if g.rep.Stats == nil {
			t.Errorf("attempt %d without the stats never delivered", i)
		}
		// Each retry waits at least the backoff (doubling from InitialBackoff, capped).
		if gap := got[i+1].at.Sub(g.at); gap < backoff {
			t.Errorf("retry %d came %v after the failure, want at least %v", i+1, gap, backoff)
		}
		backoff = min(2*backoff, r.o.MaxBackoff)
	}
	if ev := m.delivered(); !slices.Equal(ev, notes("e", 1, 3)) {
		t.Errorf("delivered %q", ev)
	}
	if l := logs.matching(`"msg"="cannot report`); len(l) != 1 || !strings.Contains(l[0], "503 refused by the test (503)") ||
		strings.Contains(l[0], "second line") {
		t.Errorf("failure logged as %q, want one line with the first line of the answer", l)
	}
	if n := logs.count("now for another reason"); n != 1 {
		t.Errorf("503 then 429: the change logged %d times", n)
	}
	if n := logs.count("reachable again"); n != 1 {
		t.Errorf("recovery logged %d times", n)
	}
}

// 400 is the report's own fault: its Events are dropped (a retry cannot fix them), later ones go.
func TestBadReportDropsItsEvents(t *testing.T) {
	t.Parallel()
	m := newManager(t)
	r, logs := newReporter(t, m, &statsBox{s: stats(100, 1, 5)}, nil)
	m.answer = func(n int) int {
		if n == 0 {
			return http.StatusBadRequest
		}
		return http.StatusOK
	}
	m.onReport = func(n int) {
		if n == 0 {
			note(r, "e2") // queued while the bad report is in flight: not part of it
		}
	}
	note(r, "e1")
	start(t, r)
	m.waitDelivered("e2")
	got := m.reports()
	if ev := eventStrings(got[0].rep.Events); !slices.Equal(ev, notes("e", 1, 1)) {
		t.Errorf("first report carried %q", ev)
	}
	if ev := m.delivered(); !slices.Equal(ev, notes("e", 2, 2)) {
		t.Errorf("delivered %q, want only e2", ev)
	}
	if l := logs.matching("cannot report"); len(l) != 1 || !strings.Contains(l[0], "400") {
		t.Errorf("400 logged as %q", l)
	}
}

// A manager whose certificate does not chain to the injected CA is not reported to.
func TestManagerWithAnotherCAIsRefused(t *testing.T) {
	t.Parallel()
	m := newManager(t)
	r, logs := newReporter(t, m, &statsBox{s: stats(100, 1, 5)}, func(o *Options) { o.CA = anotherCA(t) })
	note(r, "e1")
	start(t, r)
	waitFor(t, "the TLS failure logged", func() bool { return logs.count("cannot report") > 0 })
	if l := logs.matching("cannot report"); len(l) != 1 || !strings.Contains(l[0], "certificate signed by unknown authority") {
		t.Errorf("logged %q, want the certificate error", l)
	}
	if n := m.count(); n != 0 {
		t.Errorf("%d reports reached a manager the agent does not trust", n)
	}
}

func anotherCA(t *testing.T) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "another CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, DNSNames: []string{"example.com"}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}
