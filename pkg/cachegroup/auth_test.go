package cachegroup

import (
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/cas"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/wire"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/wire/wiretest"
)

// writeCert makes a certificate for cn signed by ca (self-signed if ca is
// nil) and writes it and its key as PEM files in dir.
func writeCert(t *testing.T, dir, cn string, ca *x509.Certificate, caKey *ecdsa.PrivateKey) (*x509.Certificate, *ecdsa.PrivateKey, string, string) {
	var signer *wiretest.Cert
	if ca != nil {
		signer = &wiretest.Cert{Cert: ca, Key: caKey}
	}
	c := wiretest.WriteCert(t, dir, cn, signer)
	return c.Cert, c.Key, c.CertFile, c.KeyFile
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
	// A certificate of the group speaks for its own member only.
	if _, err := wire.NewClient("member-a", ln.Addr().String(), "member-c", good).Health(ctx); err == nil {
		t.Fatal("member-b's certificate was accepted for member-c")
	}
	if v := counterValue(t, m.Metrics(), "cachegroup_refused_requests_total", "unauthenticated"); v != 1 {
		t.Fatalf("refused as unauthenticated %v, want 1", v)
	}
}

// openWithSecret opens and runs member name with the secret file secret,
// serving its peers on loopback, and returns its peer address.
func openWithSecret(t *testing.T, name, secret string) (*Member, string) {
	t.Helper()
	m := runMember(t, Config{NodeID: name, Dir: t.TempDir(), Group: "g", NoNodeTier: true, PeerSecretFile: secret,
		PeerAddress: "127.0.0.1:0", Members: []string{"member-x=127.0.0.1:1"}})
	return m, m.peerL.Addr().String()
}

// writeSecret replaces the secret file at path, as a Secret volume does.
func writeSecret(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path+".new", []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".new", path); err != nil {
		t.Fatal(err)
	}
}

// until polls cond for a few seconds.
func until(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 5s", what)
		}
	}
}

// Members move to a new secret one at a time, without a restart: the file
// holds the new and the old secret while they do, then the new one alone.
func TestSecretRotationOneMemberAtATime(t *testing.T) {
	const s1, s2 = "first-group-secret-0123456789", "second-group-secret-0123456789"
	dir := t.TempDir()
	files := map[string]string{}
	for _, n := range []string{"member-a", "member-b", "member-c"} {
		files[n] = filepath.Join(dir, n+".secret")
		writeSecret(t, files[n], s1+"\n")
	}
	a, addrA := openWithSecret(t, "member-a", files["member-a"])
	b, _ := openWithSecret(t, "member-b", files["member-b"])
	c, _ := openWithSecret(t, "member-c", files["member-c"])
	ctx := context.Background()
	from := func(m *Member) error {
		_, err := wire.NewClient("member-a", addrA, m.cfg.NodeID, m.auth).Health(ctx)
		return err
	}
	if from(b) != nil || from(c) != nil {
		t.Fatalf("with one secret: %v, %v", from(b), from(c))
	}

	// A and C take the new secret and keep the old one.
	writeSecret(t, files["member-a"], s2+"\n"+s1+"\n")
	writeSecret(t, files["member-c"], s2+"\n"+s1+"\n")
	onS2 := wire.NewClient("member-a", addrA, "member-d", wire.NewSecretAuth([]byte(s2)))
	until(t, "A accepts the new secret", func() bool { _, err := onS2.Health(ctx); return err == nil })
	if err := from(b); err != nil {
		t.Fatalf("B, still on the old secret: %v", err)
	}
	if err := from(c); err != nil {
		t.Fatalf("C, on the new secret: %v", err)
	}

	// A drops the old secret: B, still on it, is refused; C signs with the
	// new one.
	writeSecret(t, files["member-a"], s2+"\n")
	refusedBefore := counterValue(t, a.Metrics(), "cachegroup_refused_requests_total", "unauthenticated")
	until(t, "A refuses the old secret", func() bool { return from(b) != nil })
	if err := from(c); err != nil {
		t.Fatalf("C, on the new secret, after A dropped the old one: %v", err)
	}
	if v := counterValue(t, a.Metrics(), "cachegroup_refused_requests_total", "unauthenticated"); v <= refusedBefore {
		t.Fatalf("A's refusals of the old secret were not counted (%v)", v)
	}
}

// A request captured on its way to one member is refused by another and,
// replayed, by the member it was for.
func TestGroupRefusesRequestsForAnotherMemberAndReplays(t *testing.T) {
	ms := newGroup(t, 2)
	auth := wire.NewSecretAuth(testSecret)
	req, err := http.NewRequest("GET", "http://"+ms[0].addr+"/v1/volumes", nil)
	if err != nil {
		t.Fatal(err)
	}
	auth.Sign(req, "node-x", ms[0].name, cas.Sum(nil))
	send := func(addr string) int {
		t.Helper()
		again, _ := http.NewRequest("GET", "http://"+addr+"/v1/volumes", nil)
		again.Header = req.Header.Clone()
		resp, err := http.DefaultClient.Do(again)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := send(ms[1].addr); code != http.StatusUnauthorized {
		t.Fatalf("signed for %s, sent to %s: %d", ms[0].name, ms[1].name, code)
	}
	if v := counterValue(t, ms[1].Metrics(), "cachegroup_refused_requests_total", "wrong-destination"); v != 1 {
		t.Fatalf("refused as for another member: %v", v)
	}
	if code := send(ms[0].addr); code != http.StatusOK {
		t.Fatalf("at the member it is for: %d", code)
	}
	if code := send(ms[0].addr); code != http.StatusUnauthorized {
		t.Fatalf("replayed: %d", code)
	}
	if v := counterValue(t, ms[0].Metrics(), "cachegroup_refused_requests_total", "replay"); v != 1 {
		t.Fatalf("refused as replays: %v", v)
	}
}
