package wire

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/cas"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/tree"
	"k8s.io/klog/v2"
)

// The body caps of the routes. A commit carries at most a part's worth of
// ops inline (tree.PartOps), some 250 bytes of JSON each, and a larger one
// names its parts, blobs it stores at their owners: so no commit is too
// large for a request, and none holds more than a part in a member's
// memory. Every other JSON body is a head, a snapshot, a spec, or a list of
// at most a few thousand digests.
const (
	// MaxCommitBody is the largest commit a member takes, in bytes of JSON.
	MaxCommitBody = tree.MaxPartBytes
	maxJSONBody   = 1 << 20
)

// Bodies and responses must move at minRate on average once rateGrace has
// passed: slow enough for a congested node network, fast enough that a
// trickling caller cannot hold a connection for long.
const (
	minRate   = 256 << 10 // bytes a second
	rateGrace = 20 * time.Second
)

// bodyWait bounds how long a request waits for room to read its body in.
const bodyWait = 30 * time.Second

// allowed is how long n bytes may take to come or go.
func allowed(n int64) time.Duration {
	const most = 24 * time.Hour
	if n >= int64(most/time.Second)*minRate {
		return most
	}
	return rateGrace + time.Duration(n/minRate)*time.Second + time.Duration(n%minRate)*time.Second/minRate
}

type ctxKey int

const (
	credsKey   ctxKey = iota // the credentials of an authenticated request
	tlsConnKey               // the TLS connection a request came on
)

// creds are what an authenticated request was signed with.
type creds struct {
	from string
	body cas.Digest
}

// credsOf returns the credentials r was authenticated with.
func credsOf(r *http.Request) creds {
	c, _ := r.Context().Value(credsKey).(creds)
	return c
}

// authenticate refuses, and counts, requests without valid credentials. It
// decides on the headers, before any of the body is read.
func (s *Server) authenticate(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if tc, ok := r.Context().Value(tlsConnKey).(*tls.Conn); ok && r.TLS == nil {
			st := tc.ConnectionState() // TLS is done by the listener, see peerConn
			r.TLS = &st
		}
		from, body, err := s.auth.Verify(r, s.self)
		if err != nil {
			s.refuse(w, r, err)
			return
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), credsKey, creds{from: from, body: body})))
	})
}

// refusalStatus is the status a request refused for reason is answered with.
func refusalStatus(reason string) int {
	switch reason {
	case reasonTooLarge:
		return http.StatusRequestEntityTooLarge
	case reasonBusy, reasonNoncesFull:
		return http.StatusServiceUnavailable
	case reasonSlow:
		return http.StatusRequestTimeout
	case reasonBadRequest:
		return http.StatusBadRequest
	}
	return http.StatusUnauthorized
}

// count counts a refusal.
func (s *Server) count(reason string) { s.metrics.Refused.WithLabelValues(reason).Inc() }

// refuse answers, counts and logs a refused request and closes its
// connection without reading what is left of its body.
func (s *Server) refuse(w http.ResponseWriter, r *http.Request, err error) {
	reason := reasonOf(err)
	s.count(reason)
	klog.V(1).InfoS("Refused peer request", "remote", r.RemoteAddr, "method", r.Method, "path", r.URL.Path, "reason", reason, "error", err.Error())
	closeAfter(w)
	http.Error(w, "refused: "+err.Error(), refusalStatus(reason))
}

// closeAfter makes the server close r's connection after the answer
// instead of reading the rest of the body, however slowly it comes.
func closeAfter(w http.ResponseWriter) {
	w.Header().Set("Connection", "close")
	http.NewResponseController(w).SetReadDeadline(time.Now())
}

