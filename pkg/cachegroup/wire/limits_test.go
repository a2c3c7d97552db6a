package wire

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/cas"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/volume"
)

// dial opens a connection to addr.
func dial(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// head is the request line and headers of req, without the blank line that
// ends them.
func head(req *http.Request) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s HTTP/1.1\r\nHost: %s\r\n", req.Method, req.URL.RequestURI(), req.URL.Host)
	for k, vs := range req.Header {
		for _, v := range vs {
			fmt.Fprintf(&b, "%s: %s\r\n", k, v)
		}
	}
	return b.String()
}

// answer reads the answer on c within d.
func answer(t *testing.T, c net.Conn, br *bufio.Reader, d time.Duration) *http.Response {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(d))
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("no answer within %s: %v", d, err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}

// closedWithin checks that the server closes c within d.
func closedWithin(t *testing.T, c net.Conn, br *bufio.Reader, d time.Duration) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(d))
	_, err := br.ReadByte()
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("connection still open after %s", d)
	}
	if err == nil {
		t.Fatal("the server wrote more after its answer")
	}
}

func TestUnauthenticatedTrickleIsRefusedAtOnceAndClosed(t *testing.T) {
	p := servePeer(t, "member-a", NewSecretAuth(testSecret))
	c := dial(t, p.addr)
	fmt.Fprintf(c, "POST /v1/volumes HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
				if _, err := io.WriteString(c, "1\r\n{\r\n"); err != nil {
					return
				}
			}
		}
	}()
	br := bufio.NewReader(c)
	start := time.Now()
	if resp := answer(t, c, br, time.Second); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("a trickled unauthenticated POST: %s", resp.Status)
	}
	closedWithin(t, c, br, time.Second)
	if d := time.Since(start); d > time.Second {
		t.Fatalf("refused and closed after %s", d)
	}
	if n := p.refused(t, reasonUnauthenticated); n != 1 {
		t.Fatalf("refused %v, want 1", n)
	}
}

func TestIdleConnectionsAreClosed(t *testing.T) {
	auth := NewSecretAuth(testSecret)
	const bound = 300 * time.Millisecond
	p := servePeer(t, "member-a", auth, func(s *Server) { s.ReadHeaderTimeout, s.IdleTimeout = bound, bound })
	// A connection that never sends a request.
	c := dial(t, p.addr)
	closedWithin(t, c, bufio.NewReader(c), bound+time.Second)
	// A connection that waits after a request.
	c = dial(t, p.addr)
	req := signedReq(t, auth, "GET", p.addr, healthPath, nil, "member-b", "member-a")
	io.WriteString(c, head(req)+"\r\n")
	br := bufio.NewReader(c)
	if resp := answer(t, c, br, time.Second); resp.StatusCode != http.StatusOK {
		t.Fatalf("health: %s", resp.Status)
	}
	closedWithin(t, c, br, bound+time.Second)
}

func TestConnectionsOverTheCapAreClosedAtOnce(t *testing.T) {
	auth := NewSecretAuth(testSecret)
	p := servePeer(t, "member-a", auth, func(s *Server) { s.MaxConns = 2 })
	// open returns a connection the server has taken: it has answered on it.
	open := func() (net.Conn, *bufio.Reader) {
		c := dial(t, p.addr)
		io.WriteString(c, head(signedReq(t, auth, "GET", p.addr, healthPath, nil, "member-b", "member-a"))+"\r\n")
		br := bufio.NewReader(c)
		if resp := answer(t, c, br, 2*time.Second); resp.StatusCode != http.StatusOK {
			t.Fatalf("health: %s", resp.Status)
		}
		return c, br
	}
	first, _ := open()
	open()
	extra := dial(t, p.addr)
	start := time.Now()
	closedWithin(t, extra, bufio.NewReader(extra), time.Second)
	if d := time.Since(start); d > time.Second {
		t.Fatalf("the connection over the cap closed after %s", d)
	}
	if n := p.refused(t, reasonTooManyConns); n != 1 {
		t.Fatalf("refused as too many connections: %v, want 1", n)
	}
	// A connection closed gives its slot back.
	first.Close()
	for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		c := dial(t, p.addr)
		io.WriteString(c, head(signedReq(t, auth, "GET", p.addr, healthPath, nil, "member-b", "member-a"))+"\r\n")
		c.SetReadDeadline(time.Now().Add(time.Second))
		if resp, err := http.ReadResponse(bufio.NewReader(c), nil); err == nil && resp.StatusCode == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no slot after a connection closed")
		}
	}
}

// endless is a body that never ends; n counts the bytes read of it.
type endless struct{ n int64 }

