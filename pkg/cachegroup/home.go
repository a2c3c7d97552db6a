package cachegroup

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"
)

// ErrExists is returned when a name is taken by something incompatible.
var ErrExists = errors.New("already exists with different settings")

// Owner is a uid:gid that committed files are normalised to.
type Owner struct {
	UID uint32 `json:"uid"`
	GID uint32 `json:"gid"`
}

// Volume is a volume's head: its current root and its settings.
type Volume struct {
	ID    string `json:"id"`
	Name  string `json:"name"`
	Quota int64  `json:"quota"`
	// Owner, if set, normalises every committed file to this uid:gid.
	Owner      *Owner    `json:"owner,omitempty"`
	Root       Digest    `json:"root"`
	Size       int64     `json:"size"`
	Count      int64     `json:"count"`
	Generation uint64    `json:"generation"`
	Source     string    `json:"source,omitempty"`  // snapshot it was cloned from
	Deleted    bool      `json:"deleted,omitempty"` // a tombstone
	Created    time.Time `json:"created"`
	Updated    time.Time `json:"updated"`
}

// Snapshot pins one generation of a volume.
type Snapshot struct {
	ID       string    `json:"id"`
	Name     string    `json:"name"`
	VolumeID string    `json:"volumeID"`
	Root     Digest    `json:"root"`
	Size     int64     `json:"size"`
	Count    int64     `json:"count"`
	Created  time.Time `json:"created"`
}

// VolumeSpec is what a new volume is created from.
type VolumeSpec struct {
	Name  string
	Quota int64
	Owner *Owner
	// From is the snapshot to clone, or nil.
	From *Snapshot
}

// CommitResult tells what a commit did.
type CommitResult struct {
	Volume  Volume
	Evicted int // files evicted to stay within quota
}

// VolumeID returns the ID of the volume called name: stable, so that creation
// is idempotent on name and any member can find the volume's home.
func VolumeID(name string) string { return "vol-" + shortHash(name) }

// SnapshotID returns the ID of the snapshot called name.
func SnapshotID(name string) string { return "snap-" + shortHash(name) }

func shortHash(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:12])
}

// Home is what a volume's home serves: heads, commits and snapshots. Heads
// and snapshots carry generations, so replicas converge on the newest.
type Home interface {
	Volume(ctx context.Context, id string) (Volume, error)
	// Volumes lists every head the member keeps, deleted ones (tombstones)
	// included, so that a deletion replicates like any other change.
	Volumes(ctx context.Context) ([]Volume, error)
	CreateVolume(ctx context.Context, spec VolumeSpec) (Volume, error)
	DeleteVolume(ctx context.Context, id string) error
	ExpandVolume(ctx context.Context, id string, quota int64) (Volume, error)
	Commit(ctx context.Context, id string, c *Commit) (CommitResult, error)
	// PutHead keeps a head replicated from another home if it is newer.
	PutHead(ctx context.Context, v Volume) error
	Snapshot(ctx context.Context, id string) (Snapshot, error)
	Snapshots(ctx context.Context) ([]Snapshot, error)
	PutSnapshot(ctx context.Context, s Snapshot) error
	DeleteSnapshot(ctx context.Context, id string) error
}

// Blobs is what a blob's owner serves.
type Blobs interface {
	// Fetch streams blob d; the receiver verifies it.
	Fetch(ctx context.Context, d Digest) (io.ReadCloser, error)
	// Push stores blob d read from r, verifying it first.
	Push(ctx context.Context, d Digest, r io.Reader) error
}

// Peer is one member of a group as the others see it.
type Peer interface {
	Home
	Blobs
	// Name is the member's identity, its node name.
	Name() string
}

// Local is this member: it keeps heads and snapshots for the volumes it is a
// home of, as JSON files under its meta directory, and serves its store.
type Local struct {
	name  string
	store *Store
	dir   string

	mu        sync.Mutex
	volumes   map[string]*Volume
	snapshots map[string]*Snapshot
	commitMu  map[string]*sync.Mutex // serialises commits per volume

	// replicate, if set, makes a new head durable elsewhere before a
	// change is acknowledged: it pushes the new tree objects to their
	// owners and the head to the volume's other homes.
	replicate func(ctx context.Context, v Volume, trees []Digest) error
	// fetch, if set, brings a missing blob (a tree) from the group.
	fetch func(ctx context.Context, d Digest) error
	// catchUp, if set, brings the head of volume id here up to the newest
	// its other homes keep, before a change is applied to it, and reports
	// whether every other home answered.
	catchUp func(ctx context.Context, id string) (complete bool)
	// checkBlobs refuses commits naming blobs absent here; only a group of
	// one can check locally, larger groups trust the committer's pushes.
	checkBlobs bool

	holders *holders // sharing nodes of the snapshots of volumes homed here
}

var _ Peer = (*Local)(nil)

