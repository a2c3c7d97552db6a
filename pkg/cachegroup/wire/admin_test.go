package wire

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/cas"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/tree"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/volume"
)

// testAdmin answers the admin routes from a test backend's store and home,
// recording the warms and verifies it is asked.
type testAdmin struct {
	b       *testBackend
	mu      sync.Mutex
	warms   []WarmRequest
	verifys []string
}

func (a *testAdmin) Status(context.Context, bool) ([]Status, error) {
	return []Status{{Health: a.b.Health(), Replicas: 2}}, nil
}
func (a *testAdmin) Volumes(ctx context.Context) (VolumeList, error) {
	vs, err := a.b.home.Volumes(ctx)
	return VolumeList{Volumes: vs}, err
}
func (a *testAdmin) Volume(ctx context.Context, id string) (volume.Volume, error) {
	return a.b.home.Volume(ctx, id)
}
func (a *testAdmin) Commit(ctx context.Context, id string, c *tree.Commit) (volume.CommitResult, error) {
	return a.b.home.Commit(ctx, id, c)
}
func (a *testAdmin) PutBlob(_ context.Context, d cas.Digest, r io.Reader) error {
	_, err := a.b.store.Put(r, d)
	return err
}
func (a *testAdmin) OpenBlob(_ context.Context, d cas.Digest) (io.ReadCloser, error) {
	return a.b.store.Open(d)
}
func (a *testAdmin) Warm(_ context.Context, q WarmRequest) (WarmResult, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.warms = append(a.warms, q)
	return WarmResult{Node: q.Node, Volume: q.Volume, Done: true}, nil
}
func (a *testAdmin) Collect(_ context.Context, q CollectRequest) (Collection, error) {
	return Collection{Member: q.Member, DryRun: q.DryRun}, nil
}

func (a *testAdmin) Verify(_ context.Context, member string, _ bool) (VerifyState, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.verifys = append(a.verifys, member)
	return VerifyState{Member: member}, nil
}

// serveAdmin serves a member with admin routes on loopback.
func serveAdmin(t *testing.T) (*peer, *testAdmin) {
	a := &testAdmin{}
	p := servePeer(t, "member-a", NewSecretAuth(testSecret), func(s *Server) {
		b := s.b.(*testBackend)
		a.b = b
		b.admin = a
	})
	return p, a
}

// The admin routes are the peer protocol's: a caller without the group's
// credentials is refused and counted, whatever it asks.
func TestAdminRoutesRefuseTheUnauthenticated(t *testing.T) {
	p, a := serveAdmin(t)
	for _, r := range []struct{ method, path, body string }{
		{"GET", "/v1/admin/status?all=1", ""},
		{"GET", "/v1/admin/volumes", ""},
		{"POST", "/v1/admin/warm", `{"node":"member-a","volume":"vol-000000000000000000000000"}`},
		{"POST", "/v1/admin/verify", `{"Member":"member-a"}`},
		{"POST", "/v1/admin/gc", `{"member":"member-a"}`},
		{"PUT", "/v1/admin/blobs/" + cas.Sum([]byte("x")).String(), "x"},
	} {
		before := p.refused(t, reasonUnauthenticated)
		req, _ := http.NewRequest(r.method, "http://"+p.addr+r.path, strings.NewReader(r.body))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized || p.refused(t, reasonUnauthenticated) != before+1 {
			t.Errorf("%s %s without credentials: %s", r.method, r.path, resp.Status)
		}
	}
	if len(a.warms)+len(a.verifys) != 0 {
		t.Fatalf("unauthenticated requests reached the member: %v %v", a.warms, a.verifys)
	}
}

// Every id an admin request names is checked before the member acts on it,
// and a blob is kept only if it is the one its digest names.
func TestAdminRequestsAreValidated(t *testing.T) {
	p, a := serveAdmin(t)
	c := NewClient(p.name, p.addr, "cachegroupctl", NewSecretAuth(testSecret))
	ctx := context.Background()
	for _, q := range []WarmRequest{
		{Node: "Not_A_Node", Volume: "vol-000000000000000000000000"},
		{Node: strings.Repeat("n", 300), Volume: "vol-000000000000000000000000"},
		{Node: "member-a", Volume: "../../etc"},
		{Node: "member-b", Volume: "vol-000000000000000000000000", Forwarded: true}, // passed on twice
	} {
		if _, err := c.AdminWarm(ctx, q); !errors.Is(err, errBadRequest) && !errors.Is(err, volume.ErrInvalidID) {
			t.Errorf("warm %+v: %v, want a bad request", q, err)
		}
	}
	if _, err := c.AdminVerify(ctx, "../x", false); !errors.Is(err, errBadRequest) {
		t.Errorf("verify of a member named ../x: %v, want a bad request", err)
	}
	if _, err := c.AdminVolume(ctx, "vol-x"); !errors.Is(err, volume.ErrInvalidID) {
		t.Errorf("volume vol-x: %v, want an invalid id", err)
	}
	if len(a.warms)+len(a.verifys) != 0 {
		t.Fatalf("invalid requests reached the member: %v %v", a.warms, a.verifys)
	}
	if _, err := c.AdminWarm(ctx, WarmRequest{Node: "member-b", Volume: "vol-000000000000000000000000"}); err != nil {
		t.Fatalf("a valid warm: %v", err)
	}

	blob := []byte("a file of a seeded cache")
	d := cas.Sum(blob)
	if err := c.AdminPutBlob(ctx, d, bytes.NewReader([]byte("other bytes, same length!"))); !errors.Is(err, cas.ErrCorrupt) {
		t.Fatalf("a blob that is not its digest's: %v, want corrupt", err)
	}
	if p.b.store.Has(d) {
		t.Fatal("a corrupt blob was kept")
	}
	if err := c.AdminPutBlob(ctx, d, bytes.NewReader(blob)); err != nil {
		t.Fatal(err)
	}
	rc, err := c.AdminOpenBlob(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(rc)
	rc.Close()
	if !bytes.Equal(got, blob) {
		t.Fatalf("the blob read back is %q", got)
	}
}