func (e *endless) Read(b []byte) (int, error) {
	for i := range b {
		b[i] = ' '
	}
	e.n += int64(len(b))
	return len(b), nil
}

func TestBodiesOverTheirCapAre413WithoutBeingRead(t *testing.T) {
	auth := NewSecretAuth(testSecret)
	p := servePeer(t, "member-a", auth)
	id := volume.ID("v")
	// Said to be too large: refused on its headers.
	c := dial(t, p.addr)
	req := signedReq(t, auth, "PUT", p.addr, "/v1/volumes/"+id+"/head", nil, "member-b", "member-a")
	fmt.Fprintf(c, "%sContent-Length: %d\r\n\r\n{", head(req), 1<<30)
	br := bufio.NewReader(c)
	if resp := answer(t, c, br, time.Second); resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("a 1 GiB head: %s", resp.Status)
	}
	closedWithin(t, c, br, time.Second)

	// Chunked, of no said length: read up to the cap and no further.
	s := NewServer(p.b, auth, p.metrics)
	for _, path := range []string{"/v1/volumes/" + id + "/head", "/v1/volumes/" + id + "/commit", "/v1/volumes"} {
		body := &endless{}
		method := map[bool]string{true: "PUT", false: "POST"}[strings.HasSuffix(path, "/head")]
		r := httptest.NewRequest(method, path, body)
		auth.Sign(r, "member-b", "member-a", cas.Sum(nil))
		w := httptest.NewRecorder()
		s.Handler().ServeHTTP(w, r)
		max := int64(maxJSONBody)
		if strings.HasSuffix(path, "/commit") {
			max = MaxCommitBody
		}
		if w.Code != http.StatusRequestEntityTooLarge || body.n > max+64<<10 {
			t.Fatalf("%s, an endless body: %d after reading %d bytes, cap %d", path, w.Code, body.n, max)
		}
	}
	if n := p.refused(t, reasonTooLarge); n != 4 {
		t.Fatalf("refused as too large: %v, want 4", n)
	}
}

func TestBodyMemoryIsBounded(t *testing.T) {
	auth := NewSecretAuth(testSecret)
	var srv *Server
	p := servePeer(t, "member-a", auth, func(s *Server) {
		s.BodyMemory = maxJSONBody
		srv = s
	})
	id := volume.ID("v")
	// A holds all the room while its body comes.
	big := make([]byte, maxJSONBody)
	for i := range big {
		big[i] = ' '
	}
	copy(big[len(big)-2:], "{}")
	a := dial(t, p.addr)
	fmt.Fprintf(a, "%sContent-Length: %d\r\n\r\n", head(signedReq(t, auth, "PUT", p.addr, "/v1/volumes/"+id+"/head", big, "member-b", "member-a")), len(big))
	a.Write(big[:len(big)/2])
	for deadline := time.Now().Add(2 * time.Second); srv.bodies.TryAcquire(1); time.Sleep(10 * time.Millisecond) {
		srv.bodies.Release(1)
		if time.Now().After(deadline) {
			t.Fatal("the first body holds no room")
		}
	}
	// B waits for room; it is served once A's body is read.
	small := []byte(`{"id":"` + id + `"}`)
	bc := dial(t, p.addr)
	fmt.Fprintf(bc, "%sContent-Length: %d\r\n\r\n%s", head(signedReq(t, auth, "PUT", p.addr, "/v1/volumes/"+id+"/head", small, "member-b", "member-a")), len(small), small)
	bc.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	bbr := bufio.NewReader(bc)
	if _, err := bbr.Peek(1); !os.IsTimeout(err) {
		t.Fatalf("the second body was taken while the first held all the room: %v", err)
	}
	a.Write(big[len(big)/2:])
	if resp := answer(t, a, bufio.NewReader(a), 2*time.Second); resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("first: %s", resp.Status) // a head of no volume
	}
	if resp := answer(t, bc, bbr, 2*time.Second); resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("second: %s", resp.Status) // a head of no name
	}
}