// OpenLocal opens the member called name over store, keeping metadata in dir.
func OpenLocal(name string, store *Store, dir string) (*Local, error) {
	l := &Local{name: name, store: store, dir: dir,
		volumes: map[string]*Volume{}, snapshots: map[string]*Snapshot{}, commitMu: map[string]*sync.Mutex{},
		checkBlobs: true, holders: newHolders()}
	for _, sub := range []string{"volumes", "snapshots"} {
		if err := os.MkdirAll(filepath.Join(dir, sub), 0o700); err != nil {
			return nil, fmt.Errorf("open member: %w", err)
		}
	}
	if err := loadJSONDir(filepath.Join(dir, "volumes"), func(v *Volume) { l.volumes[v.ID] = v }); err != nil {
		return nil, err
	}
	if err := loadJSONDir(filepath.Join(dir, "snapshots"), func(s *Snapshot) { l.snapshots[s.ID] = s }); err != nil {
		return nil, err
	}
	if _, err := store.PutBytes(EmptyTree()); err != nil {
		return nil, err
	}
	return l, nil
}

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

// Name returns the member's identity.
func (l *Local) Name() string { return l.name }

// Store returns the member's blob store.
func (l *Local) Store() *Store { return l.store }

// Fetch opens blob d from the local store.
func (l *Local) Fetch(_ context.Context, d Digest) (io.ReadCloser, error) {
	return l.store.Open(d)
}

// Push stores blob d, verified.
func (l *Local) Push(_ context.Context, d Digest, r io.Reader) error {
	if l.store.Has(d) {
		return nil
	}
	_, err := l.store.Put(r, d)
	return err
}

// Volume returns the head of volume id.
func (l *Local) Volume(_ context.Context, id string) (Volume, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	v, ok := l.volumes[id]
	if !ok || v.Deleted {
		return Volume{}, fmt.Errorf("volume %s: %w", id, ErrNotFound)
	}
	return *v, nil
}

// Volumes lists the heads this member keeps, tombstones included, by ID.
func (l *Local) Volumes(_ context.Context) ([]Volume, error) { return l.allVolumes() }

func (l *Local) allVolumes() ([]Volume, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	vs := make([]Volume, 0, len(l.volumes))
	for _, v := range l.volumes {
		vs = append(vs, *v)
	}
	sort.Slice(vs, func(i, j int) bool { return vs[i].ID < vs[j].ID })
	return vs, nil
}

