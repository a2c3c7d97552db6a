package cachegroup

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/cas"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/node"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/tree"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/volume"
)

// A home applies a commit only if every blob it names is at its owners with
// the size it claims: a commit naming a blob nobody has would make a head no
// node can stage, and a smaller size than the blob's would pass the quota.
func TestHomesCheckACommitsBlobsAtTheirOwners(t *testing.T) {
	ms := newGroup(t, 3)
	ctx := context.Background()
	a := ms[0]
	vol, err := a.group.CreateVolume(ctx, volume.Spec{Name: "v", Quota: 1 << 20}, "")
	if err != nil {
		t.Fatal(err)
	}
	commitFiles(t, a, vol, map[string]string{"kept": "acknowledged"})
	head, err := a.group.Volume(ctx, vol.ID)
	if err != nil {
		t.Fatal(err)
	}
	// The committer is the member that is no home of the volume.
	_, _, c := roles(ms, a.group.Homes(vol.ID))
	file := func(content string, size int64) *tree.Commit {
		return &tree.Commit{Base: head.Root, Ops: []tree.Op{{Kind: tree.OpUpsert, Path: "f",
			Entry: tree.Entry{Type: tree.TypeFile, Mode: 0o644, Size: size, Digest: cas.Sum([]byte(content))}}}}
	}
	if _, err := c.group.Commit(ctx, vol.ID, file("no member has this", 18)); !errors.Is(err, volume.ErrMissingBlob) {
		t.Fatalf("a commit naming a blob no member has: %v, want ErrMissingBlob", err)
	}
	// A blob at its owners, claimed smaller than it is.
	content := "a blob of thirty-three bytes here"
	d, err := c.store.PutBytes([]byte(content))
	if err != nil {
		t.Fatal(err)
	}
	if err := c.group.Push(ctx, d); err != nil {
		t.Fatal(err)
	}
	if _, err := c.group.Commit(ctx, vol.ID, file(content, 1)); !errors.Is(err, tree.ErrInvalid) {
		t.Fatalf("a commit claiming a wrong size: %v, want tree.ErrInvalid", err)
	}
	after, err := c.group.Volume(ctx, vol.ID)
	if err != nil || after.Root != head.Root {
		t.Fatalf("refused commits changed the head: %v -> %v (%v)", head.Root, after.Root, err)
	}
	// The volume stays stageable on every node, and the true claim lands.
	for _, m := range ms {
		if _, err := m.node.Materialize(ctx, after.Root, node.Want{VolumeID: vol.ID}); err != nil {
			t.Fatalf("stage on %s after the refused commits: %v", m.name, err)
		}
	}
	// Many missing blobs and one false size: the answer says the commit is
	// invalid, names a few blobs and counts the rest.
	many := file(content, 1)
	for i := range 200 {
		many.Ops = append(many.Ops, tree.Op{Kind: tree.OpUpsert, Path: fmt.Sprintf("m%d", i),
			Entry: tree.Entry{Type: tree.TypeFile, Mode: 0o644, Size: 9, Digest: cas.Sum([]byte(fmt.Sprint(i)))}})
	}
	_, err = c.group.Commit(ctx, vol.ID, many)
	if !errors.Is(err, tree.ErrInvalid) || len(err.Error()) > 2000 || !strings.Contains(err.Error(), "and 197 blobs more") {
		t.Fatalf("200 missing blobs and a false size: %.300v (%d bytes), want a short ErrInvalid", err, len(err.Error()))
	}
	if _, err := c.group.Commit(ctx, vol.ID, file(content, int64(len(content)))); err != nil {
		t.Fatalf("a commit whose blobs are at their owners: %v", err)
	}
}
