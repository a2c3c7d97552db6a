package wire

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/cas"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/metrics"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/tree"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/volume"
	"k8s.io/klog/v2"
)

// Health is what a member says of itself.
type Health struct {
	Name   string  `json:"name"`
	Group  string  `json:"group"`
	Weight float64 `json:"weight"`
}

// Backend is the member a Server serves.
type Backend interface {
	// Health is what the member says of itself.
	Health() Health
	// Home keeps the heads and snapshots of the volumes it is a home of.
	Home() *volume.Home
	// Store holds its blobs.
	Store() *cas.Store
	// MayServe says whether blob d may be served to a peer, and as what
	// ("owner" or "peer"); with through, a member hydrating a shared
	// snapshot fetches the blob from its owners first if it lacks it.
	MayServe(ctx context.Context, d cas.Digest, through bool) (as string, err error)
	// AddHolder records that member shares snapshot root; Holders lists
	// those that do.
	AddHolder(root cas.Digest, member string)
	Holders(root cas.Digest) []string
}

// Server serves a member to its peers.
type Server struct {
	b       Backend
	auth    *Auth
	metrics *metrics.Set
}

// NewServer returns the peer server of b.
func NewServer(b Backend, auth *Auth, m *metrics.Set) *Server {
	return &Server{b: b, auth: auth, metrics: m}
}

// Handler returns the server's HTTP handler.
func (s *Server) Handler() http.Handler {
	mux := http.NewServeMux()
	route(mux, "GET /v1/health", func(*http.Request) (any, error) { return s.b.Health(), nil })
	s.blobRoutes(mux)
	s.homeRoutes(mux)
	return s.authenticate(mux)
}

// blobRoutes serves the store: blobs, batches of them, and checks.
func (s *Server) blobRoutes(mux *http.ServeMux) {
	st := s.b.Store()
	mux.HandleFunc("GET /v1/blobs/{digest}", s.serveBlob)
	mux.HandleFunc("POST /v1/blobs", s.serveBatch)
	mux.HandleFunc("HEAD /v1/blobs/{digest}", s.serveBlob)
	mux.HandleFunc("PUT /v1/blobs/{digest}", func(w http.ResponseWriter, r *http.Request) {
		d, err := cas.ParseDigest(r.PathValue("digest"))
		if err == nil && !st.Has(d) {
			_, err = st.Put(r.Body, d)
		}
		if errors.Is(err, cas.ErrCorrupt) {
			s.metrics.Corrupt.Inc()
		}
		writeJSONResponse(w, nil, err)
	})
	mux.HandleFunc("POST /v1/blobs/{digest}/verify", func(w http.ResponseWriter, r *http.Request) {
		d, err := cas.ParseDigest(r.PathValue("digest"))
		if err == nil {
			err = st.Verify(d)
		}
		if errors.Is(err, cas.ErrCorrupt) {
			s.metrics.Corrupt.Inc()
			klog.ErrorS(err, "A peer reported a corrupt copy; dropped it", "blob", d, "peer", r.Header.Get("X-Cachegroup-Member"))
			err = nil // dropped: the caller may push a good copy now
		}
		writeJSONResponse(w, nil, err)
	})
	routeBody(mux, "POST /v1/have", func(_ *http.Request, ds []cas.Digest) (any, error) {
		has := make([]bool, len(ds))
		for i, d := range ds {
			has[i] = st.Has(d)
		}
		return has, nil
	})
}

// homeRoutes serves the home: heads, commits, snapshots and sharing nodes.
func (s *Server) homeRoutes(mux *http.ServeMux) {
	l := s.b.Home()
	route(mux, "GET /v1/volumes", func(r *http.Request) (any, error) { return l.Volumes(r.Context()) })
	route(mux, "GET /v1/volumes/{id}", func(r *http.Request) (any, error) { return l.Volume(r.Context(), r.PathValue("id")) })
	routeBody(mux, "POST /v1/volumes", func(r *http.Request, spec volume.Spec) (any, error) {
		return l.CreateVolume(r.Context(), spec)
	})
	route(mux, "DELETE /v1/volumes/{id}", func(r *http.Request) (any, error) {
		return nil, l.DeleteVolume(r.Context(), r.PathValue("id"))
	})
	routeBody(mux, "POST /v1/volumes/{id}/expand", func(r *http.Request, q struct{ Quota int64 }) (any, error) {
		return l.ExpandVolume(r.Context(), r.PathValue("id"), q.Quota)
	})
	routeBody(mux, "POST /v1/volumes/{id}/commit", func(r *http.Request, c tree.Commit) (any, error) {
		return l.Commit(r.Context(), r.PathValue("id"), &c)
	})
	routeBody(mux, "PUT /v1/volumes/{id}/head", func(r *http.Request, v volume.Volume) (any, error) {
		return nil, l.PutHead(r.Context(), v)
	})
	route(mux, "GET /v1/snapshots", func(r *http.Request) (any, error) { return l.Snapshots(r.Context()) })
	route(mux, "GET /v1/snapshots/{id}", func(r *http.Request) (any, error) { return l.Snapshot(r.Context(), r.PathValue("id")) })
	routeBody(mux, "PUT /v1/snapshots/{id}", func(r *http.Request, sn volume.Snapshot) (any, error) {
		return nil, l.PutSnapshot(r.Context(), sn)
	})
	route(mux, "DELETE /v1/snapshots/{id}", func(r *http.Request) (any, error) {
		return nil, l.DeleteSnapshot(r.Context(), r.PathValue("id"))
	})
	route(mux, "GET /v1/holders/{root}", func(r *http.Request) (any, error) {
		root, err := cas.ParseDigest(r.PathValue("root"))
		if err != nil {
			return nil, badRequest(err)
		}
		return s.b.Holders(root), nil
	})
	routeBody(mux, "POST /v1/holders/{root}", func(r *http.Request, q struct{ Member string }) (any, error) {
		root, err := cas.ParseDigest(r.PathValue("root"))
		if err != nil {
			return nil, badRequest(err)
		}
		s.b.AddHolder(root, q.Member)
		return nil, nil
	})
}

// route serves pattern with do's answer as JSON (nothing if it is nil).
func route(mux *http.ServeMux, pattern string, do func(r *http.Request) (any, error)) {
	mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		v, err := do(r)
		writeJSONResponse(w, v, err)
	})
}

// routeBody is route for requests whose body is a JSON In.
func routeBody[In any](mux *http.ServeMux, pattern string, do func(r *http.Request, in In) (any, error)) {
	mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		var in In
		if !readJSON(w, r, &in) {
			return
		}
		v, err := do(r, in)
		writeJSONResponse(w, v, err)
	})
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

// serveBlob serves one blob, ranged.
func (s *Server) serveBlob(w http.ResponseWriter, r *http.Request) {
	d, err := cas.ParseDigest(r.PathValue("digest"))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	as, err := s.b.MayServe(r.Context(), d, r.Header.Get("X-Cachegroup-Through") != "")
	var f *os.File
	if err == nil {
		f, err = s.b.Store().Open(d)
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

// serverLog passes the HTTP server's own errors to klog, counting failed TLS
// handshakes (no or wrong client certificate) as refused requests.
type serverLog struct{ m *metrics.Set }

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