// CreateVolume creates the volume spec names, or returns it if it exists with
// the same settings.
func (l *Local) CreateVolume(ctx context.Context, spec VolumeSpec) (Volume, error) {
	id := VolumeID(spec.Name)
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
	v := &Volume{ID: id, Name: spec.Name, Quota: spec.Quota, Owner: spec.Owner, Root: Sum(EmptyTree()),
		Source: source, Generation: gen + 1, Created: now, Updated: now}
	if s := spec.From; s != nil {
		if spec.Quota > 0 && s.Size > spec.Quota {
			l.mu.Unlock()
			return Volume{}, fmt.Errorf("%w: snapshot %s holds %d bytes, quota %d", ErrTooLarge, s.ID, s.Size, spec.Quota)
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
func (l *Local) setVolume(v *Volume) error {
	if err := writeJSON(filepath.Join(l.dir, "volumes", v.ID+".json"), v); err != nil {
		return err
	}
	l.volumes[v.ID] = v
	return nil
}

func (l *Local) replicated(ctx context.Context, v Volume, trees []Digest) error {
	if l.replicate == nil {
		return nil
	}
	if err := l.replicate(ctx, v, trees); err != nil {
		return fmt.Errorf("replicate volume %s: %w", v.ID, err)
	}
	return nil
}

// current brings volume id's head here up to date with its other homes and
// returns it. It says ErrNotFound only when no home has the volume: a home
// that has never seen it while another home could not be asked says
// ErrUnavailable, since committers drop the writes of volumes that are gone.
func (l *Local) current(ctx context.Context, id string) (Volume, error) {
	complete := l.catchUp == nil || l.catchUp(ctx, id)
	v, err := l.Volume(ctx, id)
	l.mu.Lock()
	_, known := l.volumes[id] // a tombstone is an answer
	l.mu.Unlock()
	if errors.Is(err, ErrNotFound) && !known && !complete {
		return Volume{}, fmt.Errorf("volume %s: not at this home, and another home did not answer: %w", id, ErrUnavailable)
	}
	return v, err
}

// change applies fn to volume id's head under the lock, bumps its generation
// and records and replicates the result.
func (l *Local) change(ctx context.Context, id string, trees []Digest, fn func(v *Volume) bool) (Volume, error) {
	l.mu.Lock()
	cur, ok := l.volumes[id]
	if !ok || cur.Deleted {
		l.mu.Unlock()
		return Volume{}, fmt.Errorf("volume %s: %w", id, ErrNotFound)
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
func (l *Local) DeleteVolume(ctx context.Context, id string) error {
	if _, err := l.current(ctx, id); err != nil && !errors.Is(err, ErrNotFound) {
		return err
	}
	_, err := l.change(ctx, id, nil, func(v *Volume) bool {
		v.Deleted = true
		return true
	})
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	return err
}

// ExpandVolume raises volume id's quota; a smaller quota is kept as it is.
func (l *Local) ExpandVolume(ctx context.Context, id string, quota int64) (Volume, error) {
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
func (l *Local) PutHead(_ context.Context, v Volume) error {
	if !strings.HasPrefix(v.ID, "vol-") || strings.ContainsAny(v.ID, "/\\.") {
		return fmt.Errorf("head: bad volume id %q", v.ID)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if cur, ok := l.volumes[v.ID]; ok && !newer(v, *cur) {
		return nil
	}
	return l.setVolume(&v)
}

// newer orders heads: by generation, then by root so that two homes that
// both advanced during a partition agree on one of them.
func newer(a, b Volume) bool {
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
func (l *Local) Commit(ctx context.Context, id string, c *Commit) (CommitResult, error) {
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
	if l.checkBlobs {
		for _, op := range c.Ops {
			if op.Kind == OpUpsert && op.Entry.Type == TypeFile && !l.store.Has(op.Entry.Digest) {
				return CommitResult{}, fmt.Errorf("commit %q: blob %s: %w", op.Path, op.Entry.Digest, ErrNotFound)
			}
		}
	}
	load := func(d Digest) error {
		if l.fetch != nil && !l.store.Has(d) {
			return l.fetch(ctx, d)
		}
		return nil
	}
	res, err := applyCommit(l.store, load, v.Root, c, v.Quota)
	if err != nil {
		return CommitResult{}, fmt.Errorf("volume %s: %w", id, err)
	}
	if err := l.store.Sync(); err != nil {
		return CommitResult{}, err
	}
	nv, err := l.change(ctx, id, res.trees, func(nv *Volume) bool {
		nv.Root, nv.Size, nv.Count = res.root, res.size, res.count
		return true
	})
	if err != nil {
		return CommitResult{}, err
	}
	return CommitResult{Volume: nv, Evicted: res.evicted}, nil
}

// Snapshot returns snapshot id.
func (l *Local) Snapshot(_ context.Context, id string) (Snapshot, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	s, ok := l.snapshots[id]
	if !ok {
		return Snapshot{}, fmt.Errorf("snapshot %s: %w", id, ErrNotFound)
	}
	return *s, nil
}

// Snapshots lists the snapshots this member keeps, by ID.
func (l *Local) Snapshots(_ context.Context) ([]Snapshot, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	ss := make([]Snapshot, 0, len(l.snapshots))
	for _, s := range l.snapshots {
		ss = append(ss, *s)
	}
	sort.Slice(ss, func(i, j int) bool { return ss[i].ID < ss[j].ID })
	return ss, nil
}

// PutSnapshot keeps snapshot s; a snapshot of that name made of another
// volume is ErrExists.
func (l *Local) PutSnapshot(_ context.Context, s Snapshot) error {
	if s.ID != SnapshotID(s.Name) {
		return fmt.Errorf("snapshot %q: id %q does not match its name", s.Name, s.ID)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if cur, ok := l.snapshots[s.ID]; ok {
		if cur.VolumeID != s.VolumeID {
			return fmt.Errorf("snapshot %q: %w (of volume %s)", s.Name, ErrExists, cur.VolumeID)
		}
		return nil
	}
	if err := writeJSON(filepath.Join(l.dir, "snapshots", s.ID+".json"), &s); err != nil {
		return err
	}
	l.snapshots[s.ID] = &s
	return nil
}

// DeleteSnapshot unpins snapshot id; a missing snapshot is not an error.
func (l *Local) DeleteSnapshot(_ context.Context, id string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := os.Remove(filepath.Join(l.dir, "snapshots", id+".json")); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	delete(l.snapshots, id)
	return nil
}

// dropHead forgets volume id's head: this member is no longer its home.
func (l *Local) dropHead(id string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if os.Remove(filepath.Join(l.dir, "volumes", id+".json")) == nil {
		delete(l.volumes, id)
	}
}

// dropSnapshot forgets snapshot id: this member is no longer its home.
func (l *Local) dropSnapshot(id string) {
	l.DeleteSnapshot(context.Background(), id)
}

// writeJSON writes v to path atomically and durably.
func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(path, b)
}

// writeFileAtomic writes b to a temporary file, fsyncs it, renames it over
// path and fsyncs the directory.
func writeFileAtomic(path string, b []byte) error {
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return syncDir(filepath.Dir(path))
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
