package csiharness

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
)

// Mount is one line of /proc/self/mountinfo.
type Mount struct {
	// Point is the mount point.
	Point string
	// FSType is the filesystem type (ext4, overlay, ...).
	FSType string
	// Source is the mount source (a device, "overlay", ...).
	Source string
	// Options are the per-mount options (rw, nosuid, ...).
	Options string
}

// Mounts returns the mount table of this process's mount namespace.
func Mounts() ([]Mount, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []Mount
	s := bufio.NewScanner(f)
	s.Buffer(make([]byte, 64<<10), 1<<20)
	for s.Scan() {
		// id parent major:minor root point options [optional...] - fstype source superoptions
		fields := strings.Fields(s.Text())
		sep := -1
		for i, f := range fields {
			if f == "-" {
				sep = i
				break
			}
		}
		if len(fields) < 6 || sep < 0 || sep+2 >= len(fields) {
			continue
		}
		out = append(out, Mount{
			Point:   unescapeMountinfo(fields[4]),
			Options: fields[5],
			FSType:  fields[sep+1],
			Source:  unescapeMountinfo(fields[sep+2]),
		})
	}
	return out, s.Err()
}

// unescapeMountinfo decodes the octal escapes (\040 and friends) the kernel
// uses in mountinfo.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// MountFor returns the mount that holds path (the longest mount point that
// is path or one of its parents).
func MountFor(path string) (Mount, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return Mount{}, err
	}
	if r, err := filepath.EvalSymlinks(abs); err == nil {
		abs = r
	}
	ms, err := Mounts()
	if err != nil {
		return Mount{}, err
	}
	best := -1
	for i, m := range ms {
		if isUnder(abs, m.Point) && (best < 0 || len(m.Point) >= len(ms[best].Point)) {
			best = i
		}
	}
	if best < 0 {
		return Mount{}, fmt.Errorf("no mount holds %s", abs)
	}
	return ms[best], nil
}

// isUnder reports whether p is dir or below it.
func isUnder(p, dir string) bool {
	if dir == "/" || p == dir {
		return true
	}
	return strings.HasPrefix(p, dir+"/")
}

// MountsUnder returns the mount points at or below dir, deepest first (and
// each stacked mount as often as it is stacked).
func MountsUnder(dir string) ([]string, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	if r, err := filepath.EvalSymlinks(abs); err == nil {
		abs = r
	}
	ms, err := Mounts()
	if err != nil {
		return nil, err
	}
	var out []string
	for _, m := range ms {
		if isUnder(m.Point, abs) && m.Point != "/" {
			out = append(out, m.Point)
		}
	}
	sort.SliceStable(out, func(i, j int) bool {
		return strings.Count(out[i], "/") > strings.Count(out[j], "/")
	})
	return out, nil
}

// UnmountUnder unmounts every mount point at or below dir, deepest first,
// lazily (MNT_DETACH) when a plain unmount reports it busy, and returns the
// mount points it unmounted. It is the last-resort cleanup for mounts a
// driver left behind.
func UnmountUnder(dir string) ([]string, error) {
	var done []string
	var errs []error
	for round := 0; round < 8; round++ {
		points, err := MountsUnder(dir)
		if err != nil {
			return done, err
		}
		if len(points) == 0 {
			return done, errors.Join(errs...)
		}
		errs = errs[:0]
		for _, p := range points {
			err := syscall.Unmount(p, 0)
			if errors.Is(err, syscall.EBUSY) {
				err = syscall.Unmount(p, syscall.MNT_DETACH)
			}
			if err != nil && !errors.Is(err, syscall.EINVAL) && !errors.Is(err, syscall.ENOENT) {
				errs = append(errs, fmt.Errorf("unmount %s: %w", p, err))
				continue
			}
			if err == nil {
				done = append(done, p)
			}
		}
	}
	points, _ := MountsUnder(dir)
	if len(points) > 0 {
		errs = append(errs, fmt.Errorf("still mounted: %v", points))
	}
	return done, errors.Join(errs...)
}

// DropCaches writes back dirty data (sync) and drops the page, dentry and
// inode caches (echo 3 > /proc/sys/vm/drop_caches), so the next access is
// cold. It needs root.
func DropCaches() error {
	syscall.Sync()
	return os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0o200)
}
