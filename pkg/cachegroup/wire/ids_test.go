package wire

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"testing"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/cas"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/tree"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/volume"
)

func jsonOf(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestBodiesMustNameThePathsID(t *testing.T) {
	auth := NewSecretAuth(testSecret)
	p := servePeer(t, "member-a", auth)
	a, b := volume.ID("a"), volume.ID("b")
	do := func(method, uri string, body []byte) int {
		t.Helper()
		return status(t, signedReq(t, auth, method, p.addr, uri, body, "member-b", "member-a"))
	}
	if code := do("PUT", "/v1/volumes/"+a+"/head", jsonOf(t, volume.Volume{ID: b, Name: "b", Generation: 1})); code != http.StatusBadRequest {
		t.Fatalf("volume b's head put as a's: %d, want 400", code)
	}
	if _, err := p.b.home.Volume(context.Background(), b); !errors.Is(err, cas.ErrNotFound) {
		t.Fatalf("volume b's head was kept: %v", err)
	}
	sa, sb := volume.SnapshotID("a"), volume.SnapshotID("b")
	if code := do("PUT", "/v1/snapshots/"+sa, jsonOf(t, volume.Snapshot{ID: sb, Name: "b", VolumeID: a})); code != http.StatusBadRequest {
		t.Fatalf("snapshot b put as a: %d, want 400", code)
	}
	if code := do("PUT", "/v1/volumes/"+a+"/head", jsonOf(t, volume.Volume{ID: a, Name: "a", Generation: 1})); code != http.StatusNoContent {
		t.Fatalf("a's head put as a's: %d", code)
	}
	if code := do("PUT", "/v1/snapshots/"+sa, jsonOf(t, volume.Snapshot{ID: sa, Name: "a", VolumeID: a})); code != http.StatusNoContent {
		t.Fatalf("snapshot a put as a: %d", code)
	}
	// A member names only itself as a holder of a snapshot.
	root := cas.Sum([]byte("root")).String()
	if code := do("POST", "/v1/holders/"+root, jsonOf(t, struct{ Member string }{"member-c"})); code != http.StatusBadRequest {
		t.Fatalf("member-b names member-c a holder: %d, want 400", code)
	}
	if code := do("POST", "/v1/holders/"+root, jsonOf(t, struct{ Member string }{"member-b"})); code != http.StatusNoContent {
		t.Fatalf("member-b names itself a holder: %d", code)
	}
}

func TestBadIdsDigestsAndBodiesAre400Or422(t *testing.T) {
	auth := NewSecretAuth(testSecret)
	p := servePeer(t, "member-a", auth)
	vol, err := p.b.home.CreateVolume(context.Background(), volume.Spec{Name: "v", Quota: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	badCommit := jsonOf(t, tree.Commit{Ops: []tree.Op{{Kind: tree.OpUpsert, Path: "../etc/passwd", Entry: tree.Entry{Type: tree.TypeFile}}}})
	for _, c := range []struct {
		method, uri string
		body        []byte
		want        int
	}{
		{"GET", "/v1/volumes/vol-XYZ", nil, 400},
		{"GET", "/v1/volumes/..%2Fmeta", nil, 400},
		{"DELETE", "/v1/volumes/" + volume.SnapshotID("v"), nil, 400},
		{"POST", "/v1/volumes/vol-1/expand", []byte(`{"Quota":1}`), 400},
		{"POST", "/v1/volumes/vol-1/commit", []byte(`{"ops":[]}`), 400},
		{"PUT", "/v1/volumes/vol-1/head", []byte(`{"id":"vol-1"}`), 400},
		{"GET", "/v1/snapshots/" + vol.ID, nil, 400},
		{"PUT", "/v1/snapshots/snap-1", []byte(`{"id":"snap-1"}`), 400},
		{"DELETE", "/v1/snapshots/snap-%00", nil, 400},
		{"PUT", "/v1/blobs/zz", []byte("blob"), 400},
		{"POST", "/v1/blobs/zz/verify", nil, 400},
		{"GET", "/v1/blobs/zz", nil, 400},
		{"GET", "/v1/holders/zz", nil, 400},
		{"POST", "/v1/holders/zz", []byte(`{"Member":"member-b"}`), 400},
		{"POST", "/v1/volumes/" + vol.ID + "/commit", []byte(`{"ops":[`), 400},
		{"POST", "/v1/volumes/" + vol.ID + "/commit", []byte(`{"ops":"x"}`), 400},
		{"POST", "/v1/volumes/" + vol.ID + "/commit", []byte(`{"base":"zz"}`), 400},
		{"POST", "/v1/volumes", []byte(`[]`), 400},
		{"POST", "/v1/sizes", []byte(`["zz"]`), 400},
		{"POST", "/v1/volumes/" + vol.ID + "/commit", badCommit, 422},
		{"POST", "/v1/blobs", []byte("not a whole ref"), 400},
		{"GET", "/v1/volumes", []byte("a body where none goes"), 413},
	} {
		if code := status(t, signedReq(t, auth, c.method, p.addr, c.uri, c.body, "member-b", "member-a")); code != c.want {
			t.Errorf("%s %s %.20q: %d, want %d", c.method, c.uri, c.body, code, c.want)
		}
	}
	if n := p.refused(t, reasonBadRequest); n != 20 {
		t.Errorf("refused as bad requests: %v, want 20", n)
	}
	if n := p.refused(t, reasonInvalid); n != 1 {
		t.Errorf("refused as invalid: %v, want 1", n)
	}

	// The client says which: an invalid commit is not a corrupt blob.
	cl := NewClient("member-a", p.addr, "member-b", auth)
	var c tree.Commit
	json.Unmarshal(badCommit, &c)
	if _, err := cl.Commit(context.Background(), vol.ID, &c); !errors.Is(err, tree.ErrInvalid) || errors.Is(err, cas.ErrCorrupt) {
		t.Fatalf("an invalid commit: %v, want tree.ErrInvalid", err)
	}
	// Ids are escaped into paths: an id with a slash reaches the id check.
	if _, err := cl.Volume(context.Background(), "vol-1/../../snapshots"); !errors.Is(err, volume.ErrInvalidID) {
		t.Fatalf("an id with slashes: %v, want ErrInvalidID", err)
	}
	if err := cl.DeleteSnapshot(context.Background(), "snap-?x=1"); !errors.Is(err, volume.ErrInvalidID) {
		t.Fatalf("an id with a query: %v, want ErrInvalidID", err)
	}
}
