package node

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"k8s.io/klog/v2"
)

// Bounds of the pool of layer disks made ahead: for each of the few sizes
// pods asked for last, poolPerSize disks, and one more for each pod that
// found the pool empty (a burst of pods starting together), up to poolMax;
// a size no pod has asked for in a while is forgotten. An empty disk takes
// about 100-250 KiB of the store's disk, counted with the layer disks, and
// one loop device.
const (
	poolPerSize = 2
	poolMax     = 32
	poolSizes   = 4
	poolIdle    = 30 * time.Minute
)

// diskPool keeps layer disks made ahead in a directory of the node tier:
// each a directory named <size>-<stamp>-<seq> holding its image and its
// filesystem mounted at fs/, as a layer directory with a disk holds them,
// so that a pod's start costs one rename, not a mkfs, a loop device and a
// mount. A directory being made, or claimed to be dropped, ends in .part
// and is never handed out.
type diskPool struct {
	dir    string
	wake   chan struct{}
	fillMu sync.Mutex // one filling at a time

	mu      sync.Mutex
	asked   map[int64]*demand // image sizes pods asked for
	seq     int64
	perSize int // disks kept of each size before bursts: poolPerSize, or 0 for none
}

// demand is what the pool knows of the pods asking for one size of disk.
type demand struct {
	at     time.Time // last asked
	missed int       // pods that found none made ahead
}

func newDiskPool(dir string) *diskPool {
	p := &diskPool{dir: dir, wake: make(chan struct{}, 1), asked: map[int64]*demand{}, perSize: poolPerSize}
	// Disks an earlier process left go: their sizes are asked for again
	// if pods still want them.
	p.free(func(string) bool { return true })
	return p
}

// poolSize returns the size of the image of the whole pool disk of
// directory name.
func poolSize(name string) (int64, bool) {
	if strings.HasSuffix(name, ".part") {
		return 0, false
	}
	size, _, ok := strings.Cut(name, "-")
	n, err := strconv.ParseInt(size, 10, 64)
	return n, ok && err == nil && n > 0
}

// take moves a disk of size bytes made ahead, mounted, to layer directory
// dir, which must not exist, if the pool has one, and asks the filler for
// another.
func (p *diskPool) take(size int64, dir string) bool {
	defer p.kick()
	ents, _ := os.ReadDir(p.dir)
	for _, e := range ents {
		if s, ok := poolSize(e.Name()); ok && s == size {
			// The rename is the claim: another take or the filler
			// may have claimed this one first.
			if os.Rename(filepath.Join(p.dir, e.Name()), dir) == nil {
				p.ask(size, false)
				return true
			}
		}
	}
	p.ask(size, true)
	return false
}

// ask records that a pod asked for a disk of size bytes, and whether it
// found none made ahead.
func (p *diskPool) ask(size int64, missed bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	d := p.asked[size]
	if d == nil {
		d = &demand{}
		p.asked[size] = d
	}
	d.at = time.Now()
	if missed && d.missed < poolMax {
		d.missed++
	}
}

// setPerSize sets how many disks of each size are kept before bursts
// (0: none at all).
func (p *diskPool) setPerSize(n int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.perSize = n
}

func (p *diskPool) kick() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// fill keeps the disks of the sizes asked for lately made ahead, and
// drops the others; once ctx ends, it drops them all, so that no idle disk
// stays mounted.
func (p *diskPool) fill(ctx context.Context) {
	defer p.free(func(string) bool { return true })
	for {
		p.fillOnce()
		select {
		case <-ctx.Done():
			return
		case <-p.wake:
		case <-time.After(time.Minute):
		}
	}
}

// want returns how many disks of each size asked for lately to keep.
func (p *diskPool) want() map[int64]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	var sizes []int64
	for s, d := range p.asked {
		if time.Since(d.at) > poolIdle {
			delete(p.asked, s)
		} else {
			sizes = append(sizes, s)
		}
	}
	// The sizes asked for last, at most poolSizes of them.
	slices.SortFunc(sizes, func(a, b int64) int { return p.asked[b].at.Compare(p.asked[a].at) })
	want := map[int64]int{}
	for _, s := range sizes[:min(len(sizes), poolSizes)] {
		if p.perSize > 0 {
			want[s] = min(p.perSize+p.asked[s].missed, poolMax)
		}
	}
	return want
}

func (p *diskPool) fillOnce() {
	p.fillMu.Lock()
	defer p.fillMu.Unlock()
	want := p.want()
	have := map[int64]int{}
	p.free(func(name string) bool {
		s, _ := poolSize(name)
		if have[s] >= want[s] {
			return true
		}
		have[s]++
		return false
	})
	for s, n := range want {
		for ; have[s] < n; have[s]++ {
			if err := p.make(s); err != nil {
				klog.ErrorS(err, "Make a layer disk ahead")
				return
			}
		}
	}
}

// make makes a disk of size bytes ahead and mounts it.
func (p *diskPool) make(size int64) error {
	p.mu.Lock()
	p.seq++
	name := fmt.Sprintf("%d-%d-%d", size, time.Now().UnixNano(), p.seq)
	p.mu.Unlock()
	part := filepath.Join(p.dir, name+".part")
	err := os.Mkdir(part, 0o700)
	if err == nil {
		err = makeImage(filepath.Join(part, diskPart), size, poolInodes(size))
	}
	if err == nil {
		err = os.Rename(filepath.Join(part, diskPart), filepath.Join(part, diskImage))
	}
	if err == nil {
		err = os.Mkdir(filepath.Join(part, diskMount), 0o700)
	}
	if err == nil {
		err = mountDisk(part, false)
	}
	if err == nil {
		err = os.Rename(part, filepath.Join(p.dir, name))
	}
	if err != nil {
		p.drop(part)
	}
	return err
}

// free drops the disks for which drop reports true, and every one not
// whole (a crash left it, or a drop that failed).
func (p *diskPool) free(drop func(name string) bool) {
	ents, _ := os.ReadDir(p.dir)
	for _, e := range ents {
		name := e.Name()
		path := filepath.Join(p.dir, name)
		if _, ok := poolSize(name); ok {
			if !drop(name) {
				continue
			}
			// Claimed first, as a take claims: by a rename.
			if os.Rename(path, path+".part") != nil {
				continue
			}
			path += ".part"
		}
		p.drop(path)
	}
}

// drop unmounts and deletes the pool disk in directory path; one that
// cannot be unmounted is left for the next fill.
func (p *diskPool) drop(path string) {
	if fi, err := os.Lstat(path); err == nil && !fi.IsDir() {
		os.Remove(path) // an image of the pool's layer before disks were mounted ahead
		return
	}
	if err := freeDisk(path); err != nil {
		klog.ErrorS(err, "Drop a layer disk made ahead", "dir", path)
		return
	}
	os.RemoveAll(path)
}

// poolInodes returns the inodes of an image of size bytes: the inverse of
// diskSize (one inode per block of quota, never capped below maxDiskQuota).
func poolInodes(size int64) int64 { return size / (diskBlock + diskInode) }
