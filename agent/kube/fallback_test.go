package kube

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"
)

// TestFallbackAddrWhenTheNameDoesNotResolve: a pod whose DNS is not the cluster's cannot
// resolve the manager's Service name; the reporter then dials the Service's address and still
// verifies the certificate under the name.
func TestFallbackAddrWhenTheNameDoesNotResolve(t *testing.T) {
	const name = "manager.kong-watcher.invalid" // .invalid never resolves (RFC 6761)
	caPEM, cert := issue(t, name)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("{}"))
	}))
	var serving atomic.Pointer[tls.Certificate]
	serving.Store(&cert)
	srv.TLS = &tls.Config{GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return serving.Load(), nil }}
	srv.StartTLS()
	defer srv.Close()
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	url := "https://" + net.JoinHostPort(name, port) + "/report"

	post := func(c *http.Client) error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, url, nil)
		resp, err := c.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		return err
	}
	without, err := NewHTTPClient(caPEM, "", 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := post(without); err == nil {
		t.Fatal("without a fallback the unresolvable name must fail")
	}
	with, err := NewHTTPClient(caPEM, srv.Listener.Addr().String(), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := post(with); err != nil {
		t.Fatalf("with the fallback address: %v", err)
	}
	// The fallback is for names that do not resolve, never a way around verification: a
	// certificate for another name is refused there too.
	_, other := issue(t, "someone-else.invalid")
	serving.Store(&other)
	with.CloseIdleConnections()
	if err := post(with); err == nil {
		t.Fatal("a certificate for another name was accepted through the fallback")
	}
}

// issue makes a CA and a serving certificate for name; it returns the CA's PEM and the pair.
func issue(t *testing.T, name string) ([]byte, tls.Certificate) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ca := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true,
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leaf := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: name}, DNSNames: []string{name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, leaf, caCert, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}
