package node

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// A writable layer of a volume with a quota lives on a filesystem of its own
// the size of the quota: a sparse ext4 image in the layer's directory,
// loop-mounted at fs/, holding the overlay's upper and work directories. A
// pod writing past its quota gets ENOSPC at the write and sees the quota in
// df; nothing it can do from inside the overlay crosses the boundary.
//
// The mount moves with the layer directory (pods/ to outbox/ is a rename,
// which carries mounts below it), so the filesystem stays mounted from
// NewLayer until the entry is committed, dropped or quarantined; Submit makes
// it read-only. After a restart the image is found in the layer directory and
// mounted again from the loop device still backed by it, or attached afresh;
// an image is only ever named disk.img once mkfs has made it whole.
const (
	diskImage = "disk.img"      // the layer's filesystem image
	diskPart  = "disk.img.part" // an image being made: never mounted
	diskMount = "fs"            // where the image is mounted in the layer directory
)

// Image geometry: 4 KiB blocks and one 256-byte inode per block of quota, so
// that a layer of small files runs out of space, not inodes; the inode
// tables are added to the image so that df shows the quota. From
// minDiskQuota up a layer holds no more than its quota, so a pod's write
// past it gets ENOSPC there (only files with holes can still make a commit
// larger). No journal (the overlay is volatile and Submit syncs), no
// reserved blocks, no resize blocks, inode tables left uninitialised
// (sparse).
const (
	diskBlock    = 4096
	diskInode    = 256
	minDiskQuota = 256 << 10      // smaller quotas get this much: mkfs.ext4 makes no image under 56 blocks
	maxDiskQuota = 16<<40 - 1<<30 // below the largest file ext4 with 4 KiB blocks holds (the image lives on the store's disk)
)

// diskFlags are the mount flags of a layer filesystem: nothing a pod writes
// there is a device or setuid program for the host.
const diskFlags = unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOATIME

// diskData keeps the kernel from zeroing the inode tables in the background,
// which would fill in the sparse image.
const diskData = "noinit_itable"

// canMakeDisks reports whether this machine can make layer disks (mkfs.ext4,
// e2fsck for a disk a crash left unclean, and loop devices); where it cannot,
// layers keep plain directories, which bound nothing, and that is logged once.
var canMakeDisks = sync.OnceValue(func() bool {
	_, err := exec.LookPath("mkfs.ext4")
	if err == nil {
		_, err = exec.LookPath("e2fsck")
	}
	if err == nil {
		_, err = os.Stat("/dev/loop-control")
	}
	if err != nil {
		klog.ErrorS(err, "Layers cannot have disks of their own: pods are not held to their quota while they write (install e2fsprogs; loop devices needed)")
		return false
	}
	return true
})

// hasDisk reports whether the layer in dir has a filesystem image.
func hasDisk(dir string) bool {
	_, err := os.Lstat(filepath.Join(dir, diskImage))
	return err == nil
}

// upperOf returns the upper and work directories of the layer in dir.
func upperOf(dir string) (upper, work string) {
	if hasDisk(dir) {
		return filepath.Join(dir, diskMount, "upper"), filepath.Join(dir, diskMount, "work")
	}
	return filepath.Join(dir, "upper"), filepath.Join(dir, "work")
}

// diskSize returns the size of the image of a layer with quota bytes, on a
// disk of total bytes: the quota plus the inode tables, no larger than the
// disk, which the layer could never fill past anyway.
func diskSize(quota, total int64) (size, inodes int64) {
	q := min(max(quota, minDiskQuota), maxDiskQuota)
	if total > 0 {
		q = min(q, total)
	}
	q = q / diskBlock * diskBlock
	inodes = q / diskBlock // below 2^32: maxDiskQuota
	return q + inodes*diskInode, inodes
}

