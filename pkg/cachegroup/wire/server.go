package wire

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/cas"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/metrics"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/tree"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/volume"
	"golang.org/x/sync/semaphore"
	"k8s.io/klog/v2"
)

// Health is what a member says of itself.
type Health struct {
	Name   string  `json:"name"`
	Group  string  `json:"group"`
	Weight float64 `json:"weight"`
	// Capacity is how many more bytes its store may take (0 on a client).
	Capacity int64 `json:"capacity,omitempty"`
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
	// Admin answers an operator's tool (admin.go); nil: no admin routes.
	Admin() Admin
}

// Server serves a member to its peers. Its bounds on what a request may
// hold are set before Handler or ListenAndServe is called; zero takes the
// default.
type Server struct {
	b       Backend
	auth    *Auth
	metrics *metrics.Set

	// ReadHeaderTimeout bounds the time to read a request's headers (and,
	// with TLS, to shake hands); default 10s.
	ReadHeaderTimeout time.Duration
	// IdleTimeout bounds how long a connection may wait for its next
	// request; default 60s.
	IdleTimeout time.Duration
	// MaxConns caps the connections open at once; those beyond it are
	// closed as soon as they are accepted. Default 2048.
	MaxConns int
	// BodyMemory caps the bytes of request bodies held at once; a request
	// waits for room to read its body in. Default 256 MiB.
	BodyMemory int64

	init       sync.Once
	self       string // the member's name: requests must be for it
	bodyMemory int64
	bodies     *semaphore.Weighted // room in bodyMemory
}

// NewServer returns the peer server of b.
func NewServer(b Backend, auth *Auth, m *metrics.Set) *Server {
	for _, r := range reasons {
		m.Refused.WithLabelValues(r)
	}
	return &Server{b: b, auth: auth, metrics: m}
}

// Handler returns the server's HTTP handler.
func (s *Server) Handler() http.Handler {
	s.init.Do(func() {
		s.self = s.b.Health().Name
		s.bodyMemory = orDefault(s.BodyMemory, defaultBodyMemory)
		s.bodies = semaphore.NewWeighted(s.bodyMemory)
	})
	mux := http.NewServeMux()
	s.route(mux, "GET "+healthPath, func(*http.Request) (any, error) { return s.b.Health(), nil })
	s.blobRoutes(mux)
	s.homeRoutes(mux)
	s.adminRoutes(mux, s.b.Admin())
	return s.authenticate(mux)
}

// blobRoutes serves the store: blobs, batches of them, and checks.
func (s *Server) blobRoutes(mux *http.ServeMux) {
	st := s.b.Store()
	mux.HandleFunc("GET /v1/blobs/{digest}", s.serveBlob)
	mux.HandleFunc("POST /v1/blobs", s.serveBatch)
	mux.HandleFunc("HEAD /v1/blobs/{digest}", s.serveBlob)
	mux.HandleFunc("PUT /v1/blobs/{digest}", s.putBlob)
	s.route(mux, "POST /v1/blobs/{digest}/verify", func(r *http.Request) (any, error) {
		d, err := digestOf(r, "digest")
		if err == nil {
			err = st.Verify(d)
		}
		if errors.Is(err, cas.ErrCorrupt) {
			s.metrics.Corrupt.Inc()
			klog.ErrorS(err, "A peer reported a corrupt copy; dropped it", "blob", d, "peer", credsOf(r).from)
			err = nil // dropped: the caller may push a good copy now
		}
		return nil, err
	})
	for path, size := range map[string]func(cas.Digest) int64{"/v1/sizes": st.Size, "/v1/keep": st.Keep} {
		routeBody(s, mux, "POST "+path, maxJSONBody, func(_ *http.Request, ds []cas.Digest) (any, error) {
			sizes := make([]int64, len(ds))
			for i, d := range ds {
				sizes[i] = size(d)
			}
			return sizes, nil
		})
	}
}

