package node

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/cas"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/group"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/internal/files"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/internal/flight"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/internal/shortmap"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/volume"
)

// Layer is one pod's mount of a volume on this node: the snapshot it reads
// and, unless it is read-only, the private upper directory it writes to.
type Layer struct {
	VolumeID string `json:"volumeID"`
	// Handle is the volume id the CO published the layer under: VolumeID,
	// or the kubelet's handle of an inline volume.
	Handle   string     `json:"handle,omitempty"`
	Target   string     `json:"target"`
	Base     cas.Digest `json:"base"`
	ReadOnly bool       `json:"readOnly,omitempty"`
	// Quota bounds what the pod may write, in bytes: a writable layer with
	// a quota lives on a filesystem of that size (see disk.go); 0 is none.
	Quota int64 `json:"quota,omitempty"`
	// Commit publishes the pod's writes when it ends; false discards them.
	Commit bool `json:"commit"`
	// FileOwner normalises committed files to this uid:gid.
	FileOwner *volume.FileOwner `json:"owner,omitempty"`
	// Sharing offers this node's copies to peers (without no-sharing).
	Sharing bool `json:"sharing,omitempty"`
	// Pod is the namespace/name of the pod that writes the layer, when the
	// CO says (podInfoOnMount): who to tell if its writes are lost.
	Pod     string    `json:"pod,omitempty"`
	Created time.Time `json:"created"`
}

// Stats counts what the node tier did since it started.
// The Prometheus metrics carry the rest (refused, discarded, evicted).
type Stats struct {
	Commits        atomic.Int64 // commits applied
	Dropped        atomic.Int64 // device files, FIFOs and sockets dropped from commits
	CommitFailures atomic.Int64 // attempts that failed and will be retried
}

// Node is the node tier of a member: materialised snapshots, the layers of
// the pods mounted on this node, and the durable outbox of their writes with
// the committer that drains it into the group.
//
// Layout below its directory: snaps/<root>/ (flat snapshots), layers/ and
// heads/ (thin layers over them: layers.go), pods/<key>/ (a live layer:
// layer.json, upper/, work/; or, with a quota, disk.img mounted at fs/
// holding upper/ and work/), outbox/<seq>-<key>/ (an ended layer
// waiting to be committed), quarantine/<seq>-<entry>/ (an entry that could
// never be committed, with a file reason), trash/ (being removed), disks/
// (layer images made ahead).
type Node struct {
	dir   string
	store *cas.Store
	group *group.Group

	hydrations flight.Group[cas.Digest] // snapshots being materialised
	fetches    flight.Group[cas.Digest] // blob fetches in progress

	mu sync.Mutex
	// private marks the node copies of no-sharing mounts, never served, by
	// Digest.Short (one per blob fetched, so kept small): a mark another
	// blob shares only keeps this node from serving that one as a peer,
	// which its owners do. Each holds the round of forgetPrivate it was
	// set or renewed in.
	private shortmap.Map[uint32]
	round   uint32           // of forgetPrivate
	swept   time.Time        // when private last lost the marks of blobs gone
	pinned  map[int][]uint64 // the keys of the commits in progress: their blobs are kept here
	pinSeq  int
	sharing atomic.Int64 // hydrations of shared snapshots in progress
	syncs   syncs        // of the store's filesystem, shared by submits
	lay     layerState   // thin layers: builds and holds (layers.go)
	// running counts the hydrations, thin layer builds and compactions
	// that run on their own (each resumes after a restart, so nothing
	// waits for them but tests).
	running sync.WaitGroup
	diskMu  sync.Mutex // serialises counts of the layer disks
	trash   trash      // what is being removed (trash.go)
	disks   *diskPool  // layer images made ahead

	wake       chan struct{}
	trashWake  chan struct{}
	countWake  chan struct{}        // the layer disks changed: count them again
	useWake    chan struct{}        // a pod ended: its reads are in the page cache now
	settleWake chan struct{}        // arrived is full: settle now (use.go)
	endedAt    map[string]time.Time // volumes whose pods ended lately (use.go), under mu
	arrivedMu  sync.Mutex
	sampleMu   sync.Mutex              // serialises samples of the page cache (use.go)
	arrived    map[cas.Digest]struct{} // blobs written since the last settle (use.go)
	retry      retryPolicy             // how the committer retries an outbox entry
	Stats      Stats
	// Lost, if set before Run, is told of every layer whose writes the
	// committer drops or quarantines, with why: the writes a pod made that
	// no later pod will see.
	Lost func(l Layer, why error)
	// Room, if set, makes room in the store for a snapshot being built
	// that found it full, and reports whether it freed anything.
	Room func() bool
	// Corrupt, if set before Run, is told of every copy a hydration of
	// volumeID's snapshot fetched that failed verification: the blob and
	// the member that sent it (which is repaired).
	Corrupt func(volumeID string, d cas.Digest, from string)
	// Retrying, if set before Run, is told of a layer whose commit has
	// failed RetryThreshold attempts in a row, with the last error.
	Retrying func(l Layer, attempts int, why error)
}

