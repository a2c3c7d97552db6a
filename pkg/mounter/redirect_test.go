package mounter

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// redirectOf returns upper directory path's trusted.overlay.redirect, "" if
// it has none.
func redirectOf(t *testing.T, path string) string {
	t.Helper()
	buf := make([]byte, 4096)
	n, err := unix.Lgetxattr(path, "trusted.overlay.redirect", buf)
	if errors.Is(err, unix.ENODATA) {
		return ""
	}
	if err != nil {
		t.Fatalf("redirect of %s: %v", path, err)
	}
	return string(buf[:n])
}

func mustWhiteout(t *testing.T, path string) {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		t.Fatalf("%s: want a whiteout: %v", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFCHR || st.Rdev != 0 {
		t.Errorf("%s: mode %#o rdev %d, want a whiteout", path, st.Mode, st.Rdev)
	}
}

func mustRename(t *testing.T, root, from, to string) {
	t.Helper()
	if err := os.Rename(filepath.Join(root, from), filepath.Join(root, to)); err != nil {
		t.Fatalf("rename %s %s: %v", from, to, err)
	}
}

// Renaming directories of the lower layer works as on a local disk, and
// the upper layer records each move as the committer expects: a relative
// redirect (the old name) for a rename in place, an absolute one (the path
// from the lower root) for a move to another directory, and a whiteout at
// the old path.
func TestOverlayRenamesDirectories(t *testing.T) {
	requireRoot(t)
	d := mkdirs(t, "lower", "upper", "work", "target")
	lower, upper, work, target := d[0], d[1], d[2], d[3]
	writeFile(t, filepath.Join(lower, "a/f"), "a/f")
	writeFile(t, filepath.Join(lower, "a/sub/g"), "a/sub/g")
	writeFile(t, filepath.Join(lower, "b/x/h"), "b/x/h")
	if err := os.MkdirAll(filepath.Join(lower, "c"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := Overlay(target, lower, upper, work); err != nil {
		t.Fatal(err)
	}
	cleanupMount(t, target)

	mustRename(t, target, "a", "a2")         // in place
	mustRename(t, target, "a2/sub", "sub3")  // nested, out of a renamed directory
	mustRename(t, target, "b/x", "c/x")      // to another directory
	mustRename(t, target, "c", "c2")         // the new parent of a moved directory
	mustRename(t, target, "c2/x", "c2/back") // and back in place
	for p, want := range map[string]string{
		"a2/f": "a/f", "sub3/g": "a/sub/g", "c2/back/h": "b/x/h",
	} {
		if got := readFile(t, filepath.Join(target, p)); got != want {
			t.Errorf("%s = %q, want %q", p, got, want)
		}
	}
	for _, p := range []string{"a", "a2/sub", "b/x", "c"} {
		mustNotExist(t, filepath.Join(target, p))
	}
	if err := Unmount(target); err != nil {
		t.Fatal(err)
	}

	for p, want := range map[string]string{"a2": "a", "sub3": "/a/sub", "c2": "c", "c2/back": "/b/x"} {
		if got := redirectOf(t, filepath.Join(upper, p)); got != want {
			t.Errorf("upper/%s redirect %q, want %q", p, got, want)
		}
	}
	for _, p := range []string{"a", "a2/sub", "b/x", "c"} {
		mustWhiteout(t, filepath.Join(upper, p))
	}
}

// The overlay stores an absolute redirect of at most redirect_max bytes:
// past it, a move of a lower directory to another directory is EXDEV, as
// with redirect_dir=off, while a rename in place still works.
func TestOverlayRedirectLimit(t *testing.T) {
	requireRoot(t)
	b, err := os.ReadFile("/sys/module/overlay/parameters/redirect_max")
	if err != nil {
		t.Skipf("overlay module parameters: %v", err)
	}
	limit, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || limit > 4000 {
		t.Skipf("redirect_max %q: no path of this test is long enough", b)
	}
	d := mkdirs(t, "lower", "upper", "work", "target")
	lower, upper, work, target := d[0], d[1], d[2], d[3]
	deep := strings.Repeat("d", 250) + "/" + strings.Repeat("e", 250)
	for len(deep) <= limit {
		deep += "/" + strings.Repeat("f", 250)
	}
	writeFile(t, filepath.Join(lower, deep, "leaf/x"), "x")
	if err := Overlay(target, lower, upper, work); err != nil {
		t.Fatal(err)
	}
	cleanupMount(t, target)
	err = os.Rename(filepath.Join(target, deep, "leaf"), filepath.Join(target, "leaf"))
	if !errors.Is(err, unix.EXDEV) {
		t.Errorf("move of a directory whose path is %d bytes: %v, want EXDEV", len(deep)+5, err)
	}
	mustRename(t, target, filepath.Join(deep, "leaf"), filepath.Join(deep, "leaf2"))
	if got := readFile(t, filepath.Join(target, deep, "leaf2/x")); got != "x" {
		t.Errorf("leaf2/x = %q", got)
	}
}
