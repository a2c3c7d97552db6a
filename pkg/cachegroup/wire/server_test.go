package wire

import (
	"bytes"
	"context"
	"encoding/hex"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/cas"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/metrics"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/volume"
)

var testSecret = []byte("0123456789abcdef-wire-test-secret")

// testBackend is a member with a store and a home of its own and nothing
// else: what a Server serves.
type testBackend struct {
	name    string
	store   *cas.Store
	home    *volume.Home
	mu      sync.Mutex
	holders map[cas.Digest][]string
	admin   Admin // nil: no admin routes
}

func (b *testBackend) Health() Health     { return Health{Name: b.name, Group: "g", Weight: 1} }
func (b *testBackend) Home() *volume.Home { return b.home }
func (b *testBackend) Store() *cas.Store  { return b.store }
func (b *testBackend) Admin() Admin       { return b.admin }

func (b *testBackend) MayServe(_ context.Context, d cas.Digest, _ bool) (string, error) {
	if !b.store.Has(d) {
		return "", cas.ErrNotFound
	}
	return "owner", nil
}

func (b *testBackend) AddHolder(root cas.Digest, member string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.holders[root] = append(b.holders[root], member)
}

func (b *testBackend) Holders(root cas.Digest) []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.holders[root])
}

// peer is a Server on loopback.
type peer struct {
	name    string
	addr    string
	b       *testBackend
	metrics *metrics.Set
}

// servePeer serves member name with auth on loopback until the test ends;
// tune, if given, sets the server's bounds.
func servePeer(t *testing.T, name string, auth *Auth, tune ...func(*Server)) *peer {
	t.Helper()
	dir := t.TempDir()
	st, err := cas.OpenStore(filepath.Join(dir, "store"), cas.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	home, err := volume.Open(st, filepath.Join(dir, "meta"))
	if err != nil {
		t.Fatal(err)
	}
	b := &testBackend{name: name, store: st, home: home, holders: map[cas.Digest][]string{}}
	m := metrics.New(st)
	s := NewServer(b, auth, m)
	for _, f := range tune {
		f(s)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.ListenAndServe(ctx, ln)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return &peer{name: name, addr: ln.Addr().String(), b: b, metrics: m}
}

// refused returns how many requests p refused for reason ("" for any).
func (p *peer) refused(t *testing.T, reason string) float64 {
	t.Helper()
	mfs, err := p.metrics.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var n float64
	for _, mf := range mfs {
		if mf.GetName() != "cachegroup_refused_requests_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if reason == "" || l.GetValue() == reason {
					n += m.GetCounter().GetValue()
				}
			}
		}
	}
	return n
}

// signedReq returns a request from member from to member to at addr, signed
// with auth.
func signedReq(t *testing.T, auth *Auth, method, addr, uri string, body []byte, from, to string) *http.Request {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+addr+uri, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	auth.Sign(req, from, to, cas.Sum(body))
	return req
}

