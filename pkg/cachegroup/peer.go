package cachegroup

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// The peer protocol is HTTP/1.1 on the host network, one request per
// operation, authenticated by Auth:
//
//	GET    /v1/health                   the member's name and weight
//	GET    /v1/blobs/{digest}           a blob, ranged; sendfile on plain TCP
//	POST   /v1/blobs                    many blobs in one framed stream
//	HEAD   /v1/blobs/{digest}           whether the member has (and offers) it
//	PUT    /v1/blobs/{digest}           store a blob; verified before it is kept
//	POST   /v1/blobs/{digest}/verify    re-hash a copy a peer found wrong; drop it if so
//	POST   /v1/have                     which of a list of blobs the member holds
//	GET    /v1/volumes[/{id}]           heads
//	POST   /v1/volumes                  create (VolumeSpec)
//	DELETE /v1/volumes/{id}
//	POST   /v1/volumes/{id}/expand      raise the quota
//	POST   /v1/volumes/{id}/commit      apply a Commit
//	PUT    /v1/volumes/{id}/head        a replicated head (kept if newer)
//	GET    /v1/snapshots[/{id}], DELETE /v1/snapshots/{id}
//	PUT    /v1/snapshots/{id}           a replicated snapshot
//	GET    /v1/holders/{root}, POST /v1/holders/{root}  sharing nodes of a snapshot

// Health is what a member says of itself.
type Health struct {
	Name   string  `json:"name"`
	Group  string  `json:"group"`
	Weight float64 `json:"weight"`
}

// errStatus maps the sentinel errors to HTTP statuses and back.
var errStatuses = []struct {
	err  error
	code int
}{
	{ErrNotFound, http.StatusNotFound},
	{ErrExists, http.StatusConflict},
	{ErrTooLarge, http.StatusRequestEntityTooLarge},
	{ErrNoSpace, http.StatusInsufficientStorage},
	{ErrUnavailable, http.StatusServiceUnavailable},
	{ErrCorrupt, http.StatusUnprocessableEntity},
	{errNotOffered, http.StatusGone},
}

var errNotOffered = errors.New("blob is a private node copy")

// errRemote is an error a peer answered with.
type errRemote struct {
	code int
	msg  string
}

func (e *errRemote) Error() string { return e.msg }

func (e *errRemote) Unwrap() error {
	for _, s := range errStatuses {
		if s.code == e.code {
			return s.err
		}
	}
	return nil
}

// Server serves this member to its peers.
type Server struct {
	group   *Group
	auth    *Auth
	metrics *Metrics
	// Offer decides whether a blob this member holds but does not own may
	// be served: node copies of no-sharing mounts never are.
	Offer func(d Digest) bool
	// Through, if set, fetches a blob this member does not have yet because
	// it is hydrating a shared snapshot that holds it (pull-through).
	Through func(ctx context.Context, d Digest) bool
}

// NewServer returns the peer server of g's local member.
func NewServer(g *Group, auth *Auth) *Server {
	return &Server{group: g, auth: auth, metrics: g.Metrics()}
}