// readBody reads r's whole body, at most max bytes, holding room for it in
// the server's body memory, and checks that it is the body that was signed.
// If it cannot, it answers r itself and returns false; done gives the room
// back once what was decoded from the body is no longer needed.
func (s *Server) readBody(w http.ResponseWriter, r *http.Request, max int64) (b []byte, done func(), ok bool) {
	done = func() {}
	if r.ContentLength > max {
		s.refuse(w, r, refuse(reasonTooLarge, fmt.Errorf("a body of %d bytes; %s takes at most %d", r.ContentLength, r.URL.Path, max)))
		return nil, done, false
	}
	room := max // a chunked body may take its whole cap
	if r.ContentLength >= 0 {
		room = r.ContentLength
	}
	room = min(room, s.bodyMemory) // more than all the room would wait forever
	if room > 0 {
		ctx, cancel := context.WithTimeout(r.Context(), bodyWait)
		err := s.bodies.Acquire(ctx, room)
		cancel()
		if err != nil {
			s.refuse(w, r, refuse(reasonBusy, fmt.Errorf("no room for a body of %d bytes: %w", room, err)))
			return nil, done, false
		}
		done = func() { s.bodies.Release(room) }
	}
	b, err := s.readAll(w, r, max)
	if err == nil && cas.Sum(b) != credsOf(r).body {
		err = refuse(reasonBadBodyDigest, errors.New("the body is not the one signed"))
	}
	if err != nil {
		done()
		s.refuse(w, r, err)
		return nil, func() {}, false
	}
	return b, done, true
}

// readAll reads at most max bytes of r's body at minRate.
func (s *Server) readAll(w http.ResponseWriter, r *http.Request, max int64) ([]byte, error) {
	body := s.paced(w, http.MaxBytesReader(w, r.Body, max))
	var b []byte
	var err error
	if r.ContentLength >= 0 {
		b = make([]byte, r.ContentLength)
		_, err = io.ReadFull(body, b)
	} else {
		b, err = io.ReadAll(body)
	}
	// The read deadline is for the body only: a deadline left on the
	// connection would cancel the request's context once it passed.
	http.NewResponseController(w).SetReadDeadline(time.Time{})
	var tooLarge *http.MaxBytesError
	var ne net.Error
	switch {
	case err == nil:
		return b, nil
	case errors.As(err, &tooLarge):
		return nil, refuse(reasonTooLarge, fmt.Errorf("%s takes a body of at most %d bytes", r.URL.Path, max))
	case errors.As(err, &ne) && ne.Timeout():
		return nil, refuse(reasonSlow, fmt.Errorf("the body came slower than %d bytes a second", minRate))
	}
	return nil, refuse(reasonBadRequest, fmt.Errorf("reading the body: %w", err))
}

// paced returns body, failing if it comes slower than minRate on average.
func (s *Server) paced(w http.ResponseWriter, body io.Reader) io.Reader {
	return &pacedReader{r: body, rc: http.NewResponseController(w), start: time.Now()}
}

// pacedReader moves the connection's read deadline with the bytes read, so
// that a body may take allowed(its length) to come, however long it is.
type pacedReader struct {
	r     io.Reader
	rc    *http.ResponseController
	start time.Time
	n     int64
}

func (p *pacedReader) Read(b []byte) (int, error) {
	p.rc.SetReadDeadline(p.start.Add(allowed(p.n + int64(len(b)))))
	n, err := p.r.Read(b)
	p.n += int64(n)
	return n, err
}

// pacedWriter fails a response the caller takes slower than minRate: each
// write may take allowed(its length). It counts the bytes written and keeps
// ReaderFrom, so that a blob still goes out with sendfile.
type pacedWriter struct {
	http.ResponseWriter
	rc *http.ResponseController
	n  int64
}

func newPacedWriter(w http.ResponseWriter) *pacedWriter {
	return &pacedWriter{ResponseWriter: w, rc: http.NewResponseController(w)}
}

func (p *pacedWriter) Write(b []byte) (int, error) {
	p.rc.SetWriteDeadline(time.Now().Add(allowed(int64(len(b)))))
	n, err := p.ResponseWriter.Write(b)
	p.n += int64(n)
	return n, err
}

func (p *pacedWriter) ReadFrom(r io.Reader) (int64, error) {
	lr, ok := r.(*io.LimitedReader)
	rf, canRF := p.ResponseWriter.(io.ReaderFrom)
	if !ok || !canRF {
		// Of unknown length: write by write, each with its own deadline.
		return io.Copy(writerOnly{p}, r)
	}
	p.rc.SetWriteDeadline(time.Now().Add(allowed(lr.N)))
	n, err := rf.ReadFrom(lr)
	p.n += n
	return n, err
}

// writerOnly hides a writer's ReadFrom, so that io.Copy writes to it.
type writerOnly struct{ io.Writer }