// putBlob stores a blob a peer pushes. Its signed body digest is the blob's
// digest, which the store checks while it stores the blob: the body is
// streamed, never held.
func (s *Server) putBlob(w http.ResponseWriter, r *http.Request) {
	d, ok := s.blobIn(w, r)
	if !ok {
		return
	}
	var err error
	st := s.b.Store()
	if st.Keep(d) >= 0 { // pushed for a commit: kept from collection until it is applied
		// The server reads a little of the body it was not asked for
		// before answering: at minRate.
		http.NewResponseController(w).SetReadDeadline(time.Now().Add(allowed(256 << 10)))
	} else {
		_, err = st.Put(s.paced(w, r.Body), d)
		http.NewResponseController(w).SetReadDeadline(time.Time{})
	}
	if errors.Is(err, cas.ErrCorrupt) {
		s.metrics.Corrupt.Inc()
		s.count(reasonBadBodyDigest)
	}
	s.answer(w, r, nil, err)
}

// blobIn returns the blob {digest} a request streams in, once its signed
// body digest is found to be the blob's (which the receiver checks as it
// stores the blob), or answers the request and reports false.
func (s *Server) blobIn(w http.ResponseWriter, r *http.Request) (cas.Digest, bool) {
	d, err := digestOf(r, "digest")
	if err == nil && credsOf(r).body != d {
		err = refuse(reasonBadBodyDigest, fmt.Errorf("the signed body is not blob %s", d))
	}
	var rf *refusal
	switch {
	case errors.As(err, &rf):
		s.refuse(w, r, err)
		return d, false
	case err != nil:
		closeAfter(w)
		s.answer(w, r, nil, err)
		return d, false
	}
	return d, true
}

// homeRoutes serves the home: heads, commits, snapshots and sharing nodes.
func (s *Server) homeRoutes(mux *http.ServeMux) {
	l := s.b.Home()
	s.route(mux, "GET /v1/volumes", func(r *http.Request) (any, error) { return l.Volumes(r.Context()) })
	s.route(mux, "GET /v1/volumes/{id}", func(r *http.Request) (any, error) {
		return withID(r, volume.CheckVolumeID, func(id string) (any, error) { return l.Volume(r.Context(), id) })
	})
	routeBody(s, mux, "POST /v1/volumes", maxJSONBody, func(r *http.Request, spec volume.Spec) (any, error) {
		return l.CreateVolume(r.Context(), spec)
	})
	s.route(mux, "DELETE /v1/volumes/{id}", func(r *http.Request) (any, error) {
		return withID(r, volume.CheckVolumeID, func(id string) (any, error) { return nil, l.DeleteVolume(r.Context(), id) })
	})
	routeBody(s, mux, "POST /v1/volumes/{id}/expand", maxJSONBody, func(r *http.Request, q struct{ Quota int64 }) (any, error) {
		return withID(r, volume.CheckVolumeID, func(id string) (any, error) { return l.ExpandVolume(r.Context(), id, q.Quota) })
	})
	routeBody(s, mux, "POST /v1/volumes/{id}/commit", MaxCommitBody, func(r *http.Request, c tree.Commit) (any, error) {
		return withID(r, volume.CheckVolumeID, func(id string) (any, error) {
			if err := c.Validate(); err != nil {
				return nil, err // before the home catches up on a commit it cannot apply
			}
			return l.Commit(r.Context(), id, &c)
		})
	})
	routeBody(s, mux, "POST /v1/used", maxJSONBody, func(r *http.Request, ds []cas.Digest) (any, error) {
		return nil, l.Used(r.Context(), ds)
	})
	routeBody(s, mux, "PUT /v1/volumes/{id}/head", maxJSONBody, func(r *http.Request, v volume.Volume) (any, error) {
		return withID(r, volume.CheckVolumeID, func(id string) (any, error) {
			if v.ID != id {
				return nil, badRequest(fmt.Errorf("the head of volume %.80q put as volume %s's", v.ID, id))
			}
			return nil, l.PutHead(r.Context(), v)
		})
	})
	s.snapshotRoutes(mux)
	s.route(mux, "GET /v1/holders/{root}", func(r *http.Request) (any, error) {
		root, err := digestOf(r, "root")
		if err != nil {
			return nil, err
		}
		return s.b.Holders(root), nil
	})
	routeBody(s, mux, "POST /v1/holders/{root}", maxJSONBody, func(r *http.Request, q struct{ Member string }) (any, error) {
		root, err := digestOf(r, "root")
		if err != nil {
			return nil, err
		}
		if from := credsOf(r).from; q.Member != from {
			return nil, badRequest(fmt.Errorf("member %s says %.80q holds a snapshot: a member names only itself", from, q.Member))
		}
		s.b.AddHolder(root, q.Member)
		return nil, nil
	})
}