// Handler returns the server's HTTP handler.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	l := s.group.Local()
	mux.HandleFunc("GET /v1/health", func(w http.ResponseWriter, r *http.Request) {
		writeJSONResponse(w, Health{Name: l.Name(), Group: s.group.Name(), Weight: s.group.Weight()}, nil)
	})
	mux.HandleFunc("GET /v1/blobs/{digest}", s.serveBlob)
	mux.HandleFunc("POST /v1/blobs", s.serveBatch)
	mux.HandleFunc("HEAD /v1/blobs/{digest}", s.serveBlob)
	mux.HandleFunc("PUT /v1/blobs/{digest}", func(w http.ResponseWriter, r *http.Request) {
		d, err := ParseDigest(r.PathValue("digest"))
		if err == nil {
			err = l.Push(r.Context(), d, r.Body)
		}
		if errors.Is(err, ErrCorrupt) {
			s.metrics.Corrupt.Inc()
		}
		writeJSONResponse(w, nil, err)
	})
	mux.HandleFunc("POST /v1/blobs/{digest}/verify", func(w http.ResponseWriter, r *http.Request) {
		d, err := ParseDigest(r.PathValue("digest"))
		if err == nil {
			err = l.Store().Verify(d)
		}
		if errors.Is(err, ErrCorrupt) {
			s.metrics.Corrupt.Inc()
			klog.ErrorS(err, "A peer reported a corrupt copy; dropped it", "blob", d, "peer", r.Header.Get("X-Cachegroup-Member"))
			err = nil // dropped: the caller may push a good copy now
		}
		writeJSONResponse(w, nil, err)
	})
	mux.HandleFunc("POST /v1/have", func(w http.ResponseWriter, r *http.Request) {
		var ds []Digest
		if !readJSON(w, r, &ds) {
			return
		}
		has := make([]bool, len(ds))
		for i, d := range ds {
			has[i] = l.Store().Has(d)
		}
		writeJSONResponse(w, has, nil)
	})
	mux.HandleFunc("GET /v1/volumes", func(w http.ResponseWriter, r *http.Request) {
		vs, err := l.allVolumes()
		writeJSONResponse(w, vs, err)
	})
	mux.HandleFunc("GET /v1/volumes/{id}", func(w http.ResponseWriter, r *http.Request) {
		v, err := l.Volume(r.Context(), r.PathValue("id"))
		writeJSONResponse(w, v, err)
	})
	mux.HandleFunc("POST /v1/volumes", func(w http.ResponseWriter, r *http.Request) {
		var spec VolumeSpec
		if !readJSON(w, r, &spec) {
			return
		}
		v, err := l.CreateVolume(r.Context(), spec)
		writeJSONResponse(w, v, err)
	})
	mux.HandleFunc("DELETE /v1/volumes/{id}", func(w http.ResponseWriter, r *http.Request) {
		writeJSONResponse(w, nil, l.DeleteVolume(r.Context(), r.PathValue("id")))
	})
	mux.HandleFunc("POST /v1/volumes/{id}/expand", func(w http.ResponseWriter, r *http.Request) {
		var q struct{ Quota int64 }
		if !readJSON(w, r, &q) {
			return
		}
		v, err := l.ExpandVolume(r.Context(), r.PathValue("id"), q.Quota)
		writeJSONResponse(w, v, err)
	})
	mux.HandleFunc("POST /v1/volumes/{id}/commit", func(w http.ResponseWriter, r *http.Request) {
		var c Commit
		if !readJSON(w, r, &c) {
			return
		}
		res, err := l.Commit(r.Context(), r.PathValue("id"), &c)
		writeJSONResponse(w, res, err)
	})
	mux.HandleFunc("PUT /v1/volumes/{id}/head", func(w http.ResponseWriter, r *http.Request) {
		var v Volume
		if !readJSON(w, r, &v) {
			return
		}
		writeJSONResponse(w, nil, l.PutHead(r.Context(), v))
	})
	mux.HandleFunc("GET /v1/snapshots", func(w http.ResponseWriter, r *http.Request) {
		ss, err := l.Snapshots(r.Context())
		writeJSONResponse(w, ss, err)
	})
	mux.HandleFunc("GET /v1/snapshots/{id}", func(w http.ResponseWriter, r *http.Request) {
		sn, err := l.Snapshot(r.Context(), r.PathValue("id"))
		writeJSONResponse(w, sn, err)
	})
	mux.HandleFunc("PUT /v1/snapshots/{id}", func(w http.ResponseWriter, r *http.Request) {
		var sn Snapshot
		if !readJSON(w, r, &sn) {
			return
		}
		writeJSONResponse(w, nil, l.PutSnapshot(r.Context(), sn))
	})
	mux.HandleFunc("DELETE /v1/snapshots/{id}", func(w http.ResponseWriter, r *http.Request) {
		writeJSONResponse(w, nil, l.DeleteSnapshot(r.Context(), r.PathValue("id")))
	})
	mux.HandleFunc("GET /v1/holders/{root}", func(w http.ResponseWriter, r *http.Request) {
		writeJSONResponse(w, l.holders.list(r.PathValue("root")), nil)
	})
	mux.HandleFunc("POST /v1/holders/{root}", func(w http.ResponseWriter, r *http.Request) {
		var q struct{ Member string }
		if !readJSON(w, r, &q) {
			return
		}
		l.holders.add(r.PathValue("root"), q.Member)
		writeJSONResponse(w, nil, nil)
	})
	return s.authenticate(mux)
}

