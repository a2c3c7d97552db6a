package mounter

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// A stack of lower layers, newest first: a whiteout or an opaque directory
// in a newer layer hides what the older ones have, and a name a newer layer
// has wins. The same stack mounts read-only without an upper layer.
func TestStackedLowerLayers(t *testing.T) {
	requireRoot(t)
	d := mkdirs(t, "old", "new", "upper", "work", "rw", "ro")
	old, nw, upper, work, rw, ro := d[0], d[1], d[2], d[3], d[4], d[5]
	writeFile(t, filepath.Join(old, "kept"), "old kept")
	writeFile(t, filepath.Join(old, "changed"), "old")
	writeFile(t, filepath.Join(old, "deleted"), "x")
	writeFile(t, filepath.Join(old, "replaced/gone"), "x")
	writeFile(t, filepath.Join(old, "merged/a"), "a")
	writeFile(t, filepath.Join(nw, "changed"), "new")
	if err := unix.Mknod(filepath.Join(nw, "deleted"), unix.S_IFCHR, 0); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(nw, "replaced/only"), "only")
	if err := unix.Setxattr(filepath.Join(nw, "replaced"), "trusted.overlay.opaque", []byte("y"), 0); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(nw, "merged/b"), "b")

	if err := OverlayStack(rw, []string{nw, old}, upper, work); err != nil {
		t.Fatal(err)
	}
	cleanupMount(t, rw)
	if err := ReadOnlyStack(ro, []string{nw, old}); err != nil {
		t.Fatal(err)
	}
	cleanupMount(t, ro)
	for _, m := range []string{rw, ro} {
		if got := listing(t, m); got != "changed=new kept=old kept merged/ merged/a=a merged/b=b replaced/ replaced/only=only" {
			t.Fatalf("%s: %s", m, got)
		}
	}
	if err := os.WriteFile(filepath.Join(ro, "new"), nil, 0o644); err == nil {
		t.Fatal("wrote into a read-only stack")
	}
	if err := ReadOnlyStack(t.TempDir(), []string{old}); err == nil {
		t.Fatal("a read-only stack of one layer mounted: it is a bind")
	}
	if err := OverlayStack(t.TempDir(), []string{nw, "/a:b"}, upper, work); err == nil {
		t.Fatal("a lower layer path with ':' accepted")
	}
}

func listing(t *testing.T, dir string) string {
	t.Helper()
	var out []string
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil || p == dir {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if fi.IsDir() {
			out = append(out, rel+"/")
		} else {
			b, _ := os.ReadFile(p)
			out = append(out, rel+"="+string(b))
		}
		return nil
	})
	return strings.Join(out, " ")
}
