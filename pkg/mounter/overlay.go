package mounter

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// requiredOverlayOptions keep the upper layer readable by the committer as
// plain files, whiteouts, opaque directories and redirected directories.
// They are given explicitly because the kernel's defaults depend on its
// build configuration.
//
//   - redirect_dir=on: renaming a directory that comes from the lower layer
//     works as on a local disk (os.Rename, Files.move and fs::rename do not
//     fall back to copying on EXDEV): the kernel moves the upper directory
//     and records where it came from in trusted.overlay.redirect, which the
//     committer reads. Linux 4.10 or later.
//   - metacopy=off: a copied-up file always holds its full data in the upper
//     layer, never a metadata-only stub that points into the lower layer.
//   - index=off: no inode index (and no hard-link bookkeeping) in the work dir;
//     it is only needed for NFS export and hard-link preservation of copy-ups.
var requiredOverlayOptions = []string{"redirect_dir=on", "metacopy=off", "index=off"}

// optionalOverlayOptions only affect speed and inode numbering; a kernel that
// refuses them still gives a correct overlay, so Overlay retries without them.
//
//   - xino=off: no inode-number bit mixing; lower and upper share the store's
//     filesystem, so real inode numbers are already unique.
//   - volatile: fsync and syncfs inside the overlay return at once; the pod's
//     writes are made durable by one SyncFS of the upper layer's filesystem
//     after unmount, instead of every fsync a build tool issues.
var optionalOverlayOptions = []string{"xino=off", "volatile"}

// optionalRefused is set once the kernel has refused optionalOverlayOptions
// (volatile needs Linux 5.10, xino 4.17), so later mounts do not try again.
var optionalRefused atomic.Bool

// Overlay mounts an overlay at target with lower as the read-only layer and
// upper/work as the private writable layer, nosuid,nodev.
//
// All paths must be absolute and must not contain ',', ':' or '\', which the
// overlay option syntax treats specially; lower, upper and work must exist,
// upper and work on the same filesystem.
//
// The options are redirect_dir=on, metacopy=off and index=off, so the upper
// layer holds only plain files with their full data, whiteouts, opaque
// directories and renamed directories (trusted.overlay.redirect: "/a/b", the
// path from the lower root, for a move to another directory, or "b", a name
// in the same parent's lower directory, for a rename in place), plus xino=off
// and volatile (fsync inside the overlay returns at once), these two dropped
// if the kernel refuses them. A rename of a lower directory still fails with
// EXDEV when its absolute redirect would be longer than the overlay module's
// redirect_max (256 bytes by default; a rename in place stores only the
// name). The upper layer also carries trusted.overlay.* bookkeeping xattrs
// (origin, impure, uuid) that mean nothing outside the overlay. Because the mount is
// volatile, the caller must, after Unmount, call SyncFS on upper before it
// treats the upper layer as durable, and use a fresh work directory for each
// mount: the kernel leaves a marker (work/work/incompat/volatile) in a work
// directory used by a volatile mount and refuses to mount with it again. A
// work directory still holding that marker after a crash means the upper
// layer next to it was never synced and may be incomplete.
func Overlay(target, lower, upper, work string) error {
	return OverlayStack(target, []string{lower}, upper, work)
}

// OverlayStack is Overlay with several read-only layers, newest first: what
// a name is in lowers[0] hides what it is in the later ones (whiteouts and
// opaque directories in a lower layer hide the layers below it).
func OverlayStack(target string, lowers []string, upper, work string) error {
	opts, err := lowerOption(target, lowers)
	if err != nil {
		return err
	}
	for _, p := range [...]struct{ name, path string }{
		{"upperdir", upper}, {"workdir", work},
	} {
		if err := checkLayerPath(p.path); err != nil {
			return fmt.Errorf("mount overlay at %s: %s: %w", target, p.name, err)
		}
	}
	opts = append(append(opts, "upperdir="+upper, "workdir="+work), requiredOverlayOptions...)
	if optionalRefused.Load() {
		return mountOverlay(target, opts, 0)
	}
	err = mountOverlay(target, append(opts, optionalOverlayOptions...), 0)
	if errors.Is(err, unix.ENOENT) {
		// mount(2) does not say which path is missing; name it.
		for _, p := range append([]string{target, upper, work}, lowers...) {
			if _, serr := os.Stat(p); serr != nil {
				return fmt.Errorf("mount overlay at %s: %w", target, serr)
			}
		}
	}
	if !errors.Is(err, unix.EINVAL) {
		return err
	}
	if _, serr := os.Lstat(filepath.Join(work, "work", "incompat", "volatile")); serr == nil {
		return fmt.Errorf("mount overlay at %s: workdir %s was used by an earlier volatile mount; use a fresh one: %w",
			target, work, unix.EINVAL)
	}
	// The kernel may predate volatile/xino: retry with the required options only.
	if rerr := mountOverlay(target, opts, 0); rerr != nil {
		return err
	}
	optionalRefused.Store(true)
	return nil
}

// ReadOnlyStack mounts lowers (newest first, at least two) read-only at
// target as one overlay with no upper layer, nosuid,nodev: a read-only
// publish of a layered snapshot.
func ReadOnlyStack(target string, lowers []string) error {
	if len(lowers) < 2 {
		return fmt.Errorf("mount overlay at %s: a read-only stack needs two layers or more; bind one", target)
	}
	opts, err := lowerOption(target, lowers)
	if err != nil {
		return err
	}
	return mountOverlay(target, append(opts, requiredOverlayOptions...), unix.MS_RDONLY)
}

// lowerOption returns the lowerdir option of lowers, newest first.
func lowerOption(target string, lowers []string) ([]string, error) {
	if len(lowers) == 0 {
		return nil, fmt.Errorf("mount overlay at %s: no lower layer", target)
	}
	for _, l := range lowers {
		if err := checkLayerPath(l); err != nil {
			return nil, fmt.Errorf("mount overlay at %s: lowerdir: %w", target, err)
		}
	}
	return []string{"lowerdir=" + strings.Join(lowers, ":")}, nil
}

// mountOverlay performs the mount(2) call with the given options and flags
// besides nosuid,nodev.
func mountOverlay(target string, opts []string, flags uintptr) error {
	data := strings.Join(opts, ",")
	// mount(2) copies at most one page of option data, NUL included.
	if limit := os.Getpagesize() - 1; len(data) > limit {
		return fmt.Errorf("mount overlay at %s: options are %d bytes, over the kernel's limit of %d; use shorter layer paths",
			target, len(data), limit)
	}
	err := ignoringEINTR(func() error {
		return unix.Mount("overlay", target, "overlay", unix.MS_NOSUID|unix.MS_NODEV|flags, data)
	})
	if err != nil {
		if errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("mount overlay at %s (%s; the kernel log says why): %w", target, data, err)
		}
		return fmt.Errorf("mount overlay at %s: %w", target, err)
	}
	return nil
}

// checkLayerPath rejects paths the overlay option string cannot carry as is.
func checkLayerPath(p string) error {
	if !filepath.IsAbs(p) {
		return fmt.Errorf("path %q is not absolute", p)
	}
	if i := strings.IndexAny(p, ",:\\\x00"); i >= 0 {
		return fmt.Errorf("path %q contains %q, which overlay options cannot carry", p, p[i])
	}
	return nil
}