// authenticate refuses, and counts, requests without valid credentials.
func (s *Server) authenticate(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, err := s.auth.Verify(r); err != nil {
			s.metrics.Refused.WithLabelValues("unauthenticated").Inc()
			klog.V(1).InfoS("Refused peer request", "remote", r.RemoteAddr, "path", r.URL.Path, "reason", err.Error())
			http.Error(w, "refused: "+err.Error(), http.StatusUnauthorized)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// mayServe says whether this member may serve blob d, and as what: as its
// owner, or as a sharing peer (pulling it through from the owners if asked
// and hydrating). Node copies of no-sharing mounts are never served.
func (s *Server) mayServe(ctx context.Context, d Digest, through bool) (string, error) {
	if s.group.IsOwner(d) {
		return "owner", nil
	}
	if !s.group.Local().Store().Has(d) && through && s.Through != nil && s.Through(ctx, d) {
		return "peer", nil // fetched through from the owners for a node that shares with us
	}
	if s.Offer != nil && !s.Offer(d) {
		return "peer", fmt.Errorf("blob %s: %w", d, errNotOffered)
	}
	return "peer", nil
}

// serveBlob serves one blob, ranged.
func (s *Server) serveBlob(w http.ResponseWriter, r *http.Request) {
	d, err := ParseDigest(r.PathValue("digest"))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	as, err := s.mayServe(r.Context(), d, r.Header.Get("X-Cachegroup-Through") != "")
	var f *os.File
	if err == nil {
		f, err = s.group.Local().Store().Open(d)
	}
	if err != nil {
		writeJSONResponse(w, nil, err)
		return
	}
	defer f.Close()
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("X-Cachegroup-Served-As", as)
	cw := &countingWriter{ResponseWriter: w}
	// ServeContent handles Range and uses sendfile from the file to the socket.
	http.ServeContent(cw, r, "", time.Time{}, f)
	s.metrics.ServedBytes.WithLabelValues(as).Add(float64(cw.n))
}

// maxBatch bounds the blobs one batch request asks for.
const maxBatch = 4096

// refLen is the length of a blob named in a batch request: its digest and
// its size as the asker knows it (0 if it does not).
const refLen = len(Digest{}) + 8

// serveBatch streams many blobs in one response. The request names each blob
// by digest and expected size; the response frames each as its digest, its
// length (-1: not served here) and its bytes. One round trip for many blobs
// and a known size (no stat) make small-file hydration fast. Small blobs are
// read a few at a time ahead of the one being sent, so that a cold page cache
// costs one disk wait for several of them, not one each.
func (s *Server) serveBatch(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, int64(maxBatch*refLen+1)))
	if err != nil || len(body)%refLen != 0 || len(body) > maxBatch*refLen {
		http.Error(w, fmt.Sprintf("a batch names 1 to %d blobs of %d bytes each", maxBatch, refLen), http.StatusBadRequest)
		return
	}
	through := r.Header.Get("X-Cachegroup-Through") != ""
	items := make([]*outgoing, len(body)/refLen)
	for i := range items {
		ref := body[i*refLen : (i+1)*refLen]
		items[i] = &outgoing{d: Digest(ref[:len(Digest{})]), size: int64(binary.BigEndian.Uint64(ref[len(Digest{}):])), ready: make(chan struct{})}
	}
	quit := make(chan struct{})
	defer close(quit)
	ahead := make(chan struct{}, readAhead)
	go func() {
		for _, it := range items {
			select {
			case ahead <- struct{}{}:
			case <-quit:
				return
			}
			go s.prepare(r.Context(), it, through)
		}
	}()

	w.Header().Set("Content-Type", "application/octet-stream")
	cw := &countingWriter{ResponseWriter: w}
	bw := bufio.NewWriterSize(cw, 256<<10)
	buf := make([]byte, 64<<10)
	served := map[string]int64{}
	for _, it := range items {
		<-it.ready
		<-ahead
		var n int64
		switch {
		case it.err != nil:
			err = writeHeader(bw, it.d, -1)
		case it.data != nil:
			if err = writeHeader(bw, it.d, int64(len(it.data))); err == nil {
				_, err = bw.Write(it.data)
				n = int64(len(it.data))
			}
		default:
			n, err = s.writeFrame(bw, it.d, buf)
		}
		if err != nil {
			return // the client sees a short frame and fails this batch
		}
		served[it.as] += n
	}
	bw.Flush()
	for as, n := range served {
		s.metrics.ServedBytes.WithLabelValues(as).Add(float64(n))
	}
}

