package wire

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/wire/wiretest"
)

// eventually polls cond for a few reload intervals.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * reloadInterval); !cond(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s", what, 5*reloadInterval)
		}
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	// Written aside and renamed in, as a Kubernetes Secret volume does.
	tmp := path + ".new"
	if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func TestSecretFileHoldsTheCurrentAndThePreviousSecret(t *testing.T) {
	const s1, s2 = "first-secret-0123456789", "second-secret-0123456789"
	file := filepath.Join(t.TempDir(), "secret")
	writeFile(t, file, s1+"\n")
	s, err := newSecrets(file)
	if err != nil {
		t.Fatal(err)
	}
	keys := func() []string {
		var out []string
		for _, k := range s.get() {
			out = append(out, string(k))
		}
		return out
	}
	if got := keys(); !slices.Equal(got, []string{s1}) {
		t.Fatalf("secrets %q", got)
	}
	writeFile(t, file, s2+"\n"+s1+"\n")
	eventually(t, "the second secret", func() bool { return slices.Equal(keys(), []string{s2, s1}) })
	// A file that cannot be used keeps the secrets as they were.
	writeFile(t, file, "short\n")
	time.Sleep(2 * reloadInterval)
	if got := keys(); !slices.Equal(got, []string{s2, s1}) {
		t.Fatalf("after a bad file: %q", got)
	}
	writeFile(t, file, s2)
	eventually(t, "the second secret alone", func() bool { return slices.Equal(keys(), []string{s2}) })

	for content, want := range map[string]string{
		"":                         "no secret",
		"short":                    "shorter",
		s1 + "\nshort":             "shorter",
		s1 + "\n" + s2 + "\n" + s1: "at most",
	} {
		writeFile(t, file, content)
		if _, err := newSecrets(file); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("secret file %q: %v, want %q", content, err, want)
		}
	}
}

// writeCert makes a certificate for cn signed by ca (self-signed if ca is
// nil) and writes it and its key as PEM files in dir.
func writeCert(t *testing.T, dir, cn string, ca *x509.Certificate, caKey *ecdsa.PrivateKey) (*x509.Certificate, *ecdsa.PrivateKey) {
	var signer *wiretest.Cert
	if ca != nil {
		signer = &wiretest.Cert{Cert: ca, Key: caKey}
	}
	c := wiretest.WriteCert(t, dir, cn, signer)
	return c.Cert, c.Key
}

func TestCertificatesReloadWhenTheirFilesChange(t *testing.T) {
	dir := t.TempDir()
	ca, caKey := writeCert(t, dir, "group-ca", nil, nil)
	first, _ := writeCert(t, dir, "member-a", ca, caKey)
	c, err := newCertFiles(filepath.Join(dir, "member-a.crt"), filepath.Join(dir, "member-a.key"), filepath.Join(dir, "group-ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	cfg := c.tlsConfig()
	served := func() *x509.Certificate {
		cert, err := cfg.GetCertificate(&tls.ClientHelloInfo{})
		if err != nil {
			t.Fatal(err)
		}
		leaf, _ := x509.ParseCertificate(cert.Certificate[0])
		return leaf
	}
	if !served().Equal(first) {
		t.Fatal("not the certificate loaded")
	}
	second, _ := writeCert(t, dir, "member-a", ca, caKey)
	eventually(t, "the new certificate", func() bool { return served().Equal(second) })
	cc, err := cfg.GetClientCertificate(&tls.CertificateRequestInfo{})
	if err != nil || !bytes.Equal(cc.Certificate[0], second.Raw) {
		t.Fatalf("client certificate not reloaded: %v", err)
	}
	// A new CA: the server verifies clients against it.
	newCA, _ := writeCert(t, dir, "group-ca", nil, nil)
	eventually(t, "the new CA", func() bool {
		sc, err := cfg.GetConfigForClient(&tls.ClientHelloInfo{})
		if err != nil {
			t.Fatal(err)
		}
		_, err = newCA.Verify(x509.VerifyOptions{Roots: sc.ClientCAs})
		return err == nil
	})
	if _, err := newCA.Verify(x509.VerifyOptions{Roots: c.clientConfig("member-b").RootCAs}); err != nil {
		t.Fatalf("a client does not dial with the new CA: %v", err)
	}
}