// makeDisk makes layer directory dir, which must not exist, with a disk for
// a layer of quota bytes: one the pool made ahead, or an image made now and
// mounted at fs/.
func (n *Node) makeDisk(dir string, quota int64) error {
	var st unix.Statfs_t
	if err := unix.Statfs(filepath.Dir(dir), &st); err != nil {
		return fmt.Errorf("layer disk: %w", err)
	}
	size, inodes := diskSize(quota, int64(st.Blocks)*st.Bsize)
	if n.disks.take(size, dir) {
		return nil
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		return fmt.Errorf("layer disk: %w", err)
	}
	part, img := filepath.Join(dir, diskPart), filepath.Join(dir, diskImage)
	if err := makeImage(part, size, inodes); err != nil {
		return err
	}
	if err := os.Rename(part, img); err != nil {
		return fmt.Errorf("layer disk: %w", err)
	}
	if err := os.Mkdir(filepath.Join(dir, diskMount), 0o700); err != nil {
		return fmt.Errorf("layer disk: %w", err)
	}
	return mountDisk(dir, false)
}

// makeImage makes at path a sparse image of size bytes holding an empty
// filesystem with inodes inodes. The caller renames it into place once
// made, so that an image found under its final name is whole (mke2fs
// fsyncs the image before it exits).
func makeImage(path string, size, inodes int64) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("layer disk: %w", err)
	}
	err = f.Truncate(size)
	f.Close()
	if err != nil {
		os.Remove(path)
		return fmt.Errorf("layer disk of %d bytes: %w", size, err)
	}
	cmd := exec.Command("mkfs.ext4", "-q", "-F", "-b", strconv.Itoa(diskBlock), "-I", strconv.Itoa(diskInode),
		"-N", strconv.FormatInt(inodes, 10), "-m", "0", "-O", "^has_journal,^resize_inode",
		"-E", "lazy_itable_init=1,nodiscard,root_owner=0:0", path)
	if out, err := cmd.CombinedOutput(); err != nil {
		os.Remove(path)
		return fmt.Errorf("layer disk: mkfs.ext4: %w: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

// mountDisk mounts the image of the layer in dir at fs/ unless it is mounted
// there already: from the loop device already backed by the image if there
// is one (a mount of the same device shares its filesystem), or from a loop
// device attached now, which detaches itself once unmounted.
func mountDisk(dir string, readOnly bool) error {
	img, mp := filepath.Join(dir, diskImage), filepath.Join(dir, diskMount)
	var ist unix.Stat_t
	if err := unix.Stat(img, &ist); err != nil {
		return fmt.Errorf("layer disk: %w", err)
	}
	if dev, ok, err := mountedDev(dir); err != nil {
		return err
	} else if ok {
		if !backs(dev, &ist) {
			return fmt.Errorf("layer disk: %s is mounted from another device than its image", mp)
		}
		return nil
	}
	flags := uintptr(diskFlags)
	if readOnly {
		flags |= unix.MS_RDONLY
	}
	dev, err := loopOf(&ist)
	if err != nil {
		return err
	}
	if dev == "" {
		// Attached nowhere: the filesystem is not in use, so it may be
		// checked; one a crash left unclean is repaired first.
		if err := checkDisk(img); err != nil {
			return err
		}
		loop, err := attachLoop(img, readOnly)
		if err != nil {
			return err
		}
		// The open descriptor holds the device until the mount does.
		defer loop.Close()
		dev = loop.Name()
	}
	if err := unix.Mount(dev, mp, "ext4", flags, diskData); err != nil {
		return fmt.Errorf("layer disk: mount %s at %s: %w", dev, mp, err)
	}
	return nil
}

// mountedDev returns the device of the filesystem mounted at fs/ in layer
// directory dir, if one is.
func mountedDev(dir string) (uint64, bool, error) {
	var dst, mst unix.Stat_t
	if err := unix.Lstat(dir, &dst); errors.Is(err, unix.ENOENT) {
		return 0, false, nil
	} else if err != nil {
		return 0, false, fmt.Errorf("layer disk: %w", err)
	}
	err := unix.Lstat(filepath.Join(dir, diskMount), &mst)
	if errors.Is(err, unix.ENOENT) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("layer disk: %w", err)
	}
	return mst.Dev, mst.Dev != dst.Dev, nil
}

// checkDisk repairs the image at img if its filesystem was not cleanly
// unmounted (a crash while a pod wrote to it).
func checkDisk(img string) error {
	f, err := os.Open(img)
	if err != nil {
		return fmt.Errorf("layer disk: %w", err)
	}
	// s_state, at byte 58 of the superblock, which starts at 1024.
	var state [2]byte
	_, err = f.ReadAt(state[:], 1024+58)
	f.Close()
	if err != nil {
		return fmt.Errorf("layer disk: read superblock: %w", err)
	}
	const valid, errs = 1, 2
	if s := binary.LittleEndian.Uint16(state[:]); s&valid != 0 && s&errs == 0 {
		return nil
	}
	out, err := exec.Command("e2fsck", "-p", img).CombinedOutput()
	var exit *exec.ExitError
	if errors.As(err, &exit) && exit.ExitCode() == 1 { // errors corrected
		err = nil
	}
	if err != nil {
		return fmt.Errorf("layer disk: e2fsck %s: %w: %s", img, err, strings.TrimSpace(string(out)))
	}
	klog.InfoS("Repaired a layer disk left unclean", "image", img)
	return nil
}

// attachLoop attaches the image at img to a free loop device, which clears
// itself once nothing holds it open, and returns the device open.
func attachLoop(img string, readOnly bool) (*os.File, error) {
	mode := os.O_RDWR
	var flags uint32 = unix.LO_FLAGS_AUTOCLEAR
	if readOnly {
		mode, flags = os.O_RDONLY, flags|unix.LO_FLAGS_READ_ONLY
	}
	file, err := os.OpenFile(img, mode, 0)
	if err != nil {
		return nil, fmt.Errorf("layer disk: %w", err)
	}
	defer file.Close()
	ctl, err := os.OpenFile("/dev/loop-control", os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("layer disk: %w", err)
	}
	defer ctl.Close()
	// Another process may take the free device between the two calls: the
	// configure then fails busy and another free one is asked for.
	for range 16 {
		n, err := unix.IoctlRetInt(int(ctl.Fd()), unix.LOOP_CTL_GET_FREE)
		if err != nil {
			return nil, fmt.Errorf("layer disk: get a free loop device: %w", err)
		}
		loop, err := openLoop(fmt.Sprintf("loop%d", n), mode)
		if err != nil {
			return nil, err
		}
		cfg := unix.LoopConfig{Fd: uint32(file.Fd()), Size: diskBlock}
		cfg.Info.Flags = flags
		copy(cfg.Info.File_name[:len(cfg.Info.File_name)-1], img)
		_, _, errno := unix.Syscall(unix.SYS_IOCTL, loop.Fd(), unix.LOOP_CONFIGURE, uintptr(unsafe.Pointer(&cfg)))
		if errno == 0 {
			return loop, nil
		}
		loop.Close()
		if errno != unix.EBUSY {
			return nil, fmt.Errorf("layer disk: attach %s to %s: %w", img, loop.Name(), errno)
		}
	}
	return nil, fmt.Errorf("layer disk: attach %s: every free loop device was taken", img)
}

// openLoop opens the loop device of kernel name name, making its node in
// /dev if it is missing there (a container's /dev has only the devices that
// existed when it started).
func openLoop(name string, mode int) (*os.File, error) {
	path := "/dev/" + name
	f, err := os.OpenFile(path, mode, 0)
	if errors.Is(err, fs.ErrNotExist) {
		b, rerr := os.ReadFile(filepath.Join("/sys/block", name, "dev"))
		var major, minor uint32
		if rerr == nil {
			_, rerr = fmt.Sscanf(string(b), "%d:%d", &major, &minor)
		}
		if rerr != nil {
			return nil, fmt.Errorf("layer disk: %s: %w", path, rerr)
		}
		if err := unix.Mknod(path, unix.S_IFBLK|0o600, int(unix.Mkdev(major, minor))); err != nil && !errors.Is(err, fs.ErrExist) {
			return nil, fmt.Errorf("layer disk: make %s: %w", path, err)
		}
		f, err = os.OpenFile(path, mode, 0)
	}
	if err != nil {
		return nil, fmt.Errorf("layer disk: %w", err)
	}
	return f, nil
}

// backs reports whether the loop device numbered dev is backed by the file
// of stat ist.
func backs(dev uint64, ist *unix.Stat_t) bool {
	name, err := os.ReadFile(fmt.Sprintf("/sys/dev/block/%d:%d/uevent", unix.Major(dev), unix.Minor(dev)))
	if err != nil {
		return false
	}
	for line := range strings.SplitSeq(string(name), "\n") {
		if n, ok := strings.CutPrefix(line, "DEVNAME="); ok {
			return loopBacks(n, ist)
		}
	}
	return false
}

// loopBacks reports whether loop device name is backed by the file of stat
// ist, asking the device itself.
func loopBacks(name string, ist *unix.Stat_t) bool {
	f, err := openLoop(name, os.O_RDONLY)
	if err != nil {
		return false
	}
	defer f.Close()
	info, err := unix.IoctlLoopGetStatus64(int(f.Fd()))
	return err == nil && info.Device == ist.Dev && info.Inode == ist.Ino
}

// loopOf returns the path of a loop device backed by the file of stat ist,
// or "" if none is: found by the identity of the backing file, never by
// name.
func loopOf(ist *unix.Stat_t) (string, error) {
	ents, err := os.ReadDir("/sys/block")
	if err != nil {
		return "", fmt.Errorf("layer disk: %w", err)
	}
	for _, e := range ents {
		name := e.Name()
		if !strings.HasPrefix(name, "loop") {
			continue
		}
		// Only attached devices have a backing file.
		if _, err := os.Stat(filepath.Join("/sys/block", name, "loop", "backing_file")); err != nil {
			continue
		}
		if loopBacks(name, ist) {
			return "/dev/" + name, nil
		}
	}
	return "", nil
}

// sealDisk makes the filesystem of the layer in dir durable and read-only
// once its pod has ended, giving the blocks of deleted files back to the
// store's disk: the committer only reads it, and a crash then never leaves
// it unclean.
func sealDisk(dir string) error {
	mp := filepath.Join(dir, diskMount)
	fd, err := unix.Open(mp, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("layer disk: %w", err)
	}
	err = unix.Syncfs(fd)
	if err == nil {
		trim(fd)
	}
	unix.Close(fd)
	if err != nil {
		return fmt.Errorf("layer disk: syncfs %s: %w", mp, err)
	}
	// A pod process still holding a file open for writing (an overlay
	// detached lazily) keeps it writable: that is logged, not fatal.
	if err := unix.Mount("", mp, "", diskFlags|unix.MS_REMOUNT|unix.MS_RDONLY, diskData); err != nil {
		klog.ErrorS(err, "Make an ended layer's disk read-only", "dir", dir)
	}
	return nil
}

// trim discards the free blocks of the filesystem open as fd, which the loop
// device turns into holes in the image. Best effort: a kernel or backing
// disk without discard leaves the image as large as it was.
func trim(fd int) {
	const fitrim = 0xc0185879 // _IOWR('X', 121, struct fstrim_range)
	r := struct{ start, length, minlen uint64 }{0, ^uint64(0), 0}
	unix.Syscall(unix.SYS_IOCTL, uintptr(fd), fitrim, uintptr(unsafe.Pointer(&r)))
}

// freeDisk unmounts the filesystem of the layer in dir, detaches the loop
// device it was mounted from and deletes the image. It fails, leaving the
// image in place, while the filesystem is still in use.
func freeDisk(dir string) error {
	img := filepath.Join(dir, diskImage)
	os.Remove(filepath.Join(dir, diskPart))
	var ist unix.Stat_t
	if err := unix.Stat(img, &ist); errors.Is(err, unix.ENOENT) {
		return unmountAll(dir) // no image: nothing can be mounted from it
	} else if err != nil {
		return fmt.Errorf("layer disk: %w", err)
	}
	if err := unmountAll(dir); err != nil {
		return err
	}
	// The device detached itself when the last mount went, unless another
	// mount namespace still holds a mount of it: found by its backing
	// file, it is told to detach once free.
	if dev, err := loopOf(&ist); err == nil && dev != "" {
		if f, err := openLoop(strings.TrimPrefix(dev, "/dev/"), os.O_RDONLY); err == nil {
			err = unix.IoctlSetInt(int(f.Fd()), unix.LOOP_CLR_FD, 0)
			f.Close()
			if err != nil && !errors.Is(err, unix.ENXIO) {
				return fmt.Errorf("layer disk: detach %s: %w", dev, err)
			}
		}
	}
	if err := os.Remove(img); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("layer disk: %w", err)
	}
	return nil
}

