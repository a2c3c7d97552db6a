package node

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/cas"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/group"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/internal/files"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/tree"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/tree/treetest"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/volume"
	"golang.org/x/sys/unix"
)

// newNode opens, below a fresh directory, the node tier of the one member
// of a group, with its store and home.
func newNode(t testing.TB) (*Node, *volume.Home) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for ownership and whiteouts")
	}
	base := t.TempDir()
	s, err := cas.OpenStore(filepath.Join(base, "store"), cas.Limits{})
	if err != nil {
		t.Fatal(err)
	}
	h, err := volume.Open(s, filepath.Join(base, "meta"))
	if err != nil {
		t.Fatal(err)
	}
	n, err := Open(filepath.Join(base, "node"), group.New(group.Config{Name: "g", Member: "m1", Home: h, Store: s, Replicas: 1}))
	if err != nil {
		t.Fatal(err)
	}
	// Disks made ahead stay mounted until the node's Run ends; a test that
	// made some without Run drops them.
	t.Cleanup(func() {
		n.running.Wait()
		n.disks.free(func(string) bool { return true })
	})
	return n, h
}

// layerWith creates a layer for vol whose upper directory holds what fill
// makes, as an overlay would have left it, and submits it to the outbox.
func layerWith(t testing.TB, n *Node, vol volume.Volume, target string, fill func(upper string)) {
	t.Helper()
	upper, _, err := n.NewLayer(Layer{VolumeID: vol.ID, Target: target, Base: vol.Root, Commit: true})
	if err != nil {
		t.Fatal(err)
	}
	fill(upper)
	if err := n.Submit(target); err != nil {
		t.Fatal(err)
	}
}

func outboxEntry(t *testing.T, n *Node) string {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(n.dir, "outbox"))
	if err != nil || len(ents) != 1 {
		t.Fatalf("outbox: %v %v", ents, err)
	}
	return filepath.Join(n.dir, "outbox", ents[0].Name())
}

func TestScanUpperReadsOverlayMarkers(t *testing.T) {
	n, l := newNode(t)
	ctx := context.Background()
	v, _ := l.CreateVolume(ctx, volume.Spec{Name: "v"})
	layerWith(t, n, v, "/pods/a", func(up string) {
		os.WriteFile(filepath.Join(up, "f"), []byte("data"), 0o6755)
		unix.Mknod(filepath.Join(up, "deleted"), unix.S_IFCHR, 0) // whiteout
		os.Mkdir(filepath.Join(up, "opaque"), 0o755)
		unix.Setxattr(filepath.Join(up, "opaque"), "trusted.overlay.opaque", []byte("y"), 0)
		unix.Mknod(filepath.Join(up, "dev"), unix.S_IFCHR, int(unix.Mkdev(1, 3)))
		os.Symlink("/etc/shadow", filepath.Join(up, "link"))
	})
	m, err := scanUpper(filepath.Join(outboxEntry(t, n), "upper"), nil, nil, n.store, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]tree.OpKind{}
	for _, op := range m.Commit.Ops {
		kinds[op.Path] = op.Kind
		if op.Path == "f" && (op.Entry.Mode != 0o755 || op.Entry.Digest != cas.Sum([]byte("data"))) {
			t.Fatalf("f: mode %o digest %s", op.Entry.Mode, op.Entry.Digest)
		}
		if op.Path == "link" && op.Entry.Target != "/etc/shadow" {
			t.Fatalf("link target %q", op.Entry.Target)
		}
	}
	want := map[string]tree.OpKind{"f": tree.OpUpsert, "deleted": tree.OpDelete, "opaque": tree.OpReplace, "link": tree.OpUpsert}
	if len(kinds) != len(want) {
		t.Fatalf("ops %v, want %v", kinds, want)
	}
	for p, k := range want {
		if kinds[p] != k {
			t.Fatalf("op for %s: %d, want %d", p, kinds[p], k)
		}
	}
	if m.Dropped != 1 {
		t.Fatalf("dropped %d, want the device file", m.Dropped)
	}
}