// Open opens the node tier under dir, on the group's local store. The
// directory must be on the same filesystem as the store, so that committing a
// file of a layer without a quota is a rename. The filesystems of live
// layers left by an earlier process are mounted again.
func Open(dir string, g *group.Group) (*Node, error) {
	n := &Node{dir: dir, store: g.Store(), group: g,
		pinned: map[int][]uint64{}, wake: make(chan struct{}, 1), trashWake: make(chan struct{}, 1), countWake: make(chan struct{}, 1), useWake: make(chan struct{}, 1), settleWake: make(chan struct{}, 1), retry: defaultRetry}
	for _, sub := range []string{"snaps", "pods", "outbox", "quarantine", "trash", "staged", "disks"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o700); err != nil {
			return nil, fmt.Errorf("open node tier: %w", err)
		}
	}
	// The snapshots directory is traversed by pods' mounts: searchable by all.
	if err := os.Chmod(filepath.Join(dir, "snaps"), 0o711); err != nil {
		return nil, err
	}
	if err := os.Chmod(dir, 0o711); err != nil {
		return nil, err
	}
	n.store.OnWrite(n.arrive)
	n.disks = newDiskPool(filepath.Join(dir, "disks"))
	n.mountDisks()
	return n, nil
}

func (n *Node) snapPath(root cas.Digest) string { return filepath.Join(n.dir, "snaps", root.String()) }

// layerKey names the layer of a target path.
func layerKey(target string) string {
	h := sha256.Sum256([]byte(filepath.Clean(target)))
	return hex.EncodeToString(h[:12])
}

// LayerDir returns the directory of target's layer.
func (n *Node) LayerDir(target string) string { return n.layerDir(target) }

// UpperDir returns the upper directory of target's layer, which holds what
// its pod wrote.
func (n *Node) UpperDir(target string) string {
	upper, _ := upperOf(n.layerDir(target))
	return upper
}

// Drop discards target's layer and everything written to it.
func (n *Node) Drop(target string) {
	n.discard(n.layerDir(target))
}

func (n *Node) layerDir(target string) string {
	return filepath.Join(n.dir, "pods", layerKey(target))
}

// NewLayer records l and, unless it is read-only, creates its empty upper and
// work directories, returning their paths: on a filesystem of its own the
// size of l.Quota if it has one. The upper directory's root takes the owner
// of l.FileOwner, so non-root pods can write at the top of the volume.
//
// NewLayer, Submit and Drop touch target's layer alone: the caller
// serialises the calls of one target (the driver locks each target), and
// the calls of different targets run at once, so that pods starting
// together do not wait on each other's disk.
func (n *Node) NewLayer(l Layer) (upper, work string, err error) {
	defer n.makingLayer()()
	dir := n.layerDir(l.Target)
	// A layer never mounted (a failed publish) is stale; its disk goes
	// first, so that nothing is removed through a mount.
	if err := freeDisk(dir); err != nil {
		return "", "", err
	}
	os.RemoveAll(dir)
	defer func() {
		if err != nil {
			n.discard(dir)
		}
	}()
	if !l.ReadOnly && l.Quota > 0 && canMakeDisks() {
		if err := n.makeDisk(dir, l.Quota); err != nil {
			return "", "", err
		}
		defer n.kickCount()
	} else if err := os.Mkdir(dir, 0o700); err != nil {
		return "", "", err
	}
	upper, work = upperOf(dir)
	if !l.ReadOnly {
		for _, d := range []string{upper, work} {
			if err := os.Mkdir(d, 0o755); err != nil {
				return "", "", err
			}
		}
		if l.FileOwner != nil {
			if err := os.Chown(upper, int(l.FileOwner.UID), int(l.FileOwner.GID)); err != nil {
				return "", "", err
			}
		}
	}
	if l.Created.IsZero() {
		l.Created = time.Now().UTC()
	}
	if err := files.WriteJSON(filepath.Join(dir, "layer.json"), &l); err != nil {
		return "", "", err
	}
	return upper, work, nil
}

