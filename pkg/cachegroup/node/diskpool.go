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

// Bounds of the pool of layer images made ahead: a few images of each of
// the few sizes pods asked for last, forgotten once no pod has asked for
// them in a while. An empty image takes about 100-250 KiB of the store's
// disk, counted with the layer disks.
const (
	poolPerSize = 2
	poolSizes   = 4
	poolIdle    = 30 * time.Minute
)

// diskPool keeps layer images made ahead in a directory of the node tier,
// named <size>-<seq>.img (<size>-<seq>.img.part while mkfs runs), so that
// a pod's start costs a rename, a loop device and a mount, not a mkfs.
type diskPool struct {
	dir    string
	wake   chan struct{}
	fillMu sync.Mutex // one filling at a time

	mu      sync.Mutex
	asked   map[int64]time.Time // image sizes pods asked for, and when last
	seq     int64
	perSize int // images kept of each size: poolPerSize, or 0 for none
}

func newDiskPool(dir string) *diskPool {
	p := &diskPool{dir: dir, wake: make(chan struct{}, 1), asked: map[int64]time.Time{}, perSize: poolPerSize}
	// Images a crash left half made go; whole ones of a size no pod asks
	// for again go once the filler finds that.
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if _, ok := poolSize(e.Name()); !ok {
			os.Remove(filepath.Join(dir, e.Name()))
		}
	}
	return p
}

// poolSize returns the size of the whole pool image of file name.
func poolSize(name string) (int64, bool) {
	base, ok := strings.CutSuffix(name, ".img")
	if !ok {
		return 0, false
	}
	size, _, ok := strings.Cut(base, "-")
	n, err := strconv.ParseInt(size, 10, 64)
	return n, ok && err == nil && n > 0
}

// take moves an image of size bytes made ahead to path, if the pool has
// one, and asks the filler for another.
func (p *diskPool) take(size int64, path string) bool {
	p.mu.Lock()
	p.asked[size] = time.Now()
	p.mu.Unlock()
	defer p.kick()
	ents, _ := os.ReadDir(p.dir)
	for _, e := range ents {
		if s, ok := poolSize(e.Name()); ok && s == size {
			// The filler may drop it meanwhile: then the next, or none.
			if os.Rename(filepath.Join(p.dir, e.Name()), path) == nil {
				return true
			}
		}
	}
	return false
}

// setPerSize sets how many images of each size are kept (0: none).
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

// fill keeps poolPerSize images of each size asked for lately, and drops
// the images of the others.
func (p *diskPool) fill(ctx context.Context) {
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

func (p *diskPool) fillOnce() {
	p.fillMu.Lock()
	defer p.fillMu.Unlock()
	p.mu.Lock()
	var sizes []int64
	for s, at := range p.asked {
		if time.Since(at) > poolIdle {
			delete(p.asked, s)
		} else {
			sizes = append(sizes, s)
		}
	}
	// The sizes asked for last, at most poolSizes of them.
	slices.SortFunc(sizes, func(a, b int64) int { return p.asked[b].Compare(p.asked[a]) })
	sizes = sizes[:min(len(sizes), poolSizes)]
	perSize := p.perSize
	p.mu.Unlock()
	have := map[int64]int{}
	ents, _ := os.ReadDir(p.dir)
	for _, e := range ents {
		// Under fillMu, an image not whole is one a crash left.
		s, ok := poolSize(e.Name())
		if !ok || !slices.Contains(sizes, s) || have[s] >= perSize {
			os.Remove(filepath.Join(p.dir, e.Name()))
			continue
		}
		have[s]++
	}
	for _, s := range sizes {
		for ; have[s] < perSize; have[s]++ {
			p.mu.Lock()
			p.seq++
			name := fmt.Sprintf("%d-%d-%d.img", s, time.Now().UnixNano(), p.seq)
			p.mu.Unlock()
			part := filepath.Join(p.dir, name+".part")
			if err := makeImage(part, s, poolInodes(s)); err != nil {
				klog.ErrorS(err, "Make a layer image ahead")
				return
			}
			if err := os.Rename(part, filepath.Join(p.dir, name)); err != nil {
				os.Remove(part)
				klog.ErrorS(err, "Make a layer image ahead")
				return
			}
		}
	}
}

// poolInodes returns the inodes of an image of size bytes: the inverse of
// diskSize (one inode per block of quota, never capped below maxDiskQuota).
func poolInodes(size int64) int64 { return size / (diskBlock + diskInode) }