// readAhead bounds the blobs a batch prepares ahead of the one it sends;
// aheadMax is the largest blob read ahead into memory (larger ones are
// streamed when their turn comes).
const (
	readAhead = 16
	aheadMax  = 256 << 10
)

// outgoing is one blob of a batch response being prepared.
type outgoing struct {
	d     Digest
	size  int64         // as the asker expects it; 0 if unknown
	ready chan struct{} // closed when what follows is set
	as    string        // served as owner or peer
	err   error         // not served
	data  []byte        // the blob, read ahead; nil to stream it
}

// prepare decides whether it may be served and, if it is small, reads it
// (a file of another size than expected is sent as it is, for the asker to
// reject).
func (s *Server) prepare(ctx context.Context, it *outgoing, through bool) {
	defer close(it.ready)
	if it.as, it.err = s.mayServe(ctx, it.d, through); it.err != nil || it.size <= 0 || it.size > aheadMax {
		return
	}
	it.data, it.err = readFile(s.group.Local().Store().Path(it.d), it.size)
}

// writeFrame streams blob d as one frame of a batch response, or a "not
// here" frame if this member lacks it.
func (s *Server) writeFrame(w *bufio.Writer, d Digest, buf []byte) (int64, error) {
	fd, err := unix.Open(s.group.Local().Store().Path(d), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, writeHeader(w, d, -1)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return 0, writeHeader(w, d, -1)
	}
	if err := writeHeader(w, d, st.Size); err != nil {
		return 0, err
	}
	n, err := io.CopyBuffer(w, io.LimitReader(fdReader(fd), st.Size), buf)
	if err == nil && n != st.Size {
		err = io.ErrUnexpectedEOF
	}
	return n, err
}

func writeHeader(w io.Writer, d Digest, size int64) error {
	var hdr [refLen]byte
	copy(hdr[:], d[:])
	binary.BigEndian.PutUint64(hdr[len(d):], uint64(size))
	_, err := w.Write(hdr[:])
	return err
}

// readFull reads from fd until b is full or a read comes back short, which
// for a regular file means its end.
func readFull(fd int, b []byte) (int, error) {
	n := 0
	for n < len(b) {
		k, err := unix.Read(fd, b[n:])
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return n, err
		}
		n += k
		if k == 0 || n < len(b) {
			break
		}
	}
	return n, nil
}

// fdReader reads from a file descriptor.
type fdReader int

func (r fdReader) Read(b []byte) (int, error) {
	for {
		n, err := unix.Read(int(r), b)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return 0, err
		}
		if n == 0 && len(b) > 0 {
			return 0, io.EOF
		}
		return n, nil
	}
}

// countingWriter counts body bytes while keeping ReaderFrom (sendfile).
type countingWriter struct {
	http.ResponseWriter
	n int64
}

func (c *countingWriter) Write(b []byte) (int, error) {
	n, err := c.ResponseWriter.Write(b)
	c.n += int64(n)
	return n, err
}

func (c *countingWriter) ReadFrom(r io.Reader) (int64, error) {
	n, err := c.ResponseWriter.(io.ReaderFrom).ReadFrom(r)
	c.n += n
	return n, err
}