func TestWhatTheHTTPServerRefusesIsCounted(t *testing.T) {
	p := servePeer(t, "member-a", NewSecretAuth(testSecret))
	c := dial(t, p.addr)
	fmt.Fprintf(c, "GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Padding: %s\r\n\r\n", strings.Repeat("x", 2*maxHeaderBytes))
	if resp := answer(t, c, bufio.NewReader(c), time.Second); resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Fatalf("headers of %d bytes: %s", 2*maxHeaderBytes, resp.Status)
	}
	if n := p.refused(t, reasonHeaderTooLarge); n != 1 {
		t.Fatalf("refused as headers too large: %v, want 1", n)
	}
	// What the HTTP server cannot read, it answers on its own: counted too.
	for _, req := range []string{"GET /v1/health HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
		"POST /v1/sizes HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", "GET /v1/health HTTP/7.0\r\n\r\n"} {
		c := dial(t, p.addr)
		io.WriteString(c, req)
		if resp := answer(t, c, bufio.NewReader(c), time.Second); resp.StatusCode < 400 {
			t.Fatalf("%q: %s", req, resp.Status)
		}
	}
	if n := p.refused(t, reasonMalformed); n != 3 {
		t.Fatalf("refused as malformed: %v, want 3", n)
	}
	// The member's own answers are not counted as such.
	auth := NewSecretAuth(testSecret)
	if code := status(t, signedReq(t, auth, "GET", p.addr, "/v1/volumes/vol-1", nil, "member-b", "member-a")); code != http.StatusBadRequest {
		t.Fatalf("a bad id: %d", code)
	}
	if n := p.refused(t, ""); n != 5 {
		t.Fatalf("refused %v in all, want 5", n)
	}
}

func TestTLSConnectionsAreBoundedAndCountedAlike(t *testing.T) {
	dir := t.TempDir()
	ca, caKey := writeCert(t, dir, "group-ca", nil, nil)
	writeCert(t, dir, "member-a", ca, caKey)
	writeCert(t, dir, "member-b", ca, caKey)
	authOf := func(name string) *Auth {
		a, err := NewAuth("", filepath.Join(dir, name+".crt"), filepath.Join(dir, name+".key"), filepath.Join(dir, "group-ca.crt"))
		if err != nil {
			t.Fatal(err)
		}
		return a
	}
	p := servePeer(t, "member-a", authOf("member-a"), func(s *Server) { s.ReadHeaderTimeout = 300 * time.Millisecond })
	b := authOf("member-b")
	if h, err := NewClient("member-a", p.addr, "member-b", b).Health(context.Background()); err != nil || h.Name != "member-a" {
		t.Fatalf("health over mutual TLS: %v %v", h, err)
	}
	c, err := tls.Dial("tcp", p.addr, b.clientTLS("127.0.0.1"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Padding: %s\r\n\r\n", strings.Repeat("x", 2*maxHeaderBytes))
	if resp := answer(t, c, bufio.NewReader(c), time.Second); resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Fatalf("headers of %d bytes over TLS: %s", 2*maxHeaderBytes, resp.Status)
	}
	if n := p.refused(t, reasonHeaderTooLarge); n != 1 {
		t.Fatalf("refused as headers too large: %v, want 1", n)
	}
	// A connection that never shakes hands is closed within the header bound.
	raw := dial(t, p.addr)
	closedWithin(t, raw, bufio.NewReader(raw), time.Second+300*time.Millisecond)
	// Counted just after the connection is closed.
	for deadline := time.Now().Add(2 * time.Second); p.refused(t, reasonTLS) != 1; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("refused as failed handshakes: %v, want 1", p.refused(t, reasonTLS))
		}
	}
}

// The bounds leave room for what members do: a large blob pushed as a
// stream of unknown length, fetched whole, in a range and in a batch.
func TestLargeBlobsStillMove(t *testing.T) {
	auth := NewSecretAuth(testSecret)
	p := servePeer(t, "member-a", auth)
	content := make([]byte, 24<<20+3)
	for i := range content {
		content[i] = byte(i * 31 / 7)
	}
	d := cas.Sum(content)
	path := filepath.Join(t.TempDir(), "blob")
	if err := os.WriteFile(path, content, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ctx := context.Background()
	cl := NewClient("member-a", p.addr, "member-b", auth)
	if err := cl.Push(ctx, d, f); err != nil {
		t.Fatal(err)
	}
	rc, err := cl.Fetch(ctx, d, true)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || !bytes.Equal(got, content) {
		t.Fatalf("fetched %d bytes, %v", len(got), err)
	}
	rc, err = cl.FetchRange(ctx, d, 1<<20, 5<<20)
	if err != nil {
		t.Fatal(err)
	}
	got, err = io.ReadAll(rc)
	rc.Close()
	if err != nil || !bytes.Equal(got, content[1<<20:6<<20]) {
		t.Fatalf("fetched a range of %d bytes, %v", len(got), err)
	}
	var n int64
	err = cl.FetchBatch(ctx, []cas.Ref{{Digest: d, Size: int64(len(content))}, {Digest: cas.Sum(nil)}}, true, func(ref cas.Ref, size int64, r io.Reader) error {
		m, err := io.Copy(io.Discard, r)
		n += m
		return err
	})
	if err != nil || n != int64(len(content)) {
		t.Fatalf("a batch: %d bytes, %v", n, err)
	}
}
