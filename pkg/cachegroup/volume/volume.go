package volume

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"time"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/cas"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/tree"
)

// FileOwner is a uid:gid that committed files are normalised to.
type FileOwner struct {
	UID uint32 `json:"uid"`
	GID uint32 `json:"gid"`
}

// Volume is a volume's head: its current root and its settings.
type Volume struct {
	ID    string `json:"id"`
	Name  string `json:"name"`
	Quota int64  `json:"quota"`
	// FileOwner, if set, normalises every committed file to this uid:gid.
	FileOwner  *FileOwner `json:"owner,omitempty"`
	Root       cas.Digest `json:"root"`
	Size       int64      `json:"size"`
	Count      int64      `json:"count"`
	Generation uint64     `json:"generation"`
	Source     string     `json:"source,omitempty"`  // snapshot it was cloned from
	Deleted    bool       `json:"deleted,omitempty"` // a tombstone
	Created    time.Time  `json:"created"`
	Updated    time.Time  `json:"updated"`
}

// Snapshot pins one generation of a volume.
type Snapshot struct {
	ID       string     `json:"id"`
	Name     string     `json:"name"`
	VolumeID string     `json:"volumeID"`
	Root     cas.Digest `json:"root"`
	Size     int64      `json:"size"`
	Count    int64      `json:"count"`
	Created  time.Time  `json:"created"`
}

// Spec is what a new volume is created from.
type Spec struct {
	Name      string
	Quota     int64
	FileOwner *FileOwner `json:"Owner"`
	// From is the snapshot to clone, or nil.
	From *Snapshot
}

// CommitResult tells what a commit did.
type CommitResult struct {
	Volume  Volume
	Evicted int // files evicted to stay within quota
}

// ID returns the ID of the volume called name: stable, so that creation is
// idempotent on name and any member can find the volume's home.
func ID(name string) string { return "vol-" + shortHash(name) }

// SnapshotID returns the ID of the snapshot called name.
func SnapshotID(name string) string { return "snap-" + shortHash(name) }

func shortHash(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:12])
}

// Service is what a volume's home serves, whether it is this member's Home or
// another member's reached over the peer protocol. Heads and snapshots carry
// generations, so replicas converge on the newest.
type Service interface {
	Volume(ctx context.Context, id string) (Volume, error)
	// Volumes lists every head the member keeps, deleted ones (tombstones)
	// included, so that a deletion replicates like any other change.
	Volumes(ctx context.Context) ([]Volume, error)
	CreateVolume(ctx context.Context, spec Spec) (Volume, error)
	DeleteVolume(ctx context.Context, id string) error
	ExpandVolume(ctx context.Context, id string, quota int64) (Volume, error)
	Commit(ctx context.Context, id string, c *tree.Commit) (CommitResult, error)
	// PutHead keeps a head replicated from another home if it is newer.
	PutHead(ctx context.Context, v Volume) error
	// Used records that nodes read the blobs ds lately: a volume over its
	// quota evicts the files neither written nor read for longest.
	Used(ctx context.Context, ds []cas.Digest) error
	Snapshot(ctx context.Context, id string) (Snapshot, error)
	Snapshots(ctx context.Context) ([]Snapshot, error)
	PutSnapshot(ctx context.Context, s Snapshot) error
	DeleteSnapshot(ctx context.Context, id string) error
}

var _ Service = (*Home)(nil)
