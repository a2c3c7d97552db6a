package wire

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/cas"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/tree"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/volume"
)

// Admin routes: what an operator's tool (cachegroupctl) asks a member, as a
// peer-authenticated caller. The member reached answers for the whole group
// (it routes to the homes and owners), so the tool needs one address only (a
// port-forward to one member pod does). Each route is one line of
// adminRoutes, one method of Admin and one of Client.
//
//	GET  /v1/admin/status[?all=1]         this member's status, or every member's
//	GET  /v1/admin/volumes                the group's volumes and snapshots
//	GET  /v1/admin/volumes/{id}           a volume's newest head in the group
//	POST /v1/admin/volumes/{id}/commit    apply a commit at the volume's primary home
//	PUT  /v1/admin/blobs/{digest}         store a blob at its owners
//	GET  /v1/admin/blobs/{digest}         a blob, from wherever the group has it
//	POST /v1/admin/warm                   hydrate a volume's head on a member's node tier
//	POST /v1/admin/verify                 start re-hashing a member's store
//	GET  /v1/admin/verify?member=NAME     how that goes
//	POST /v1/admin/gc                     collect a member's garbage now (or find it, dry)

// Admin is what a member answers to an operator.
type Admin interface {
	// Status is this member's status, with every other member's if all.
	Status(ctx context.Context, all bool) ([]Status, error)
	// Volumes lists the group's volumes and snapshots.
	Volumes(ctx context.Context) (VolumeList, error)
	// Volume returns volume id's newest head in the group.
	Volume(ctx context.Context, id string) (volume.Volume, error)
	// Commit applies c at volume id's primary home; every blob it names
	// must be at its owners (PutBlob).
	Commit(ctx context.Context, id string, c *tree.Commit) (volume.CommitResult, error)
	// PutBlob stores blob d, read (and verified) from r, at its owners.
	PutBlob(ctx context.Context, d cas.Digest, r io.Reader) error
	// OpenBlob streams blob d from this member or the group; the caller
	// verifies it.
	OpenBlob(ctx context.Context, d cas.Digest) (io.ReadCloser, error)
	// Warm hydrates the head of a volume on a member's node tier.
	Warm(ctx context.Context, q WarmRequest) (WarmResult, error)
	// Verify reports on the re-hashing of a member's store, first starting
	// one if start and none runs.
	Verify(ctx context.Context, member string, start bool) (VerifyState, error)
	// Collect collects the garbage of a member's store now, or with dry
	// only finds it.
	Collect(ctx context.Context, q CollectRequest) (Collection, error)
}

// CollectRequest asks a member to collect its garbage.
type CollectRequest struct {
	Member string `json:"member"`
	DryRun bool   `json:"dryRun,omitempty"`
}

// Collection is what a collection found and did (see group.Collection).
type Collection struct {
	Member  string `json:"member"`
	DryRun  bool   `json:"dryRun,omitempty"`
	Roots   int    `json:"roots"`
	Trees   int    `json:"trees"`
	Held    int    `json:"held"`
	Garbage int    `json:"garbage"`
	Bytes   int64  `json:"garbageBytes"`
	Deleted int    `json:"deleted"`
	Freed   int64  `json:"freed"`
}

// Status is what a member says of itself to an operator.
type Status struct {
	Health
	// Error says why a member listed by another could not tell its status.
	Error        string  `json:"error,omitempty"`
	Version      string  `json:"version"`
	Replicas     int     `json:"replicas"`
	GraceSeconds float64 `json:"graceSeconds"`
	// Members is the group as this member sees it.
	Members []MemberStatus `json:"members"`
	// StoreUsed is the bytes of blobs in its store, CacheSize its limit (0:
	// none but the floor), Capacity what the store may still take.
	StoreUsed int64 `json:"storeUsed"`
	CacheSize int64 `json:"cacheSize"`
	Capacity  int64 `json:"capacity"`
	// OwnedBlobs and OwnedBytes are the blobs of its store it owns; BelowR,
	// as of the last re-replication pass, those it holds with fewer than R
	// copies known in the group.
	OwnedBlobs int64 `json:"ownedBlobs"`
	OwnedBytes int64 `json:"ownedBytes"`
	BelowR     int64 `json:"belowR"`
	// Outbox is the ended pods' writes waiting on its node to be committed,
	// OutboxOldestSeconds the age of the oldest.
	Outbox              int     `json:"outbox"`
	OutboxOldestSeconds float64 `json:"outboxOldestSeconds"`
}

// MemberStatus is one member of the group as another sees it.
type MemberStatus struct {
	Name        string  `json:"name"`
	Weight      float64 `json:"weight"`
	Live        bool    `json:"live"`
	Gone        bool    `json:"gone,omitempty"` // down past the grace period
	DownSeconds float64 `json:"downSeconds,omitempty"`
}

