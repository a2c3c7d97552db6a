package volume

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/cas"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/internal/files"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/tree"
)

// Home keeps the heads and snapshots of the volumes this member is a home of,
// as JSON files below its directory, and applies their commits one at a time.
// On its own it is the home of a group of one; a group that it joins makes
// its changes durable at the volume's other homes too.
type Home struct {
	store *cas.Store
	dir   string

	mu        sync.Mutex
	volumes   map[string]*Volume
	snapshots map[string]*Snapshot
	commitMu  map[string]*sync.Mutex // serialises commits per volume
	uses      *uses

	group Group // nil: a group of one
}

// Group is what a home needs of the group it belongs to.
type Group interface {
	// Replicate makes a new head durable elsewhere before a change is
	// acknowledged: it pushes the new tree objects to their owners and the
	// head to the volume's other homes.
	Replicate(ctx context.Context, v Volume, trees []cas.Digest) error
	// Fetch brings a missing blob (a tree) from the group.
	Fetch(ctx context.Context, d cas.Digest) error
	// CatchUp brings the head of volume id here up to the newest its other
	// homes keep, before a change is applied to it, and reports whether
	// every other home answered.
	CatchUp(ctx context.Context, id string) (complete bool)
	// CheckBlobs confirms, before a commit that names them is applied, that
	// every blob of refs is at its owners with the size the commit claims:
	// ErrMissingBlob if one is not, tree.ErrInvalid if a size is wrong.
	CheckBlobs(ctx context.Context, refs []cas.Ref) error
}

// Open opens the home over store, keeping its records below dir.
func Open(store *cas.Store, dir string) (*Home, error) {
	h := &Home{store: store, dir: dir,
		volumes: map[string]*Volume{}, snapshots: map[string]*Snapshot{}, commitMu: map[string]*sync.Mutex{}}
	for _, sub := range []string{"volumes", "snapshots"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o700); err != nil {
			return nil, fmt.Errorf("open home: %w", err)
		}
	}
	if err := loadJSONDir(filepath.Join(dir, "volumes"), func(v *Volume) { h.volumes[v.ID] = v }); err != nil {
		return nil, err
	}
	if err := loadJSONDir(filepath.Join(dir, "snapshots"), func(s *Snapshot) { h.snapshots[s.ID] = s }); err != nil {
		return nil, err
	}
	if _, err := store.PutBytes(tree.Empty()); err != nil {
		return nil, err
	}
	// "uses" held whole digests; the table starts afresh rather than read
	// them as keys.
	os.Remove(filepath.Join(dir, "uses"))
	h.uses = loadUses(filepath.Join(dir, "uses.v2"))
	return h, nil
}

// Join makes the home part of g: set once, before the home serves.
func (l *Home) Join(g Group) { l.group = g }

// Dir returns the directory the home keeps its records in.
func (l *Home) Dir() string { return l.dir }

func loadJSONDir[T any](dir string, add func(*T)) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if !strings.HasSuffix(e.Name(), ".json") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			return err
		}
		v := new(T)
		if err := json.Unmarshal(b, v); err != nil {
			return fmt.Errorf("load %s: %w", e.Name(), err)
		}
		add(v)
	}
	return nil
}

// Volume returns the head of volume id.
func (l *Home) Volume(_ context.Context, id string) (Volume, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	v, ok := l.volumes[id]
	if !ok || v.Deleted {
		return Volume{}, fmt.Errorf("volume %s: %w", id, cas.ErrNotFound)
	}
	return *v, nil
}

// Volumes lists the heads this member keeps, tombstones included, by ID, so
// that a deletion replicates like any other change.
func (l *Home) Volumes(_ context.Context) ([]Volume, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return byID(l.volumes), nil
}

// byID returns the values of m sorted by their keys, the IDs.
func byID[T any](m map[string]*T) []T {
	ids := slices.Sorted(maps.Keys(m))
	out := make([]T, len(ids))
	for i, id := range ids {
		out[i] = *m[id]
	}
	return out
}

// CreateVolume creates the volume spec names, or returns it if it exists with
// the same settings.
func (l *Home) CreateVolume(ctx context.Context, spec Spec) (Volume, error) {
	id := ID(spec.Name)
	source := ""
	if spec.From != nil {
		source = spec.From.ID
	}
	l.mu.Lock()
	var gen uint64
	if v, ok := l.volumes[id]; ok {
		if !v.Deleted {
			l.mu.Unlock()
			if v.Quota != spec.Quota || v.Source != source {
				return Volume{}, fmt.Errorf("volume %q: %w (quota %d, source %q)", spec.Name, ErrExists, v.Quota, v.Source)
			}
			return *v, nil
		}
		gen = v.Generation // a re-created volume outranks its tombstone
	}
	now := time.Now().UTC()
	v := &Volume{ID: id, Name: spec.Name, Quota: spec.Quota, FileOwner: spec.FileOwner, Root: cas.Sum(tree.Empty()),
		Source: source, Generation: gen + 1, Created: now, Updated: now}
	if s := spec.From; s != nil {
		if spec.Quota > 0 && s.Size > spec.Quota {
			l.mu.Unlock()
			return Volume{}, fmt.Errorf("%w: snapshot %s holds %d bytes, quota %d", tree.ErrTooLarge, s.ID, s.Size, spec.Quota)
		}
		v.Root, v.Size, v.Count = s.Root, s.Size, s.Count
	}
	err := l.setVolume(v)
	l.mu.Unlock()
	if err != nil {
		return Volume{}, err
	}
	return *v, l.replicated(ctx, *v, nil)
}