// Layer returns the layer recorded for target.
func (n *Node) Layer(target string) (Layer, bool, error) {
	return readLayer(n.layerDir(target))
}

func readLayer(dir string) (Layer, bool, error) {
	var l Layer
	b, err := os.ReadFile(filepath.Join(dir, "layer.json"))
	if errors.Is(err, fs.ErrNotExist) {
		return l, false, nil
	}
	if err != nil {
		return l, false, err
	}
	if err := json.Unmarshal(b, &l); err != nil {
		return l, false, fmt.Errorf("layer %s: %w", dir, err)
	}
	return l, true, nil
}

// Layers returns every live layer on this node.
func (n *Node) Layers() ([]Layer, error) {
	ents, err := os.ReadDir(filepath.Join(n.dir, "pods"))
	if err != nil {
		return nil, err
	}
	var ls []Layer
	for _, e := range ents {
		if l, ok, err := readLayer(filepath.Join(n.dir, "pods", e.Name())); err == nil && ok {
			ls = append(ls, l)
		}
	}
	return ls, nil
}

// Submit ends target's layer once it is unmounted: its writes are flushed to
// disk and moved into the outbox by a rename (or discarded if the layer does
// not commit). A missing layer is not an error.
func (n *Node) Submit(target string) error {
	dir := n.layerDir(target)
	// Pods ending at once share one syncfs instead of queueing for one each.
	if l, ok, _ := readLayer(dir); ok && !l.ReadOnly && l.Commit {
		if err := n.flush(dir); err != nil {
			return err
		}
	}
	l, ok, err := readLayer(dir)
	if ok {
		n.ended(l.VolumeID)
	}
	if err != nil || !ok {
		if !ok {
			n.discard(dir)
		}
		return err
	}
	if l.ReadOnly || !l.Commit {
		if !l.ReadOnly {
			n.group.Metrics().Commits.WithLabelValues("discarded").Inc()
		}
		n.discard(dir)
		return nil
	}
	name := fmt.Sprintf("%020d-%s", time.Now().UnixNano(), filepath.Base(dir))
	if err := os.Rename(dir, filepath.Join(n.dir, "outbox", name)); err != nil {
		return fmt.Errorf("move layer into outbox: %w", err)
	}
	if err := files.Sync(filepath.Join(n.dir, "outbox")); err != nil {
		return err
	}
	n.kick()
	return nil
}

// flush makes every write of the layer in dir durable: the overlay is
// mounted volatile, so the pod's own fsyncs cost nothing. A layer with a
// disk of its own syncs that filesystem and then its image, and nothing
// else of the store's disk (not the disks being made ahead, nor other
// pods' writes); a layer without one takes one syncfs of the store's
// filesystem, shared by the layers flushed at once.
func (n *Node) flush(dir string) error {
	if !hasDisk(dir) {
		return n.syncs.do(n.store.Sync)
	}
	defer n.kickCount()
	if err := sealDisk(dir); err != nil {
		return err
	}
	return files.Sync(filepath.Join(dir, diskImage))
}

// syncs shares syncs among callers: one started after a caller came covers
// what the caller wrote before, so callers that come while a sync runs wait
// for the next, which they share.
type syncs struct {
	mu      sync.Mutex
	cond    *sync.Cond
	running bool
	done    uint64 // syncs finished
	err     error  // of the last
}

func (s *syncs) do(flush func() error) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cond == nil {
		s.cond = sync.NewCond(&s.mu)
	}
	want := s.done + 1
	if s.running {
		want++ // the one running may have started before this caller's writes
	}
	for s.done < want {
		if s.running {
			s.cond.Wait()
			continue
		}
		s.running = true
		s.mu.Unlock()
		err := flush()
		s.mu.Lock()
		s.running, s.err = false, err
		s.done++
		s.cond.Broadcast()
	}
	return s.err
}

