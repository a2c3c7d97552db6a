package node

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// removeBatch is how many entries a background sweep removes between looks
// at whether it should stop: a snapshot of a million links takes minutes
// to remove, and neither the driver's stop nor an urgent sweep waits that.
const removeBatch = 1024

// trash is the state of the sweeps of the node's trash directory.
type trash struct {
	mu     sync.Mutex   // serialises sweeps
	urgent atomic.Int32 // sweeps waiting for mu that need the space now
	// starting counts the pod layers being made: a background sweep waits
	// for them, since a layer disk's mkfs syncs its image, and a sync waits
	// for the journal to take every unlink made before it.
	starting atomic.Int32
}

// discard moves dir into the trash, removed in the background; a layer's
// disk moves along, mounted, and the trash frees it first, off the path of
// the pod's unpublish.
func (n *Node) discard(dir string) {
	if _, err := os.Lstat(dir); err != nil {
		return
	}
	dst := filepath.Join(n.dir, "trash", fmt.Sprintf("%d-%s", time.Now().UnixNano(), filepath.Base(dir)))
	if err := os.Rename(dir, dst); err != nil {
		n.releaseDisk(dir)
		if _, mounted, err := mountedDev(dir); err == nil && !mounted {
			os.RemoveAll(dir)
		}
		return
	}
	n.kickTrash()
}

func (n *Node) kickTrash() { kick(n.trashWake) }

// emptyTrash sweeps the trash whenever something is discarded, on a thread
// of the lowest priority so that pods starting meanwhile get the cores. A
// sweep gives up when ctx ends or an urgent sweep waits; what is left is
// swept next time.
func (n *Node) emptyTrash(ctx context.Context) {
	for {
		idle(func() {
			n.trash.mu.Lock()
			defer n.trash.mu.Unlock()
			n.sweep(n.givesWay(ctx))
		})
		select {
		case <-ctx.Done():
			return
		case <-n.trashWake:
		case <-time.After(time.Minute):
		}
	}
}

// givesWay returns the stop of a background sweep: once ctx ends, a sweep
// that needs the space now waits, or a pod's layer is being made.
func (n *Node) givesWay(ctx context.Context) func() bool {
	return func() bool { return ctx.Err() != nil || n.trash.urgent.Load() > 0 || n.trash.starting.Load() > 0 }
}

// makingLayer tells a background sweep that a pod's layer is being made
// until the returned func is called; the sweep goes on once none is.
func (n *Node) makingLayer() (done func()) {
	n.trash.starting.Add(1)
	return func() {
		if n.trash.starting.Add(-1) == 0 {
			n.kickTrash()
		}
	}
}

// sweepTrash removes all that is in the trash now, for a caller that needs
// the space.
func (n *Node) sweepTrash() {
	n.trash.urgent.Add(1)
	n.trash.mu.Lock()
	n.trash.urgent.Add(-1)
	defer n.trash.mu.Unlock()
	n.sweep(func() bool { return false })
}

// sweep removes what is in the trash until stop reports true: first the
// disks of every entry (each frees a loop device and its image's space at
// once, where removing a tree of links may take minutes), then the entries.
// Nothing is removed through a mount: an entry whose disk is still busy
// stays until a later sweep.
func (n *Node) sweep(stop func() bool) {
	ents, _ := os.ReadDir(filepath.Join(n.dir, "trash"))
	var free []string
	disks := false
	for _, e := range ents {
		dir := filepath.Join(n.dir, "trash", e.Name())
		if hasDisk(dir) {
			disks = true
		}
		if err := freeDisk(dir); err != nil {
			klog.ErrorS(err, "Release the disk of a trashed layer; tried again later", "dir", dir)
			continue
		}
		free = append(free, dir)
	}
	if disks {
		n.recountDisks()
	}
	for _, dir := range free {
		err := removeTree(dir, stop)
		if errors.Is(err, errStopped) {
			return
		}
		if err != nil {
			klog.ErrorS(err, "Remove a trashed layer; tried again later", "dir", dir)
		}
	}
}

// errStopped is what removeTree returns when its stop said so.
var errStopped = errors.New("removal stopped")

// removeTree removes the tree at path, as os.RemoveAll does, except that
// it never descends into a mount (it fails there, leaving that directory
// and its parents) and that it returns errStopped, leaving the
// rest, once stop reports true; stop is asked every removeBatch entries.
func removeTree(path string, stop func() bool) error {
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); errors.Is(err, unix.ENOENT) {
		return nil
	} else if err != nil {
		return fmt.Errorf("remove %s: %w", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		if err := unix.Unlink(path); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("remove %s: %w", path, err)
		}
		return nil
	}
	parent, err := unix.Open(filepath.Dir(path), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("remove %s: %w", path, err)
	}
	defer unix.Close(parent)
	// The parent's mount: something mounted at path itself is a mount too.
	mnt, err := mountID(parent, "")
	if err != nil {
		return fmt.Errorf("remove %s: %w", path, err)
	}
	r := remover{mnt: mnt, stop: stop}
	err = r.dir(parent, filepath.Base(path))
	if err != nil && !errors.Is(err, errStopped) {
		err = fmt.Errorf("remove %s: %w", path, err)
	}
	return err
}

// remover removes one tree, within the mount of ID mnt.
type remover struct {
	mnt  uint64
	stop func() bool
	seen int
}

// mountID returns the ID of the mount that name, relative to directory
// dirfd, is on (a bind mount has one of its own, as a filesystem does).
func mountID(dirfd int, name string) (uint64, error) {
	var stx unix.Statx_t
	flags := unix.AT_SYMLINK_NOFOLLOW
	if name == "" {
		flags |= unix.AT_EMPTY_PATH
	}
	if err := unix.Statx(dirfd, name, flags, unix.STATX_MNT_ID, &stx); err != nil {
		return 0, err
	}
	if stx.Mask&unix.STATX_MNT_ID == 0 {
		return 0, errors.New("the kernel does not tell mount IDs (Linux 5.8 or later does)")
	}
	return stx.Mnt_id, nil
}

// dir removes directory name of directory parent and all below it.
func (r *remover) dir(parent int, name string) error {
	fd, err := unix.Openat(parent, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENOENT) {
		return nil
	} else if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	d := os.NewFile(uintptr(fd), name)
	defer d.Close()
	if mnt, err := mountID(fd, ""); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	} else if mnt != r.mnt {
		return fmt.Errorf("%s: something is mounted there", name)
	}
	for {
		ents, err := d.ReadDir(removeBatch)
		for _, e := range ents {
			if r.seen++; r.seen%removeBatch == 0 && r.stop() {
				return errStopped
			}
			if e.IsDir() {
				if err := r.dir(fd, e.Name()); err != nil {
					return err
				}
			} else if err := unix.Unlinkat(fd, e.Name(), 0); err != nil && !errors.Is(err, unix.ENOENT) {
				return fmt.Errorf("%s/%s: %w", name, e.Name(), err)
			}
		}
		if errors.Is(err, io.EOF) || err == nil && len(ents) == 0 {
			break
		}
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
	}
	if err := unix.Unlinkat(parent, name, unix.AT_REMOVEDIR); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("%s: %w", name, err)
	}
	return nil
}