// unmountAll unmounts whatever is mounted at fs/ in layer directory dir,
// every mount stacked there.
func unmountAll(dir string) error {
	mp := filepath.Join(dir, diskMount)
	for range 8 {
		_, mounted, err := mountedDev(dir)
		if err != nil || !mounted {
			return err
		}
		if err := unix.Unmount(mp, 0); err != nil && !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("layer disk: unmount %s: %w", mp, err)
		}
	}
	return fmt.Errorf("layer disk: %s stays mounted", mp)
}

// diskUsage returns the bytes the image of the layer in dir takes on the
// store's disk: its allocated blocks, not its (sparse) size; or, while its
// filesystem is mounted, what that filesystem holds if more (writes still in
// the page cache are allocated in the image only once written back).
func diskUsage(dir string) int64 {
	var st unix.Stat_t
	if unix.Stat(filepath.Join(dir, diskImage), &st) != nil {
		return 0
	}
	used := st.Blocks * 512
	var fs unix.Statfs_t
	if _, mounted, err := mountedDev(dir); err == nil && mounted && unix.Statfs(filepath.Join(dir, diskMount), &fs) == nil {
		used = max(used, int64(fs.Blocks-fs.Bfree)*fs.Bsize)
	}
	return used
}

// diskAccount is the store account the layer images are charged to.
const diskAccount = "node layer disks"