// snapshotRoutes serves the home's snapshots.
func (s *Server) snapshotRoutes(mux *http.ServeMux) {
	l := s.b.Home()
	s.route(mux, "GET /v1/snapshots", func(r *http.Request) (any, error) { return l.Snapshots(r.Context()) })
	s.route(mux, "GET /v1/snapshots/{id}", func(r *http.Request) (any, error) {
		return withID(r, volume.CheckSnapshotID, func(id string) (any, error) { return l.Snapshot(r.Context(), id) })
	})
	routeBody(s, mux, "PUT /v1/snapshots/{id}", maxJSONBody, func(r *http.Request, sn volume.Snapshot) (any, error) {
		return withID(r, volume.CheckSnapshotID, func(id string) (any, error) {
			if sn.ID != id {
				return nil, badRequest(fmt.Errorf("snapshot %.80q put as snapshot %s", sn.ID, id))
			}
			return nil, l.PutSnapshot(r.Context(), sn)
		})
	})
	s.route(mux, "DELETE /v1/snapshots/{id}", func(r *http.Request) (any, error) {
		return withID(r, volume.CheckSnapshotID, func(id string) (any, error) { return nil, l.DeleteSnapshot(r.Context(), id) })
	})
}

// withID calls do with the {id} of r's path if check accepts it.
func withID(r *http.Request, check func(string) error, do func(id string) (any, error)) (any, error) {
	id := r.PathValue("id")
	if err := check(id); err != nil {
		return nil, err
	}
	return do(id)
}

// digestOf returns the digest in r's path value name.
func digestOf(r *http.Request, name string) (cas.Digest, error) {
	d, err := cas.ParseDigest(r.PathValue(name))
	if err != nil {
		return d, badRequest(err)
	}
	return d, nil
}

// route serves pattern, a request without a body, with do's answer as JSON
// (nothing if it is nil).
func (s *Server) route(mux *http.ServeMux, pattern string, do func(r *http.Request) (any, error)) {
	mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		if _, _, ok := s.readBody(w, r, 0); !ok {
			return
		}
		v, err := do(r)
		s.answer(w, r, v, err)
	})
}

// routeBody is route for requests whose body is a JSON In of at most max
// bytes, read whole and checked against its signature before do acts on it.
func routeBody[In any](s *Server, mux *http.ServeMux, pattern string, max int64, do func(r *http.Request, in In) (any, error)) {
	mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		b, done, ok := s.readBody(w, r, max)
		if !ok {
			return
		}
		defer done()
		var in In
		if err := decodeJSON(b, &in); err != nil {
			s.answer(w, r, nil, err)
			return
		}
		v, err := do(r, in)
		s.answer(w, r, v, err)
	})
}

// decodeJSON decodes a request body into v; what it cannot decode is a bad
// request.
func decodeJSON(b []byte, v any) error {
	if err := json.Unmarshal(b, v); err != nil {
		return badRequest(fmt.Errorf("request body: %w", err))
	}
	return nil
}

// serveBlob serves one blob, ranged.
func (s *Server) serveBlob(w http.ResponseWriter, r *http.Request) {
	if _, _, ok := s.readBody(w, r, 0); !ok {
		return
	}
	d, err := digestOf(r, "digest")
	if err != nil {
		s.answer(w, r, nil, err)
		return
	}
	as, err := s.b.MayServe(r.Context(), d, r.URL.Query().Has("through"))
	var f *os.File
	if err == nil {
		f, err = s.b.Store().Open(d)
	}
	if err != nil {
		s.answer(w, r, nil, err)
		return
	}
	defer f.Close()
	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("X-Cachegroup-Served-As", as)
	pw := newPacedWriter(w)
	// ServeContent handles Range and uses sendfile from the file to the socket.
	http.ServeContent(pw, r, "", time.Time{}, f)
	s.metrics.ServedBytes.WithLabelValues(as).Add(float64(pw.n))
}

// answer writes v as JSON (nothing if it is nil), or err as its status and
// sentinel, counting the requests refused as they are written.
func (s *Server) answer(w http.ResponseWriter, r *http.Request, v any, err error) {
	if err != nil {
		code, name := statusOf(err)
		switch {
		case errors.Is(err, tree.ErrInvalid):
			s.count(reasonInvalid)
		case code == http.StatusBadRequest:
			s.count(reasonBadRequest)
		}
		if name != "" {
			w.Header().Set(hdrError, name)
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
