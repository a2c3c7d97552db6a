package mounter

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/moby/sys/mountinfo"
	"golang.org/x/sys/unix"
)

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for real mounts")
	}
}

// mkdirs creates the named directories below a fresh temporary directory
// and returns their paths (symlinks resolved, as /proc/self/mountinfo shows them).
func mkdirs(t *testing.T, names ...string) []string {
	t.Helper()
	base, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var paths []string
	for _, n := range names {
		p := filepath.Join(base, n)
		if err := os.MkdirAll(p, 0o755); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p)
	}
	return paths
}

// cleanupMount unmounts target when the test ends (before its temporary
// directory is removed).
func cleanupMount(t *testing.T, target string) {
	t.Helper()
	t.Cleanup(func() {
		if err := Unmount(target); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// mountAt returns the mountinfo entry of the top mount at path.
func mountAt(t *testing.T, path string) *mountinfo.Info {
	t.Helper()
	infos, err := mountinfo.GetMounts(mountinfo.SingleEntryFilter(path))
	if err != nil {
		t.Fatal(err)
	}
	if len(infos) == 0 {
		t.Fatalf("%s is not in /proc/self/mountinfo", path)
	}
	return infos[len(infos)-1]
}

func hasOpts(t *testing.T, path, what, opts string, want ...string) {
	t.Helper()
	list := strings.Split(opts, ",")
	for _, w := range want {
		if !slices.Contains(list, w) {
			t.Errorf("%s options of %s = %q, want %q among them", what, path, opts, w)
		}
	}
}

func mustMounted(t *testing.T, path string, want bool) {
	t.Helper()
	got, err := IsMountPoint(path)
	if err != nil {
		t.Fatalf("IsMountPoint(%s): %v", path, err)
	}
	if got != want {
		t.Fatalf("IsMountPoint(%s) = %v, want %v", path, got, want)
	}
}

func mustNotExist(t *testing.T, path string) {
	t.Helper()
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s: want not to exist, got err %v", path, err)
	}
}

func TestOverlay(t *testing.T) {
	requireRoot(t)
	d := mkdirs(t, "lower", "upper", "work", "target")
	lower, upper, work, target := d[0], d[1], d[2], d[3]
	writeFile(t, filepath.Join(lower, "a"), "lower a")
	writeFile(t, filepath.Join(lower, "meta"), "full data")
	writeFile(t, filepath.Join(lower, "gone"), "x")
	writeFile(t, filepath.Join(lower, "dir/sub/f"), "f")
	writeFile(t, filepath.Join(lower, "replaced/old"), "old")

	if err := Overlay(target, lower, upper, work); err != nil {
		t.Fatal(err)
	}
	cleanupMount(t, target)
	mustMounted(t, target, true)

	mi := mountAt(t, target)
	if mi.FSType != "overlay" {
		t.Errorf("fstype %q, want overlay", mi.FSType)
	}
	hasOpts(t, target, "mount", mi.Options, "rw", "nosuid", "nodev")
	hasOpts(t, target, "superblock", mi.VFSOptions, "fsync=volatile", "redirect_dir=on")
	for _, bad := range []string{"metacopy=on", "index=on", "xino=on"} {
		if slices.Contains(strings.Split(mi.VFSOptions, ","), bad) {
			t.Errorf("superblock options %q contain %s", mi.VFSOptions, bad)
		}
	}

	// Lower files are visible.
	if got := readFile(t, filepath.Join(target, "a")); got != "lower a" {
		t.Errorf("read a = %q", got)
	}
	if got := readFile(t, filepath.Join(target, "dir/sub/f")); got != "f" {
		t.Errorf("read dir/sub/f = %q", got)
	}

	// New files and changes go to upper, lower stays as it was.
	writeFile(t, filepath.Join(target, "new"), "new")
	if got := readFile(t, filepath.Join(upper, "new")); got != "new" {
		t.Errorf("upper/new = %q", got)
	}
	mustNotExist(t, filepath.Join(lower, "new"))
	writeFile(t, filepath.Join(target, "a"), "changed")
	if got := readFile(t, filepath.Join(upper, "a")); got != "changed" {
		t.Errorf("upper/a = %q", got)
	}
	if got := readFile(t, filepath.Join(lower, "a")); got != "lower a" {
		t.Errorf("lower/a changed to %q", got)
	}

	// metacopy=off: a metadata-only change copies the full data up.
	if err := os.Chmod(filepath.Join(target, "meta"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, filepath.Join(upper, "meta")); got != "full data" {
		t.Errorf("upper/meta = %q, want the full data", got)
	}
	if _, err := unix.Lgetxattr(filepath.Join(upper, "meta"), "trusted.overlay.metacopy", nil); !errors.Is(err, unix.ENODATA) {
		t.Errorf("upper/meta has a metacopy xattr (err %v)", err)
	}

	// Deleting a lower file leaves a whiteout: a character device 0/0.
	if err := os.Remove(filepath.Join(target, "gone")); err != nil {
		t.Fatal(err)
	}
	mustNotExist(t, filepath.Join(target, "gone"))
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(upper, "gone"), &st); err != nil {
		t.Fatal(err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFCHR || unix.Major(st.Rdev) != 0 || unix.Minor(st.Rdev) != 0 {
		t.Errorf("upper/gone: mode %#o rdev %d:%d, want a 0/0 character device",
			st.Mode, unix.Major(st.Rdev), unix.Minor(st.Rdev))
	}
	if _, err := os.Stat(filepath.Join(lower, "gone")); err != nil {
		t.Errorf("lower/gone: %v", err)
	}

	// Replacing a lower directory makes an opaque directory.
	if err := os.RemoveAll(filepath.Join(target, "replaced")); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(target, "replaced"), 0o755); err != nil {
		t.Fatal(err)
	}
	mustNotExist(t, filepath.Join(target, "replaced/old"))
	buf := make([]byte, 16)
	n, err := unix.Lgetxattr(filepath.Join(upper, "replaced"), "trusted.overlay.opaque", buf)
	if err != nil || string(buf[:n]) != "y" {
		t.Errorf("upper/replaced opaque xattr = %q, %v; want \"y\"", buf[:n], err)
	}

	// A file rename is fine.
	if err := os.Rename(filepath.Join(target, "dir/sub/f"), filepath.Join(target, "dir/sub/g")); err != nil {
		t.Errorf("rename of a lower file: %v", err)
	}
	// redirect_dir=on: so is renaming a lower directory (TestOverlayRenamesDirectories).
	if err := os.Rename(filepath.Join(target, "dir"), filepath.Join(target, "dir2")); err != nil {
		t.Errorf("rename of a lower directory: %v", err)
	}
	// A directory created in the overlay can be renamed.
	if err := os.Mkdir(filepath.Join(target, "fresh"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(target, "fresh"), filepath.Join(target, "fresh2")); err != nil {
		t.Errorf("rename of an upper directory: %v", err)
	}

	// Unmount, sync the upper layer: the writes are there as plain files.
	if err := Unmount(target); err != nil {
		t.Fatal(err)
	}
	mustMounted(t, target, false)
	if err := SyncFS(upper); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, filepath.Join(upper, "dir2/sub/g")); got != "f" {
		t.Errorf("upper/dir2/sub/g = %q", got)
	}
	// Unmounting again is fine.
	if err := Unmount(target); err != nil {
		t.Errorf("second Unmount: %v", err)
	}
}

func TestOverlayReusedVolatileWorkdir(t *testing.T) {
	requireRoot(t)
	d := mkdirs(t, "lower", "upper", "work", "target")
	lower, upper, work, target := d[0], d[1], d[2], d[3]
	if err := Overlay(target, lower, upper, work); err != nil {
		t.Fatal(err)
	}
	cleanupMount(t, target)
	if err := Unmount(target); err != nil {
		t.Fatal(err)
	}
	err := Overlay(target, lower, upper, work)
	if err == nil {
		t.Fatal("mount with a reused volatile workdir succeeded")
	}
	if !strings.Contains(err.Error(), "volatile") || !errors.Is(err, unix.EINVAL) {
		t.Errorf("error %q does not explain the volatile workdir", err)
	}
	mustMounted(t, target, false)
	// A fresh work directory mounts the same upper again.
	work2 := filepath.Join(filepath.Dir(work), "work2")
	if err := os.Mkdir(work2, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := Overlay(target, lower, upper, work2); err != nil {
		t.Fatal(err)
	}
	mustMounted(t, target, true)
}

func TestOverlayOptionalRefused(t *testing.T) {
	requireRoot(t)
	saved := optionalOverlayOptions
	t.Cleanup(func() {
		optionalOverlayOptions = saved
		optionalRefused.Store(false)
	})
	// An option the kernel refuses stands for one it does not know yet.
	optionalOverlayOptions = append(slices.Clip(saved), "cachegroup_unknown_option")
	optionalRefused.Store(false)

	d := mkdirs(t, "lower", "upper", "work", "target")
	if err := Overlay(d[3], d[0], d[1], d[2]); err != nil {
		t.Fatal(err)
	}
	cleanupMount(t, d[3])
	if !optionalRefused.Load() {
		t.Error("refusal of the optional options not remembered")
	}
	mi := mountAt(t, d[3])
	hasOpts(t, d[3], "mount", mi.Options, "nosuid", "nodev")
	if strings.Contains(mi.VFSOptions, "volatile") {
		t.Errorf("superblock options %q: volatile without the optional options", mi.VFSOptions)
	}
}

func TestOverlayBadPaths(t *testing.T) {
	requireRoot(t)
	d := mkdirs(t, "lower", "upper", "work", "target")
	lower, upper, work, target := d[0], d[1], d[2], d[3]

	long := lower + strings.Repeat("/"+strings.Repeat("x", 200), 20)
	err := Overlay(target, long, upper, work)
	if err == nil || !strings.Contains(err.Error(), "limit") {
		t.Errorf("long lowerdir: %v, want an error about the limit", err)
	}
	for _, bad := range []string{"rel/lower", lower + ",x", lower + ":x", lower + `\x`} {
		err := Overlay(target, bad, upper, work)
		if err == nil || !strings.Contains(err.Error(), "lowerdir") {
			t.Errorf("lowerdir %q: %v, want an error naming lowerdir", bad, err)
		}
	}
	err = Overlay(target, filepath.Join(lower, "missing"), upper, work)
	if !errors.Is(err, unix.ENOENT) || !strings.Contains(err.Error(), target) {
		t.Errorf("missing lowerdir: %v, want ENOENT naming the target", err)
	}
	mustMounted(t, target, false)
}

func TestBindReadOnly(t *testing.T) {
	requireRoot(t)
	for name, bind := range map[string]func(target, source string) error{
		"BindReadOnly": BindReadOnly,
		"remount": func(target, source string) error {
			if err := bindReadOnlyRemount(target, source); err != nil {
				return err
			}
			return checkFlags(target, readOnlyFlags)
		},
	} {
		t.Run(name, func(t *testing.T) {
			d := mkdirs(t, "source", "target")
			source, target := d[0], d[1]
			writeFile(t, filepath.Join(source, "f"), "snapshot")
			if err := bind(target, source); err != nil {
				t.Fatal(err)
			}
			cleanupMount(t, target)
			mustMounted(t, target, true)

			if got := readFile(t, filepath.Join(target, "f")); got != "snapshot" {
				t.Errorf("read f = %q", got)
			}
			err := os.WriteFile(filepath.Join(target, "new"), []byte("x"), 0o644)
			if !errors.Is(err, unix.EROFS) {
				t.Errorf("create in read-only bind: %v, want EROFS", err)
			}
			_, err = os.OpenFile(filepath.Join(target, "f"), os.O_WRONLY, 0)
			if !errors.Is(err, unix.EROFS) {
				t.Errorf("open for writing in read-only bind: %v, want EROFS", err)
			}
			if err := os.Chmod(filepath.Join(target, "f"), 0o600); !errors.Is(err, unix.EROFS) {
				t.Errorf("chmod in read-only bind: %v, want EROFS", err)
			}
			mi := mountAt(t, target)
			hasOpts(t, target, "mount", mi.Options, "ro", "nosuid", "nodev")

			// The source stays writable.
			writeFile(t, filepath.Join(source, "g"), "still writable")

			if err := Unmount(target); err != nil {
				t.Fatal(err)
			}
			mustMounted(t, target, false)
			if err := Unmount(target); err != nil {
				t.Errorf("second Unmount: %v", err)
			}
		})
	}
}

func TestBindReadOnlyMissingSource(t *testing.T) {
	requireRoot(t)
	d := mkdirs(t, "target")
	err := BindReadOnly(d[0], filepath.Join(filepath.Dir(d[0]), "missing"))
	if !errors.Is(err, unix.ENOENT) {
		t.Errorf("missing source: %v, want ENOENT", err)
	}
	mustMounted(t, d[0], false)
}

func TestUnmount(t *testing.T) {
	requireRoot(t)
	d := mkdirs(t, "source", "target", "plain")
	source, target, plain := d[0], d[1], d[2]

	if err := Unmount(filepath.Join(plain, "missing")); err != nil {
		t.Errorf("Unmount of a missing path: %v", err)
	}
	if err := Unmount(plain); err != nil {
		t.Errorf("Unmount of a plain directory: %v", err)
	}

	// Stacked mounts all go.
	for range 2 {
		if err := unix.Mount(source, target, "", unix.MS_BIND, ""); err != nil {
			t.Fatal(err)
		}
	}
	cleanupMount(t, target)
	if err := Unmount(target); err != nil {
		t.Fatal(err)
	}
	mustMounted(t, target, false)

	// A busy mount is reported, not detached.
	writeFile(t, filepath.Join(source, "f"), "x")
	if err := unix.Mount(source, target, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(filepath.Join(target, "f"))
	if err != nil {
		t.Fatal(err)
	}
	err = Unmount(target)
	if !errors.Is(err, unix.EBUSY) || !strings.Contains(err.Error(), target) {
		t.Errorf("Unmount of a busy mount: %v, want EBUSY naming the target", err)
	}
	mustMounted(t, target, true)
	f.Close()
	if err := Unmount(target); err != nil {
		t.Fatal(err)
	}
	mustMounted(t, target, false)
	if err := Unmount(target); err != nil {
		t.Errorf("second Unmount: %v", err)
	}
}

func TestIsMountPoint(t *testing.T) {
	requireRoot(t)
	d := mkdirs(t, "source", "target", "plain")
	source, target, plain := d[0], d[1], d[2]
	writeFile(t, filepath.Join(plain, "file"), "x")

	mustMounted(t, "/", true)
	mustMounted(t, plain, false)
	mustMounted(t, filepath.Join(plain, "file"), false)
	mustMounted(t, filepath.Join(plain, "missing"), false)

	// A bind mount of a directory on the same filesystem (same st_dev).
	if err := unix.Mount(source, target, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	cleanupMount(t, target)
	var a, b unix.Stat_t
	if err := unix.Stat(plain, &a); err != nil {
		t.Fatal(err)
	}
	if err := unix.Stat(target, &b); err != nil {
		t.Fatal(err)
	}
	if a.Dev != b.Dev {
		t.Logf("bind mount is not on the same device; test is weaker")
	}
	mustMounted(t, target, true)
	mustMounted(t, source, false)
	if err := Unmount(target); err != nil {
		t.Fatal(err)
	}
	mustMounted(t, target, false)
}

func TestSyncFS(t *testing.T) {
	requireRoot(t)
	d := mkdirs(t, "dir")
	writeFile(t, filepath.Join(d[0], "file"), "x")
	if err := SyncFS(d[0]); err != nil {
		t.Errorf("SyncFS(dir): %v", err)
	}
	if err := SyncFS(filepath.Join(d[0], "file")); err != nil {
		t.Errorf("SyncFS(file): %v", err)
	}
	if err := SyncFS(filepath.Join(d[0], "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("SyncFS(missing): %v, want not-exist", err)
	}
}