// recountDisks charges the store with the bytes every layer image on this
// node takes: live, waiting in the outbox, or on the way out.
func (n *Node) recountDisks() {
	n.diskMu.Lock()
	defer n.diskMu.Unlock()
	var total int64
	for _, sub := range []string{"disks", "pods", "outbox", "trash", "quarantine"} {
		ents, _ := os.ReadDir(filepath.Join(n.dir, sub))
		for _, e := range ents {
			if e.IsDir() {
				total += diskUsage(filepath.Join(n.dir, sub, e.Name()))
			}
		}
	}
	n.store.Charge(diskAccount, total)
}

// diskRecount is how often the images are counted again while pods write
// to them: a pod's writes are bounded by its quota in between.
const diskRecount = 5 * time.Second

// countDisks recounts the layer images every diskRecount, and soon after a
// layer gets or seals a disk: off the pod's start and end, where 16 pods at
// once queued for one count each.
func (n *Node) countDisks(ctx context.Context) {
	for {
		n.recountDisks()
		select {
		case <-ctx.Done():
			return
		case <-n.countWake:
		case <-time.After(diskRecount):
		}
	}
}

func (n *Node) kickCount() { kick(n.countWake) }

// mountDisks mounts again, after a restart, the filesystems of the live
// layers that are not mounted, and drops the images a crash left half made.
func (n *Node) mountDisks() {
	ents, _ := os.ReadDir(filepath.Join(n.dir, "pods"))
	for _, e := range ents {
		dir := filepath.Join(n.dir, "pods", e.Name())
		os.Remove(filepath.Join(dir, diskPart))
		if hasDisk(dir) {
			if err := mountDisk(dir, false); err != nil {
				klog.ErrorS(err, "Mount the disk of a live layer", "dir", dir)
			}
		}
	}
}

// releaseDisk frees the disk of the layer in dir, if it has one, and counts
// the disks again; one still busy is left for the trash to free.
func (n *Node) releaseDisk(dir string) {
	if !hasDisk(dir) {
		return
	}
	if err := freeDisk(dir); err != nil {
		klog.ErrorS(err, "Release a layer's disk; the trash tries again", "dir", dir)
	}
	n.recountDisks()
}