// resend returns a copy of req, headers and all, with body instead.
func resend(t *testing.T, req *http.Request, body []byte) *http.Request {
	t.Helper()
	again, err := http.NewRequest(req.Method, req.URL.String(), bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	again.Header = req.Header.Clone()
	return again
}

// status sends req on a connection of its own and returns the answer's
// status.
func status(t *testing.T, req *http.Request) int {
	t.Helper()
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

func TestSignatureCoversTheBody(t *testing.T) {
	auth := NewSecretAuth(testSecret)
	p := servePeer(t, "member-a", auth)
	have := []byte(`["` + cas.Sum([]byte("x")).String() + `"]`)

	// The headers of a request to POST /v1/sizes, captured and sent with
	// another body: refused before the body is acted on.
	req := signedReq(t, auth, "POST", p.addr, "/v1/sizes", have, "member-b", "member-a")
	other := []byte(`["` + cas.Sum([]byte("y")).String() + `"]`)
	if code := status(t, resend(t, req, other)); code != http.StatusUnauthorized {
		t.Fatalf("captured headers with another body: %d, want 401", code)
	}
	if n := p.refused(t, reasonBadBodyDigest); n != 1 {
		t.Fatalf("refused as bad-body-digest: %v, want 1", n)
	}
	if code := status(t, signedReq(t, auth, "POST", p.addr, "/v1/sizes", have, "member-b", "member-a")); code != http.StatusOK {
		t.Fatalf("the signed body: %d", code)
	}

	// A blob's push is signed with the blob's digest: another body under
	// the same headers is refused by the store's check, and counted.
	blob := []byte("the blob")
	put := signedReq(t, auth, "PUT", p.addr, "/v1/blobs/"+cas.Sum(blob).String(), blob, "member-b", "member-a")
	if code := status(t, resend(t, put, []byte("not the blob"))); code != http.StatusUnprocessableEntity {
		t.Fatalf("a push with another body: %d, want 422", code)
	}
	if p.b.store.Has(cas.Sum(blob)) || p.refused(t, reasonBadBodyDigest) != 2 {
		t.Fatalf("a push with another body: stored %v, refused %v", p.b.store.Has(cas.Sum(blob)), p.refused(t, reasonBadBodyDigest))
	}
	// ... and the signature of one blob's push does not cover another's.
	wrong := []byte("another blob")
	moved := resend(t, put, wrong)
	moved.URL.Path = "/v1/blobs/" + cas.Sum(wrong).String()
	if code := status(t, moved); code != http.StatusUnauthorized {
		t.Fatalf("a push's headers for another blob: %d, want 401", code)
	}
	if code := status(t, signedReq(t, auth, "PUT", p.addr, "/v1/blobs/"+cas.Sum(blob).String(), blob, "member-b", "member-a")); code != http.StatusNoContent || !p.b.store.Has(cas.Sum(blob)) {
		t.Fatalf("the signed push: %d", code)
	}

	// The query is signed: a fetch cannot be made a pull-through.
	get := signedReq(t, auth, "GET", p.addr, "/v1/blobs/"+cas.Sum(blob).String(), nil, "member-b", "member-a")
	get.URL.RawQuery = "through=1"
	if code := status(t, get); code != http.StatusUnauthorized {
		t.Fatalf("a fetch's headers with another query: %d, want 401", code)
	}
}

func TestReplayIsRefused(t *testing.T) {
	auth := NewSecretAuth(testSecret)
	p := servePeer(t, "member-a", auth)
	req := signedReq(t, auth, "DELETE", p.addr, "/v1/volumes/"+volume.ID("v"), nil, "member-b", "member-a")
	if code := status(t, resend(t, req, nil)); code != http.StatusNoContent {
		t.Fatalf("first: %d", code)
	}
	for range 2 {
		if code := status(t, resend(t, req, nil)); code != http.StatusUnauthorized {
			t.Fatalf("replayed: %d, want 401", code)
		}
	}
	if n := p.refused(t, reasonReplay); n != 2 {
		t.Fatalf("refused as replays: %v, want 2", n)
	}
	// Signed anew, the same request is served.
	if code := status(t, signedReq(t, auth, "DELETE", p.addr, "/v1/volumes/"+volume.ID("v"), nil, "member-b", "member-a")); code != http.StatusNoContent {
		t.Fatalf("signed again: %d", code)
	}
}

func TestRequestForAnotherMemberIsRefused(t *testing.T) {
	auth := NewSecretAuth(testSecret)
	a := servePeer(t, "member-a", auth)
	b := servePeer(t, "member-b", auth)
	req := signedReq(t, auth, "GET", a.addr, "/v1/volumes", nil, "member-c", "member-a")
	toB := resend(t, req, nil)
	toB.URL.Host = b.addr
	if code := status(t, toB); code != http.StatusUnauthorized {
		t.Fatalf("a request for member-a sent to member-b: %d, want 401", code)
	}
	if n := b.refused(t, reasonWrongDestination); n != 1 {
		t.Fatalf("refused as for another member: %v, want 1", n)
	}
	if code := status(t, req); code != http.StatusOK {
		t.Fatalf("the request at member-a: %d", code)
	}
	// A member known by address alone may ask whom it reached, and nothing
	// else.
	if code := status(t, signedReq(t, auth, "GET", b.addr, healthPath, nil, "member-c", "")); code != http.StatusOK {
		t.Fatalf("health for no member in particular: %d", code)
	}
	if code := status(t, signedReq(t, auth, "GET", b.addr, "/v1/volumes", nil, "member-c", "")); code != http.StatusUnauthorized {
		t.Fatalf("volumes for no member in particular: %d, want 401", code)
	}
	h, err := NewClient("", b.addr, "member-c", auth).Health(context.Background())
	if err != nil || h.Name != "member-b" {
		t.Fatalf("a client of an address: %v %v", h, err)
	}
}

func TestStaleAndMalformedCredentialsAreRefused(t *testing.T) {
	auth := NewSecretAuth(testSecret)
	p := servePeer(t, "member-a", auth)
	// Signed three minutes ago: beyond the clock skew a request survives.
	old := signedReq(t, auth, "GET", p.addr, "/v1/volumes", nil, "member-b", "member-a")
	s, _, err := parseCredentials(old)
	if err != nil {
		t.Fatal(err)
	}
	s.ts = strconv.FormatInt(time.Now().Add(-maxSkew-time.Minute).Unix(), 10)
	old.Header.Set(hdrTime, s.ts)
	old.Header.Set(hdrAuth, hex.EncodeToString(s.mac(testSecret)))
	if code := status(t, old); code != http.StatusUnauthorized || p.refused(t, reasonStale) != 1 {
		t.Fatalf("a stale request: %d, refused as stale %v", code, p.refused(t, reasonStale))
	}
	for name, edit := range map[string]func(h http.Header){
		"no credentials":     func(h http.Header) { h.Del(hdrAuth) },
		"bad member name":    func(h http.Header) { h.Set(hdrMember, "Member_B") },
		"another member":     func(h http.Header) { h.Set(hdrMember, "member-c") },
		"no body digest":     func(h http.Header) { h.Del(hdrBody) },
		"short nonce":        func(h http.Header) { h.Set(hdrNonce, "00") },
		"time with a sign":   func(h http.Header) { h.Set(hdrTime, "+"+h.Get(hdrTime)) },
		"signature of junk":  func(h http.Header) { h.Set(hdrAuth, "zz") },
		"bad destination":    func(h http.Header) { h.Set(hdrTo, "-member-a") },
		"another secret mac": func(h http.Header) { h.Set(hdrAuth, h.Get(hdrAuth)[2:]+"00") },
	} {
		req := signedReq(t, auth, "GET", p.addr, "/v1/volumes", nil, "member-b", "member-a")
		edit(req.Header)
		if code := status(t, req); code != http.StatusUnauthorized {
			t.Errorf("%s: %d, want 401", name, code)
		}
	}
	if n := p.refused(t, reasonUnauthenticated); n != 9 {
		t.Fatalf("refused as unauthenticated: %v, want 9", n)
	}
}

// When it cannot remember one more nonce, a member refuses the request
// rather than forget a nonce whose request could still be replayed.
func TestFullNonceSetRefusesRatherThanForgets(t *testing.T) {
	auth := NewSecretAuth(testSecret)
	auth.nonces = newNonceSet(1)
	p := servePeer(t, "member-a", auth)
	first := signedReq(t, auth, "GET", p.addr, "/v1/volumes", nil, "member-b", "member-a")
	if code := status(t, resend(t, first, nil)); code != http.StatusOK {
		t.Fatalf("first: %d", code)
	}
	if code := status(t, signedReq(t, auth, "GET", p.addr, "/v1/volumes", nil, "member-b", "member-a")); code != http.StatusServiceUnavailable {
		t.Fatalf("second, with the set full: %d, want 503", code)
	}
	if code := status(t, resend(t, first, nil)); code != http.StatusUnauthorized {
		t.Fatalf("the first, replayed: %d, want 401", code)
	}
	if p.refused(t, reasonNoncesFull) != 1 || p.refused(t, reasonReplay) != 1 {
		t.Fatalf("refused: %v for a full set, %v as replays", p.refused(t, reasonNoncesFull), p.refused(t, reasonReplay))
	}
}