// A crash after the manifest is written and some files were moved into the
// store must not lose the moved files: the retry finds them by digest.
func TestCommitResumesAfterCrashMidway(t *testing.T) {
	n, l := newNode(t)
	ctx := context.Background()
	v, _ := l.CreateVolume(ctx, volume.Spec{Name: "v", Quota: 1 << 20})
	layerWith(t, n, v, "/pods/a", func(up string) {
		os.WriteFile(filepath.Join(up, "one"), []byte("1"), 0o644)
		os.WriteFile(filepath.Join(up, "two"), []byte("2"), 0o644)
	})
	entry := outboxEntry(t, n)
	// First attempt, up to the crash: manifest written, one file moved.
	m, err := scanUpper(filepath.Join(entry, "upper"), nil, nil, n.store, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	m.Commit.Base = v.Root
	b, _ := json.Marshal(&m)
	if err := files.WriteAtomic(filepath.Join(entry, "manifest.json"), b); err != nil {
		t.Fatal(err)
	}
	if _, err := n.store.Adopt(filepath.Join(entry, "upper", "one"), cas.Sum([]byte("1")), 1); err != nil {
		t.Fatal(err)
	}
	// A new process drains the outbox.
	n2, err := Open(n.dir, n.group)
	if err != nil {
		t.Fatal(err)
	}
	ctx2, cancel := context.WithCancel(ctx)
	defer cancel()
	go n2.Run(ctx2)
	if err := n2.WaitIdle(ctx); err != nil {
		t.Fatal(err)
	}
	cur, _ := l.Volume(ctx, v.ID)
	if got := treetest.Listing(t, n.store, cur.Root); got != "one=1 two=2" {
		t.Fatalf("after resume: %q", got)
	}
}

func TestSnapshotReproducesTreeWithSharedContent(t *testing.T) {
	n, l := newNode(t)
	ctx := context.Background()
	s := n.store
	v, _ := l.CreateVolume(ctx, volume.Spec{Name: "v"})
	// Two files with the same bytes and different metadata: one inode
	// cannot carry both, so one of them is a variant.
	a := treetest.File(t, s, "a", "same", 111)
	b := treetest.File(t, s, "d/b", "same", 222)
	b.Entry.Mode, b.Entry.UID = 0o600, 42
	r, err := l.Commit(ctx, v.ID, &tree.Commit{Ops: []tree.Op{a, treetest.Dir("d"), b, treetest.Dir("empty")}})
	if err != nil {
		t.Fatal(err)
	}
	snap, err := n.Materialize(ctx, r.Volume.Root, Want{VolumeID: v.ID})
	if err != nil {
		t.Fatal(err)
	}
	var sa, sb unix.Stat_t
	must(t, unix.Lstat(filepath.Join(snap, "a"), &sa))
	must(t, unix.Lstat(filepath.Join(snap, "d/b"), &sb))
	if sa.Mtim.Nano() != 111 || sb.Mtim.Nano() != 222 || sb.Mode&0o7777 != 0o600 || sb.Uid != 42 {
		t.Fatalf("a: mtime %d; b: mtime %d mode %o uid %d", sa.Mtim.Nano(), sb.Mtim.Nano(), sb.Mode&0o7777, sb.Uid)
	}
	if sa.Ino == sb.Ino {
		t.Fatal("files with different metadata share an inode")
	}
	for _, p := range []string{"a", "d/b"} {
		if got, _ := os.ReadFile(filepath.Join(snap, p)); string(got) != "same" {
			t.Fatalf("%s holds %q", p, got)
		}
	}
	if fi, err := os.Stat(filepath.Join(snap, "empty")); err != nil || !fi.IsDir() {
		t.Fatalf("empty dir: %v", err)
	}
	// A second snapshot that shares the file links to the same inode.
	r2, err := l.Commit(ctx, v.ID, &tree.Commit{Ops: []tree.Op{treetest.File(t, s, "c", "new", 3)}})
	if err != nil {
		t.Fatal(err)
	}
	snap2, err := n.Materialize(ctx, r2.Volume.Root, Want{VolumeID: v.ID})
	if err != nil {
		t.Fatal(err)
	}
	var sa2 unix.Stat_t
	must(t, unix.Lstat(filepath.Join(snap2, "a"), &sa2))
	if sa2.Ino != sa.Ino {
		t.Fatal("unchanged file was not shared between snapshots")
	}
	// Pruning keeps what is asked for and drops the rest.
	if err := n.Prune(r2.Volume.Root); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(snap); !os.IsNotExist(err) {
		t.Fatalf("old snapshot kept: %v", err)
	}
	if _, err := os.Lstat(snap2); err != nil {
		t.Fatalf("kept snapshot gone: %v", err)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// A commit's blobs are pinned from its start to its end, however many
// commits name them, and what a pin is given as it goes adds to it.
func TestPinnedBlobs(t *testing.T) {
	n, _ := newNode(t)
	d, other, later := cas.Sum([]byte("blob")), cas.Sum([]byte("other")), cas.Sum([]byte("later"))
	first, second := n.newPin(), n.newPin()
	first.add([]uint64{short(other), short(d)})
	second.set([]uint64{short(d)})
	if n.Pinned(later) {
		t.Fatal("a blob no pin holds is pinned")
	}
	first.add([]uint64{short(later)})
	if !n.Pinned(later) || !n.Pinned(other) {
		t.Fatal("a blob added to a pin is not pinned")
	}
	first.drop()
	if !n.Pinned(d) {
		t.Fatal("a blob of a commit in progress is not pinned")
	}
	if n.Pinned(other) || n.Pinned(later) {
		t.Fatal("a blob of a commit that ended is still pinned")
	}
	second.drop()
	if n.Pinned(d) {
		t.Fatal("a blob no commit names is still pinned")
	}
}

// The blobs an outbox entry's manifest names are kept from collection by
// the keys written with it, and, for an entry whose manifest came before
// keys did, by the manifest itself.
func TestKeepsFollowsTheOutboxManifests(t *testing.T) {
	n, l := newNode(t)
	ctx := context.Background()
	v, _ := l.CreateVolume(ctx, volume.Spec{Name: "v", Quota: 1 << 20})
	layerWith(t, n, v, "/pods/a", func(up string) {
		os.WriteFile(filepath.Join(up, "one"), []byte("1"), 0o644)
		os.WriteFile(filepath.Join(up, "two"), []byte("2"), 0o644)
	})
	entry := outboxEntry(t, n)
	if keeps := n.Keeps(); keeps(cas.Sum([]byte("1"))) {
		t.Fatal("a blob is kept before any manifest names it")
	}
	la, ok, err := readLayer(entry)
	if err != nil || !ok {
		t.Fatalf("layer of the entry: %v %v", ok, err)
	}
	if _, err := n.manifestOf(ctx, entry, la, n.newPin()); err != nil {
		t.Fatal(err)
	}
	check := func(when string) {
		keeps := n.Keeps()
		for _, c := range []string{"1", "2"} {
			if !keeps(cas.Sum([]byte(c))) {
				t.Fatalf("%s: blob of %q, named by the manifest, is not kept", when, c)
			}
		}
		if keeps(cas.Sum([]byte("3"))) {
			t.Fatalf("%s: a blob no manifest names is kept", when)
		}
	}
	check("with keys")
	if err := os.Remove(filepath.Join(entry, keysFile)); err != nil {
		t.Fatal(err)
	}
	check("with a manifest only")
	if _, err := os.Stat(filepath.Join(entry, keysFile)); err != nil {
		t.Fatalf("the keys of a manifest without them were not written down: %v", err)
	}
}

// A scan longer than the garbage grace loses nothing it stored: each part
// is kept from collection as soon as it is stored, before any manifest or
// keys file names it.
func TestAScanKeepsThePartsItStores(t *testing.T) {
	n, l := newNode(t)
	v, _ := l.CreateVolume(context.Background(), volume.Spec{Name: "v", Quota: 1 << 30})
	layerWith(t, n, v, "/pods/a", func(up string) {
		for i := range tree.PartOps + 300 { // two parts
			must(t, os.WriteFile(filepath.Join(up, fmt.Sprint("f", i)), fmt.Append(nil, i), 0o644))
		}
	})
	entry := outboxEntry(t, n)
	kept := n.newPin()
	defer kept.drop()
	m, err := scanUpper(filepath.Join(entry, "upper"), nil, nil, n.store, false, kept.add)
	must(t, err)
	if len(m.Commit.Parts) < 2 {
		t.Fatalf("%d parts, want 2", len(m.Commit.Parts))
	}
	keeps := n.Keeps() // the entry has neither manifest nor keys yet
	for _, p := range m.Commit.Parts {
		if !keeps(p.Digest) {
			t.Fatalf("part %s of a scan is not kept", p.Digest)
		}
	}
}