// VolumeList is the group's volumes (the newest head of each) and snapshots.
type VolumeList struct {
	Volumes   []volume.Volume   `json:"volumes"`
	Snapshots []volume.Snapshot `json:"snapshots"`
}

// WarmRequest asks member Node to hydrate volume Volume's head.
type WarmRequest struct {
	Node   string `json:"node"`
	Volume string `json:"volume"`
	// Forwarded is set by the member that passes the request on to Node,
	// which must not pass it on again.
	Forwarded bool `json:"forwarded,omitempty"`
}

// WarmResult is what a warm did.
type WarmResult struct {
	Node       string     `json:"node"`
	Volume     string     `json:"volume"`
	Generation uint64     `json:"generation"`
	Root       cas.Digest `json:"root"`
	Files      int64      `json:"files"`
	Bytes      int64      `json:"bytes"`
	// Done is false if the hydration goes on past the request's bound.
	Done    bool    `json:"done"`
	Seconds float64 `json:"seconds"`
}

// VerifyState is the progress of a store's re-hashing.
type VerifyState struct {
	Member   string    `json:"member"`
	Running  bool      `json:"running"`
	Started  time.Time `json:"started,omitzero"`
	Finished time.Time `json:"finished,omitzero"`
	Checked  int64     `json:"checked"`
	Bytes    int64     `json:"bytes"`
	// Corrupt names the copies found wrong (the first MaxVerifyReport),
	// CorruptCount counts them all; Repaired those fetched again from
	// other members, Dropped those this member need not hold.
	Corrupt      []cas.Digest `json:"corrupt,omitempty"`
	CorruptCount int64        `json:"corruptCount"`
	Repaired     int64        `json:"repaired"`
	Dropped      int64        `json:"dropped"`
	Errors       []string     `json:"errors,omitempty"`
}

// MaxVerifyReport bounds the digests and errors a VerifyState lists.
const MaxVerifyReport = 100

// adminWait bounds what an admin request waits for (a warm, a commit):
// within the server's write timeout.
const adminWait = 2 * time.Minute

// adminRoutes serves a, if the backend has one.
func (s *Server) adminRoutes(mux *http.ServeMux, a Admin) {
	if a == nil {
		return
	}
	s.route(mux, "GET /v1/admin/status", func(r *http.Request) (any, error) {
		return a.Status(r.Context(), r.URL.Query().Has("all"))
	})
	s.route(mux, "GET /v1/admin/volumes", func(r *http.Request) (any, error) { return a.Volumes(r.Context()) })
	s.route(mux, "GET /v1/admin/volumes/{id}", func(r *http.Request) (any, error) {
		return withID(r, volume.CheckVolumeID, func(id string) (any, error) { return a.Volume(r.Context(), id) })
	})
	routeBody(s, mux, "POST /v1/admin/volumes/{id}/commit", MaxCommitBody, func(r *http.Request, c tree.Commit) (any, error) {
		return withID(r, volume.CheckVolumeID, func(id string) (any, error) {
			if err := c.Validate(); err != nil {
				return nil, err
			}
			ctx, cancel := context.WithTimeout(r.Context(), adminWait)
			defer cancel()
			return a.Commit(ctx, id, &c)
		})
	})
	mux.HandleFunc("PUT /v1/admin/blobs/{digest}", func(w http.ResponseWriter, r *http.Request) {
		s.streamIn(w, r, func(d cas.Digest, body io.Reader) error { return a.PutBlob(r.Context(), d, body) })
	})
	mux.HandleFunc("GET /v1/admin/blobs/{digest}", func(w http.ResponseWriter, r *http.Request) {
		if _, _, ok := s.readBody(w, r, 0); !ok {
			return
		}
		d, err := digestOf(r, "digest")
		var rc io.ReadCloser
		if err == nil {
			rc, err = a.OpenBlob(r.Context(), d)
		}
		if err != nil {
			s.answer(w, r, nil, err)
			return
		}
		defer rc.Close()
		w.Header().Set("Content-Type", "application/octet-stream")
		io.Copy(newPacedWriter(w), rc)
	})
	routeBody(s, mux, "POST /v1/admin/warm", maxJSONBody, func(r *http.Request, q WarmRequest) (any, error) {
		if err := checkMemberAndVolume(q.Node, q.Volume); err != nil {
			return nil, err
		}
		if q.Forwarded && q.Node != s.self {
			return nil, badRequest(fmt.Errorf("a warm for member %s forwarded to %s", q.Node, s.self))
		}
		ctx, cancel := context.WithTimeout(r.Context(), adminWait)
		defer cancel()
		return a.Warm(ctx, q)
	})
	routeBody(s, mux, "POST /v1/admin/verify", maxJSONBody, func(r *http.Request, q struct{ Member string }) (any, error) {
		if err := volume.CheckMemberName(q.Member); err != nil {
			return nil, badRequest(err)
		}
		return a.Verify(r.Context(), q.Member, true)
	})
	routeBody(s, mux, "POST /v1/admin/gc", maxJSONBody, func(r *http.Request, q CollectRequest) (any, error) {
		if err := volume.CheckMemberName(q.Member); err != nil {
			return nil, badRequest(err)
		}
		return a.Collect(r.Context(), q)
	})
	s.route(mux, "GET /v1/admin/verify", func(r *http.Request) (any, error) {
		member := r.URL.Query().Get("member")
		if err := volume.CheckMemberName(member); err != nil {
			return nil, badRequest(err)
		}
		return a.Verify(r.Context(), member, false)
	})
}

