package cachegroup

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
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/wire"
)

// writeCert makes a certificate for cn signed by ca (self-signed if ca is
// nil) and writes it and its key as PEM files in dir.
func writeCert(t *testing.T, dir, cn string, ca *x509.Certificate, caKey *ecdsa.PrivateKey) (*x509.Certificate, *ecdsa.PrivateKey, string, string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign}
	signer, signKey := tmpl, key
	if ca == nil {
		tmpl.IsCA, tmpl.BasicConstraintsValid = true, true
	} else {
		signer, signKey = ca, caKey
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signer, &key.PublicKey, signKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	kb, _ := x509.MarshalECPrivateKey(key)
	cp, kp := filepath.Join(dir, cn+".crt"), filepath.Join(dir, cn+".key")
	os.WriteFile(cp, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(kp, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600)
	return cert, key, cp, kp
}

func TestMutualTLSRefusesClientsWithoutACertOfTheGroup(t *testing.T) {
	dir := t.TempDir()
	ca, caKey, caFile, _ := writeCert(t, dir, "group-ca", nil, nil)
	_, _, srvCert, srvKey := writeCert(t, dir, "member-a", ca, caKey)
	_, _, cliCert, cliKey := writeCert(t, dir, "member-b", ca, caKey)
	other, otherKey, _, _ := writeCert(t, filepath.Join(dir), "other-ca", nil, nil)
	_, _, badCert, badKey := writeCert(t, dir, "intruder", other, otherKey)

	srvAuth, err := wire.NewAuth("", srvCert, srvKey, caFile)
	if err != nil {
		t.Fatal(err)
	}
	m, err := Open(Config{NodeID: "member-a", Dir: t.TempDir(), Group: "g", NoNodeTier: true, Auth: srvAuth})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go wire.NewServer(m, srvAuth, m.metrics).ListenAndServe(ctx, ln)

	good, err := wire.NewAuth("", cliCert, cliKey, caFile)
	if err != nil {
		t.Fatal(err)
	}
	if h, err := wire.NewClient("member-a", ln.Addr().String(), "member-b", good).Health(ctx); err != nil || h.Name != "member-a" {
		t.Fatalf("member of the group: %v %v", h, err)
	}
	bad, err := wire.NewAuth("", badCert, badKey, caFile)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := wire.NewClient("member-a", ln.Addr().String(), "intruder", bad).Health(ctx); err == nil {
		t.Fatal("a certificate of another CA was accepted")
	}
	// No client certificate at all.
	plain := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: good.TLS.RootCAs}}}
	if resp, err := plain.Get("https://" + ln.Addr().String() + "/v1/health"); err == nil {
		resp.Body.Close()
		t.Fatalf("no client certificate: %s", resp.Status)
	}
	// The server counts a failed handshake just after the client sees it.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		v := counterValue(t, m.Metrics(), "cachegroup_refused_requests_total")
		if v == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("refused counter %v, want 2", v)
		}
	}
}