func readJSON(w http.ResponseWriter, r *http.Request, v any) bool {
	if err := json.NewDecoder(io.LimitReader(r.Body, 256<<20)).Decode(v); err != nil {
		http.Error(w, "bad request body: "+err.Error(), http.StatusBadRequest)
		return false
	}
	return true
}

func writeJSONResponse(w http.ResponseWriter, v any, err error) {
	if err != nil {
		code := http.StatusInternalServerError
		for _, s := range errStatuses {
			if errors.Is(err, s.err) {
				code = s.code
				break
			}
		}
		http.Error(w, err.Error(), code)
		return
	}
	if v == nil {
		w.WriteHeader(http.StatusNoContent)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v)
}

// Remote is another member, reached over the peer protocol.
type Remote struct {
	name, addr string
	self       string // this member's name, sent with every request
	auth       *Auth
	client     *http.Client
	scheme     string
}

var _ Peer = (*Remote)(nil)

// NewRemote returns the member called name at addr (host:port).
func NewRemote(name, addr, self string, auth *Auth) *Remote {
	tr := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 3 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     90 * time.Second,
		// A peer pulling a blob through for us answers within its own bound.
		ResponseHeaderTimeout: throughTimeout + time.Minute,
		TLSClientConfig:       auth.TLS,
		WriteBufferSize:       256 << 10,
		ReadBufferSize:        256 << 10,
	}
	scheme := "http"
	if auth.TLS != nil {
		scheme = "https"
	}
	return &Remote{name: name, addr: addr, self: self, auth: auth, client: &http.Client{Transport: tr}, scheme: scheme}
}

// Name returns the member's identity.
func (r *Remote) Name() string { return r.name }

func (r *Remote) do(ctx context.Context, method, path string, in, out any, hdr ...string) (*http.Response, error) {
	var body io.Reader
	if rd, ok := in.(io.Reader); ok {
		body = rd
	} else if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return nil, err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, r.scheme+"://"+r.addr+path, body)
	if err != nil {
		return nil, err
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	r.auth.Sign(req, r.self)
	resp, err := r.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("member %s: %w", r.name, err)
	}
	if resp.StatusCode >= 300 {
		defer resp.Body.Close()
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return nil, &errRemote{code: resp.StatusCode, msg: fmt.Sprintf("member %s: %s: %s", r.name, resp.Status, bytes.TrimSpace(msg))}
	}
	if out == nil {
		return resp, nil
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return nil, fmt.Errorf("member %s: %s %s: %w", r.name, method, path, err)
	}
	return resp, nil
}