// checkMemberAndVolume checks the ids of a warm.
func checkMemberAndVolume(member, id string) error {
	if err := volume.CheckMemberName(member); err != nil {
		return badRequest(err)
	}
	return volume.CheckVolumeID(id)
}

// streamIn hands the body of a request that streams blob {digest} to put:
// its signed body digest must be the blob's, which the receiver checks as
// it stores the blob, and it must come at minRate. The body is never held.
func (s *Server) streamIn(w http.ResponseWriter, r *http.Request, put func(d cas.Digest, body io.Reader) error) {
	d, ok := s.blobIn(w, r)
	if !ok {
		return
	}
	err := put(d, s.paced(w, r.Body))
	http.NewResponseController(w).SetReadDeadline(time.Time{})
	if errors.Is(err, cas.ErrCorrupt) {
		s.metrics.Corrupt.Inc()
		s.count(reasonBadBodyDigest)
	}
	s.answer(w, r, nil, err)
}

// AdminStatus asks the member for its status, and every member's if all.
func (r *Client) AdminStatus(ctx context.Context, all bool) ([]Status, error) {
	path := "/v1/admin/status"
	if all {
		path += "?all=1"
	}
	var st []Status
	err := r.call(ctx, "GET", path, nil, &st)
	return st, err
}

// AdminVolumes lists the group's volumes and snapshots.
func (r *Client) AdminVolumes(ctx context.Context) (VolumeList, error) {
	var l VolumeList
	err := r.call(ctx, "GET", "/v1/admin/volumes", nil, &l)
	return l, err
}

// AdminVolume returns volume id's newest head in the group.
func (r *Client) AdminVolume(ctx context.Context, id string) (volume.Volume, error) {
	var v volume.Volume
	err := r.call(ctx, "GET", "/v1/admin/volumes/"+url.PathEscape(id), nil, &v)
	return v, err
}

// AdminCommit applies c to volume id through the member.
func (r *Client) AdminCommit(ctx context.Context, id string, c *tree.Commit) (volume.CommitResult, error) {
	var res volume.CommitResult
	err := r.call(ctx, "POST", "/v1/admin/volumes/"+url.PathEscape(id)+"/commit", c, &res)
	return res, err
}

// AdminPutBlob stores blob d, read from body, at its owners through the member.
func (r *Client) AdminPutBlob(ctx context.Context, d cas.Digest, body io.Reader) error {
	return r.call(ctx, "PUT", "/v1/admin/blobs/"+d.String(), blobBody{d: d, r: body}, nil)
}

// AdminOpenBlob streams blob d from the group through the member; the caller
// verifies it.
func (r *Client) AdminOpenBlob(ctx context.Context, d cas.Digest) (io.ReadCloser, error) {
	resp, err := r.do(ctx, "GET", "/v1/admin/blobs/"+d.String(), nil, nil)
	if err != nil {
		return nil, err
	}
	return resp.Body, nil
}

// AdminWarm asks for a volume's head to be hydrated on member q.Node.
func (r *Client) AdminWarm(ctx context.Context, q WarmRequest) (WarmResult, error) {
	var res WarmResult
	err := r.call(ctx, "POST", "/v1/admin/warm", q, &res)
	return res, err
}

// AdminVerify reports on the re-hashing of member's store, first starting
// one if start.
func (r *Client) AdminVerify(ctx context.Context, member string, start bool) (VerifyState, error) {
	var st VerifyState
	var err error
	if start {
		err = r.call(ctx, "POST", "/v1/admin/verify", struct{ Member string }{member}, &st)
	} else {
		err = r.call(ctx, "GET", "/v1/admin/verify?member="+url.QueryEscape(member), nil, &st)
	}
	return st, err
}

// AdminCollect asks member q.Member to collect its garbage now.
func (r *Client) AdminCollect(ctx context.Context, q CollectRequest) (Collection, error) {
	var c Collection
	err := r.call(ctx, "POST", "/v1/admin/gc", q, &c)
	return c, err
}