func (n *Node) kick() { kick(n.wake) }

// MarkStaged records that volume id is staged on this node (or, with false,
// no longer is); staged volumes keep their newest snapshot when pruning.
func (n *Node) MarkStaged(id string, staged bool) error {
	p := filepath.Join(n.dir, "staged", layerKey(id))
	if !staged {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		return nil
	}
	return files.WriteAtomic(p, []byte(id))
}

// Staged returns the volumes staged on this node.
func (n *Node) Staged() []string {
	ents, _ := os.ReadDir(filepath.Join(n.dir, "staged"))
	var ids []string
	for _, e := range ents {
		if b, err := os.ReadFile(filepath.Join(n.dir, "staged", e.Name())); err == nil {
			ids = append(ids, string(b))
		}
	}
	return ids
}

// Prune removes the snapshots on this node that no live layer reads, that
// no caller of Stack holds and that are not in keep, so the node tier holds
// little more than what is mounted, and the work directories of hydrations
// that failed. A root pods read keeps its flat snapshot and its whole chain
// of thin layers (pods mounted before a compaction stay on the chain); a
// root in keep keeps the stack a new pod would get. A snapshot under a live
// mount is never touched.
func (n *Node) Prune(keep ...cas.Digest) error {
	// Once the lock below is let go: its walk of the store holds up no stage.
	defer n.forgetPrivate()
	// Held throughout: a root is held before it is resolved, and released
	// only once a pod's layer records it, so one of the two is seen here.
	n.lay.mu.Lock()
	defer n.lay.mu.Unlock()
	ls, err := n.Layers()
	if err != nil {
		return err
	}
	var live []cas.Digest
	for _, l := range ls {
		live = append(live, l.Base)
	}
	pinned, usedLayers := n.inUse(live, keep)
	// The directory is read before the hydrations in progress are: a work
	// directory listed belongs to a hydration claimed before the listing,
	// which the claims read next still show unless it has ended.
	ents, err := os.ReadDir(filepath.Join(n.dir, "snaps"))
	if err != nil {
		return err
	}
	hydrating := map[string]bool{}
	for _, d := range n.hydrations.Keys() {
		hydrating[d.String()] = true
	}
	for _, e := range ents {
		name, work := strings.CutPrefix(e.Name(), ".work-")
		// A work directory no hydration holds is what a failed one left;
		// a later hydration of its root starts over from the store. One
		// claimed in the instant after the claims were read fails on its
		// moved work directory, and its caller retries.
		if work && !hydrating[name] || !work && !pinned[name] && !hydrating[name] {
			n.discard(filepath.Join(n.dir, "snaps", e.Name()))
		}
	}
	if err := n.pruneLayers(usedLayers); err != nil {
		return err
	}
	return nil
}

// privateSweep is how often the marks of private copies are checked against
// the store.
const privateSweep = 10 * time.Minute

// forgetPrivate drops the marks of private copies the store no longer holds
// (re-replication drops a copy once no snapshot links it and its owners have
// it), at most once per privateSweep, so the marks are bounded by the blobs
// on the node, not by all it ever fetched. A mark is by a digest's prefix,
// so the store is walked: every mark that a blob there has is renewed, and
// the others are dropped.
func (n *Node) forgetPrivate() {
	n.mu.Lock()
	if n.private.Len() == 0 || time.Since(n.swept) < privateSweep {
		n.mu.Unlock()
		return
	}
	n.swept = time.Now()
	n.round++
	round := n.round
	n.mu.Unlock()
	// Not stopped by the node's stop: a walk of names alone, a second for
	// a million blobs, at most once per privateSweep.
	err := n.store.Each(context.Background(), func(d cas.Digest) {
		n.mu.Lock()
		defer n.mu.Unlock()
		if _, ok := n.private.Get(d.Short()); ok {
			n.private.Set(d.Short(), round)
		}
	})
	if err != nil {
		return // some copies were not seen: their marks stay
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	// A copy fetched meanwhile was marked in this round: it stays.
	n.private.DeleteFunc(func(_ uint64, r uint32) bool { return r != round })
}
