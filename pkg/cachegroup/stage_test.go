package cachegroup

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/cas"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/node"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/tree"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/tree/treetest"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/volume"
	"golang.org/x/sys/unix"
)

// chunkyTree returns a layer filler that writes a tree larger than what a
// hydration reads at once: more directories than a chunk, more files than a
// batch, with modes, owners, mtimes (to the nanosecond), symlinks, empty
// directories, a deep chain, content shared between files and, if big, a
// blob too large for a batch and one too large to be read into memory.
func chunkyTree(t testing.TB, big bool) func(upper string) {
	return func(upper string) {
		t.Helper()
		var dirs, files, links []string
		mkdir := func(p string) {
			if err := os.MkdirAll(filepath.Join(upper, p), 0o755); err != nil {
				t.Fatal(err)
			}
			dirs = append(dirs, p)
		}
		write := func(p string, b []byte) {
			if err := os.WriteFile(filepath.Join(upper, p), b, 0o644); err != nil {
				t.Fatal(err)
			}
			files = append(files, p)
		}
		for g := range 40 {
			mkdir(fmt.Sprintf("g%02d", g))
			for a := range 30 {
				d := fmt.Sprintf("g%02d/a%02d", g, a)
				mkdir(d)
				for i := range 3 {
					// Every tenth content is shared by many files.
					write(fmt.Sprintf("%s/f%d", d, i), fmt.Appendf(nil, "content %d", ((g*30+a)*3+i)%1000))
				}
				if err := os.Symlink("f0", filepath.Join(upper, d, "link")); err != nil {
					t.Fatal(err)
				}
				links = append(links, d+"/link")
				if a%7 == 0 {
					mkdir(d + "/empty")
				}
			}
		}
		deep := "deep"
		for i := range 30 {
			deep = fmt.Sprintf("%s/d%d", deep, i)
			mkdir(deep)
		}
		write(deep+"/bottom", []byte("at the bottom"))
		if big {
			mkdir("big")
			write("big/dist.zip", bytes.Repeat([]byte("dist"), (16<<20)/4+1)) // past a batch's largest blob
			write("big/lib.jar", bytes.Repeat([]byte("jar!"), (2<<20)/4))     // past what a batch reads into memory
		}
		base := time.Date(2024, 6, 1, 12, 0, 0, 0, time.UTC).UnixNano()
		meta := func(p string, i int, mode uint32, symlink bool) {
			full := filepath.Join(upper, p)
			uid := 1000 * (i % 3)
			if err := unix.Lchown(full, uid, uid+i%2); err != nil {
				t.Fatal(err)
			}
			if !symlink {
				if err := unix.Chmod(full, mode); err != nil {
					t.Fatal(err)
				}
			}
			ts := []unix.Timespec{unix.NsecToTimespec(base + int64(i)*1e9 + int64(i)), unix.NsecToTimespec(base + int64(i)*1e9 + int64(i))}
			if err := unix.UtimesNanoAt(unix.AT_FDCWD, full, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
				t.Fatal(err)
			}
		}
		for i, p := range files {
			meta(p, i, []uint32{0o644, 0o755, 0o600, 0o444}[i%4], false)
		}
		for i, p := range links {
			meta(p, i, 0, true)
		}
		// Deepest first, after everything is in: an entry made changes the
		// mtime of its directory.
		slices.Reverse(dirs)
		for i, p := range dirs {
			meta(p, i, []uint32{0o755, 0o700, 0o555, 0o750, 0o1777}[i%5], false)
		}
	}
}

// commitTree commits what fill writes as a new volume on m and returns the
// volume's head.
func commitTree(t *testing.T, m *member, fill func(upper string)) volume.Volume {
	t.Helper()
	ctx := context.Background()
	vol, err := m.group.CreateVolume(ctx, volume.Spec{Name: "chunky", Quota: 1 << 30}, "")
	if err != nil {
		t.Fatal(err)
	}
	return land(t, m, vol, fill, 2*time.Minute)
}

// A snapshot many chunks and batches large stages exactly: every entry with
// its content and metadata, fetched from several members.
func TestStageOfManyChunksIsExact(t *testing.T) {
	ms := newGroup(t, 3)
	head := commitTree(t, ms[0], chunkyTree(t, true))
	c := newClient(t, ms)
	dir, err := c.node.Materialize(context.Background(), head.Root, node.Want{VolumeID: head.ID})
	if err != nil {
		t.Fatal(err)
	}
	if n := treetest.Same(t, c.store, head.Root, dir); n < 5000 {
		t.Fatalf("%d entries checked: the tree is smaller than meant", n)
	}
}

// A hydration that fails midway (blobs and a tree object its only member
// lost) leaves its work directory, part filled and with a file half
// written; once the member has them again, the next stage resumes it and
// the snapshot is exact.
func TestStageResumesAfterAFailureMidway(t *testing.T) {
	ms := newGroup(t, 1)
	a := ms[0]
	head := commitTree(t, a, chunkyTree(t, false))
	ctx := context.Background()

	// What the member loses: the files of a few directories, and the tree
	// object of another.
	lost := map[cas.Digest][]byte{}
	var halfWritten string
	root, err := tree.Load(a.store, head.Root)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"g07/a13", "g21/a04", "g33/a27", "g28/a19"} {
		d := root
		var e tree.Entry
		for _, name := range []string{p[:3], p[4:]} {
			e = d.Entries[d.Find(name)]
			if d, err = tree.Load(a.store, e.Digest); err != nil {
				t.Fatal(err)
			}
		}
		lose := []cas.Digest{e.Digest}
		if p != "g28/a19" {
			lose = lose[:0]
			for _, f := range d.Entries {
				if f.Type == tree.TypeFile {
					lose = append(lose, f.Digest)
				}
			}
			halfWritten = p + "/f1"
		}
		for _, d := range lose {
			b, err := a.store.ReadAll(d)
			if err != nil {
				t.Fatal(err)
			}
			lost[d] = b
			if err := os.Remove(a.store.Path(d)); err != nil {
				t.Fatal(err)
			}
		}
	}

	c := newClient(t, ms)
	if _, err := c.node.Materialize(ctx, head.Root, node.Want{VolumeID: head.ID}); err == nil {
		t.Fatal("staged a snapshot whose blobs are nowhere")
	}
	work := filepath.Join(c.cfg.Dir, "node", "snaps", ".work-"+head.Root.String())
	var made int
	err = filepath.WalkDir(work, func(_ string, _ fs.DirEntry, err error) error {
		made++
		return err
	})
	if err != nil {
		t.Fatalf("work directory of the failed hydration: %v", err)
	}
	if made < 2 || made >= int(head.Count) {
		t.Fatalf("%d of %d entries made before the failure: not midway", made, head.Count)
	}
	t.Logf("%d of %d entries made before the failure", made, head.Count)
	// As a crash mid-write leaves it, where the directory was made.
	if _, err := os.Stat(filepath.Dir(filepath.Join(work, halfWritten))); err == nil {
		if err := os.WriteFile(filepath.Join(work, halfWritten), []byte("half"), 0o600); err != nil {
			t.Fatal(err)
		}
	}

	for _, b := range lost {
		if _, err := a.store.PutBytes(b); err != nil {
			t.Fatal(err)
		}
	}
	dir, err := c.node.Materialize(ctx, head.Root, node.Want{VolumeID: head.ID})
	if err != nil {
		t.Fatal(err)
	}
	if n := treetest.Same(t, c.store, head.Root, dir); n != int(head.Count) {
		t.Fatalf("%d entries checked, the tree has %d", n, head.Count)
	}
}