// setVolume records v durably; l.mu is held.
func (l *Home) setVolume(v *Volume) error {
	if err := files.WriteJSON(filepath.Join(l.dir, "volumes", v.ID+".json"), v); err != nil {
		return err
	}
	l.volumes[v.ID] = v
	return nil
}

func (l *Home) replicated(ctx context.Context, v Volume, trees []cas.Digest) error {
	if l.group == nil {
		return nil
	}
	if err := l.group.Replicate(ctx, v, trees); err != nil {
		return fmt.Errorf("replicate volume %s: %w", v.ID, err)
	}
	return nil
}

// current brings volume id's head here up to date with its other homes and
// returns it. It says ErrNotFound only when no home has the volume: a home
// that has never seen it while another home could not be asked says
// ErrUnavailable, since committers drop the writes of volumes that are gone.
func (l *Home) current(ctx context.Context, id string) (Volume, error) {
	complete := l.group == nil || l.group.CatchUp(ctx, id)
	v, err := l.Volume(ctx, id)
	l.mu.Lock()
	_, known := l.volumes[id] // a tombstone is an answer
	l.mu.Unlock()
	if errors.Is(err, cas.ErrNotFound) && !known && !complete {
		return Volume{}, fmt.Errorf("volume %s: not at this home, and another home did not answer: %w", id, ErrUnavailable)
	}
	return v, err
}

// change applies fn to volume id's head under the lock, bumps its generation
// and records and replicates the result.
func (l *Home) change(ctx context.Context, id string, trees []cas.Digest, fn func(v *Volume) bool) (Volume, error) {
	l.mu.Lock()
	cur, ok := l.volumes[id]
	if !ok || cur.Deleted {
		l.mu.Unlock()
		return Volume{}, fmt.Errorf("volume %s: %w", id, cas.ErrNotFound)
	}
	nv := *cur
	if !fn(&nv) {
		l.mu.Unlock()
		return nv, nil
	}
	nv.Generation++
	nv.Updated = time.Now().UTC()
	err := l.setVolume(&nv)
	l.mu.Unlock()
	if err != nil {
		return Volume{}, err
	}
	return nv, l.replicated(ctx, nv, trees)
}

// DeleteVolume turns volume id's head into a tombstone; a missing volume is
// not an error. Its blobs are left for garbage collection.
func (l *Home) DeleteVolume(ctx context.Context, id string) error {
	if _, err := l.current(ctx, id); err != nil && !errors.Is(err, cas.ErrNotFound) {
		return err
	}
	_, err := l.change(ctx, id, nil, func(v *Volume) bool {
		v.Deleted = true
		return true
	})
	if errors.Is(err, cas.ErrNotFound) {
		return nil
	}
	return err
}

// ExpandVolume raises volume id's quota; a smaller quota is kept as it is.
func (l *Home) ExpandVolume(ctx context.Context, id string, quota int64) (Volume, error) {
	if _, err := l.current(ctx, id); err != nil {
		return Volume{}, err
	}
	return l.change(ctx, id, nil, func(v *Volume) bool {
		if quota <= v.Quota {
			return false
		}
		v.Quota = quota
		return true
	})
}