func (r *Remote) call(ctx context.Context, method, path string, in, out any) error {
	resp, err := r.do(ctx, method, path, in, out)
	if err == nil && out == nil {
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	return err
}

// Health asks the member who it is.
func (r *Remote) Health(ctx context.Context) (Health, error) {
	var h Health
	err := r.call(ctx, "GET", "/v1/health", nil, &h)
	return h, err
}

// Fetch streams blob d from the member; the caller verifies it.
func (r *Remote) Fetch(ctx context.Context, d Digest) (io.ReadCloser, error) {
	return r.fetch(ctx, d, false)
}

// FetchThrough is Fetch that lets a sharing peer fetch the blob from its
// owners first if it does not have it yet.
func (r *Remote) FetchThrough(ctx context.Context, d Digest) (io.ReadCloser, error) {
	return r.fetch(ctx, d, true)
}

func (r *Remote) fetch(ctx context.Context, d Digest, through bool) (io.ReadCloser, error) {
	var hdr []string
	if through {
		hdr = []string{"X-Cachegroup-Through", "1"}
	}
	resp, err := r.do(ctx, "GET", "/v1/blobs/"+d.String(), nil, nil, hdr...)
	if err != nil {
		return nil, err
	}
	return resp.Body, nil
}

// FetchRange streams n bytes of blob d from offset off; the caller verifies
// the whole blob.
func (r *Remote) FetchRange(ctx context.Context, d Digest, off, n int64) (io.ReadCloser, error) {
	resp, err := r.do(ctx, "GET", "/v1/blobs/"+d.String(), nil, nil, "Range", fmt.Sprintf("bytes=%d-%d", off, off+n-1))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusPartialContent || resp.ContentLength != n {
		resp.Body.Close()
		return nil, fmt.Errorf("member %s: range %d-%d of blob %s: got %s, %d bytes", r.name, off, off+n-1, d, resp.Status, resp.ContentLength)
	}
	return resp.Body, nil
}

// FetchBatch streams the blobs refs from the member and hands each to put
// with its length and a reader of exactly its bytes; put must read them all
// or fail. A blob the member does not serve is skipped; a put failing with
// ErrCorrupt skips that blob; any other error of put ends the batch and is
// returned as it is.
func (r *Remote) FetchBatch(ctx context.Context, refs []blobRef, through bool, put func(ref blobRef, n int64, rd io.Reader) error) error {
	var hdr []string
	if through {
		hdr = []string{"X-Cachegroup-Through", "1"}
	}
	req := make([]byte, 0, len(refs)*refLen)
	for _, ref := range refs {
		req = append(req, ref.Digest[:]...)
		req = binary.BigEndian.AppendUint64(req, uint64(ref.Size))
	}
	resp, err := r.do(ctx, "POST", "/v1/blobs", bytes.NewReader(req), nil, hdr...)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	br := bufio.NewReaderSize(resp.Body, 256<<10)
	var frame [refLen]byte
	for _, ref := range refs {
		if _, err := io.ReadFull(br, frame[:]); err != nil {
			return fmt.Errorf("member %s: batch: %w", r.name, err)
		}
		if Digest(frame[:len(ref.Digest)]) != ref.Digest {
			return fmt.Errorf("member %s: batch out of order", r.name)
		}
		n := int64(binary.BigEndian.Uint64(frame[len(ref.Digest):]))
		if n < 0 {
			continue
		}
		lr := &io.LimitedReader{R: br, N: n}
		perr := put(ref, n, lr)
		if perr != nil && !errors.Is(perr, ErrCorrupt) {
			return perr
		}
		if _, err := io.Copy(io.Discard, lr); err != nil {
			return fmt.Errorf("member %s: batch: %w", r.name, err)
		}
	}
	return nil
}

// Verify asks the member to re-hash its copy of blob d and drop it if wrong.
func (r *Remote) Verify(ctx context.Context, d Digest) error {
	return r.call(ctx, "POST", "/v1/blobs/"+d.String()+"/verify", nil, nil)
}

// HaveAll reports which of ds the member holds.
func (r *Remote) HaveAll(ctx context.Context, ds []Digest) ([]bool, error) {
	var has []bool
	if err := r.call(ctx, "POST", "/v1/have", ds, &has); err != nil {
		return nil, err
	}
	if len(has) != len(ds) {
		return nil, fmt.Errorf("member %s: have: %d answers for %d blobs", r.name, len(has), len(ds))
	}
	return has, nil
}

// Push sends blob d to the member, which verifies it.
func (r *Remote) Push(ctx context.Context, d Digest, body io.Reader) error {
	return r.call(ctx, "PUT", "/v1/blobs/"+d.String(), body, nil)
}

// Volume returns a head.
func (r *Remote) Volume(ctx context.Context, id string) (Volume, error) {
	var v Volume
	err := r.call(ctx, "GET", "/v1/volumes/"+id, nil, &v)
	return v, err
}

// Volumes returns every head the member keeps, deleted ones included.
func (r *Remote) Volumes(ctx context.Context) ([]Volume, error) {
	var vs []Volume
	err := r.call(ctx, "GET", "/v1/volumes", nil, &vs)
	return vs, err
}

// CreateVolume creates a volume at the member.
func (r *Remote) CreateVolume(ctx context.Context, spec VolumeSpec) (Volume, error) {
	var v Volume
	err := r.call(ctx, "POST", "/v1/volumes", spec, &v)
	return v, err
}

// DeleteVolume deletes a volume at the member.
func (r *Remote) DeleteVolume(ctx context.Context, id string) error {
	return r.call(ctx, "DELETE", "/v1/volumes/"+id, nil, nil)
}

// ExpandVolume raises a volume's quota at the member.
func (r *Remote) ExpandVolume(ctx context.Context, id string, quota int64) (Volume, error) {
	var v Volume
	err := r.call(ctx, "POST", "/v1/volumes/"+id+"/expand", struct{ Quota int64 }{quota}, &v)
	return v, err
}

// Commit applies a commit at the member.
func (r *Remote) Commit(ctx context.Context, id string, c *Commit) (CommitResult, error) {
	var res CommitResult
	err := r.call(ctx, "POST", "/v1/volumes/"+id+"/commit", c, &res)
	return res, err
}

// PutHead gives the member a replicated head.
func (r *Remote) PutHead(ctx context.Context, v Volume) error {
	return r.call(ctx, "PUT", "/v1/volumes/"+v.ID+"/head", v, nil)
}

// Snapshot returns a snapshot.
func (r *Remote) Snapshot(ctx context.Context, id string) (Snapshot, error) {
	var s Snapshot
	err := r.call(ctx, "GET", "/v1/snapshots/"+id, nil, &s)
	return s, err
}

// Snapshots lists the member's snapshots.
func (r *Remote) Snapshots(ctx context.Context) ([]Snapshot, error) {
	var ss []Snapshot
	err := r.call(ctx, "GET", "/v1/snapshots", nil, &ss)
	return ss, err
}

// PutSnapshot gives the member a replicated snapshot.
func (r *Remote) PutSnapshot(ctx context.Context, s Snapshot) error {
	return r.call(ctx, "PUT", "/v1/snapshots/"+s.ID, s, nil)
}

// DeleteSnapshot deletes a snapshot at the member.
func (r *Remote) DeleteSnapshot(ctx context.Context, id string) error {
	return r.call(ctx, "DELETE", "/v1/snapshots/"+id, nil, nil)
}

// Holders returns the members sharing snapshot root.
func (r *Remote) Holders(ctx context.Context, root Digest) ([]string, error) {
	var hs []string
	err := r.call(ctx, "GET", "/v1/holders/"+root.String(), nil, &hs)
	return hs, err
}

// AddHolder tells the member that member shares snapshot root.
func (r *Remote) AddHolder(ctx context.Context, root Digest, member string) error {
	return r.call(ctx, "POST", "/v1/holders/"+root.String(), struct{ Member string }{member}, nil)
}

// holders remembers, per snapshot, the sharing nodes that hydrate or hold it.
type holders struct {
	mu sync.Mutex
	m  map[string]map[string]time.Time
}

func newHolders() *holders { return &holders{m: map[string]map[string]time.Time{}} }

// holderTTL is how long a node stays listed without announcing itself again.
const holderTTL = 10 * time.Minute

func (h *holders) add(root, member string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.m[root] == nil {
		h.m[root] = map[string]time.Time{}
	}
	h.m[root][member] = time.Now()
}

func (h *holders) list(root string) []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := []string{}
	for m, t := range h.m[root] {
		if time.Since(t) < holderTTL {
			out = append(out, m)
		} else {
			delete(h.m[root], m)
		}
	}
	return out
}

// serverLog passes the HTTP server's own errors to klog, counting failed TLS
// handshakes (no or wrong client certificate) as refused requests.
type serverLog struct{ m *Metrics }

func (l serverLog) Write(b []byte) (int, error) {
	msg := strings.TrimSpace(string(b))
	if strings.Contains(msg, "TLS handshake error") {
		l.m.Refused.WithLabelValues("tls").Inc()
	}
	klog.V(1).InfoS("Peer server", "message", msg)
	return len(b), nil
}

// ListenAndServe serves s on addr until ctx ends.
func (s *Server) ListenAndServe(ctx context.Context, l net.Listener) error {
	srv := &http.Server{Handler: s.Handler(), TLSConfig: s.auth.TLS, ReadHeaderTimeout: 10 * time.Second,
		ErrorLog: log.New(serverLog{s.metrics}, "", 0)}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	var err error
	if s.auth.TLS != nil {
		err = srv.ServeTLS(l, "", "")
	} else {
		err = srv.Serve(l)
	}
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}