// PutHead keeps v if it is newer than the head this member has.
func (l *Home) PutHead(_ context.Context, v Volume) error {
	if err := CheckVolumeID(v.ID); err != nil {
		return fmt.Errorf("head: %w", err)
	}
	if v.ID != ID(v.Name) {
		return fmt.Errorf("head %s: %w: not the id of its name %.80q", v.ID, ErrInvalidID, v.Name)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if cur, ok := l.volumes[v.ID]; ok && !Newer(v, *cur) {
		return nil
	}
	return l.setVolume(&v)
}

// Newer orders heads: by generation, then by root so that two homes that
// both advanced during a partition agree on one of them.
func Newer(a, b Volume) bool {
	switch {
	case a.Generation != b.Generation:
		return a.Generation > b.Generation
	case a.Deleted != b.Deleted:
		return a.Deleted
	}
	return a.Root.String() > b.Root.String()
}

// Commit applies c to volume id's head, one commit at a time per volume. The
// new head is durable here and replicated to the other homes when Commit
// returns.
func (l *Home) Commit(ctx context.Context, id string, c *tree.Commit) (CommitResult, error) {
	l.mu.Lock()
	mu, ok := l.commitMu[id]
	if !ok {
		mu = new(sync.Mutex)
		l.commitMu[id] = mu
	}
	l.mu.Unlock()
	mu.Lock()
	defer mu.Unlock()

	v, err := l.current(ctx, id)
	if err != nil {
		return CommitResult{}, err
	}
	if err := c.Validate(); err != nil {
		return CommitResult{}, fmt.Errorf("volume %s: %w", id, err)
	}
	load := func(d cas.Digest) error {
		if l.group != nil && !l.store.Has(d) {
			return l.group.Fetch(ctx, d)
		}
		return nil
	}
	// A commit naming blobs nobody has, or with sizes they do not have,
	// would make a head that cannot be staged and would pass the quota.
	// What a commit writes counts as used, so a volume over its quota
	// evicts what was neither written nor read lately. A run of ops at a
	// time: a commit in parts is checked a part at a time.
	now := time.Now()
	if l.group != nil && len(c.Parts) > 0 {
		err = l.group.CheckBlobs(ctx, c.Parts) // and kept until the commit is applied
	}
	if err == nil {
		err = c.Runs(l.store, load, func(ops []tree.Op) error {
			refs := tree.FilesOf(ops)
			err := CheckLocal(l.store, refs)
			if l.group != nil {
				err = l.group.CheckBlobs(ctx, refs)
			}
			if err != nil {
				return err
			}
			files := make([]cas.Digest, len(refs))
			for i, ref := range refs {
				files[i] = ref.Digest
			}
			l.uses.touch(files, now)
			return nil
		})
	}
	if err != nil {
		return CommitResult{}, fmt.Errorf("volume %s: %w", id, err)
	}
	res, err := tree.Apply(l.store, load, v.Root, c, v.Quota, l.uses.recency)
	if err != nil {
		return CommitResult{}, fmt.Errorf("volume %s: %w", id, err)
	}
	if err := l.store.Sync(); err != nil {
		return CommitResult{}, err
	}
	nv, err := l.change(ctx, id, res.Trees, func(nv *Volume) bool {
		nv.Root, nv.Size, nv.Count = res.Root, res.Size, res.Count
		return true
	})
	if err != nil {
		return CommitResult{}, err
	}
	return CommitResult{Volume: nv, Evicted: res.Evicted}, nil
}

// CheckLocal confirms that every blob of refs is in store with its size, and
// keeps them from collection until the commit is applied: the check of a
// group of one.
func CheckLocal(store *cas.Store, refs []cas.Ref) error {
	for _, ref := range refs {
		if err := CheckSize(ref, store.Keep(ref.Digest)); err != nil {
			return err
		}
	}
	return nil
}

// CheckSize says whether a member holding blob ref with size (-1: not at
// all) confirms it: ErrMissingBlob if it lacks it, tree.ErrInvalid if the
// size is not the one claimed.
func CheckSize(ref cas.Ref, size int64) error {
	switch {
	case size < 0:
		return fmt.Errorf("blob %s: %w", ref.Digest, ErrMissingBlob)
	case size != ref.Size:
		return fmt.Errorf("blob %s: %w: %d bytes, the commit says %d", ref.Digest, tree.ErrInvalid, size, ref.Size)
	}
	return nil
}

// Snapshot returns snapshot id.
func (l *Home) Snapshot(_ context.Context, id string) (Snapshot, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	s, ok := l.snapshots[id]
	if !ok {
		return Snapshot{}, fmt.Errorf("snapshot %s: %w", id, cas.ErrNotFound)
	}
	return *s, nil
}

// Snapshots lists the snapshots this member keeps, by ID.
func (l *Home) Snapshots(_ context.Context) ([]Snapshot, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return byID(l.snapshots), nil
}

// PutSnapshot keeps snapshot s; a snapshot of that name made of another
// volume is ErrExists.
func (l *Home) PutSnapshot(_ context.Context, s Snapshot) error {
	if s.ID != SnapshotID(s.Name) {
		return fmt.Errorf("snapshot %.80q: %w: %.80q is not the id of its name", s.Name, ErrInvalidID, s.ID)
	}
	if err := CheckVolumeID(s.VolumeID); err != nil {
		return fmt.Errorf("snapshot %s: %w", s.ID, err)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if cur, ok := l.snapshots[s.ID]; ok {
		if cur.VolumeID != s.VolumeID {
			return fmt.Errorf("snapshot %q: %w (of volume %s)", s.Name, ErrExists, cur.VolumeID)
		}
		return nil
	}
	if err := files.WriteJSON(filepath.Join(l.dir, "snapshots", s.ID+".json"), &s); err != nil {
		return err
	}
	l.snapshots[s.ID] = &s
	return nil
}

// DeleteSnapshot unpins snapshot id; a missing snapshot is not an error.
func (l *Home) DeleteSnapshot(_ context.Context, id string) error {
	if err := CheckSnapshotID(id); err != nil {
		return err // no such snapshot, and no path to build from it
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := os.Remove(filepath.Join(l.dir, "snapshots", id+".json")); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	delete(l.snapshots, id)
	return nil
}

// DropHead forgets volume id's head: this member is no longer its home.
func (l *Home) DropHead(id string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if os.Remove(filepath.Join(l.dir, "volumes", id+".json")) == nil {
		delete(l.volumes, id)
	}
}
