package group

import (
	"context"
	"errors"
	"io"
	"os"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/cas"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/volume"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/wire"
)

// Peer is one member of a group as the others see it: the home of some
// volumes, the owner of some blobs, and the keeper of the sharing nodes of
// the snapshots of volumes it is a home of. Another member is a
// *wire.Client; this one is served from its own home and store.
type Peer interface {
	// Name is the member's identity, its node name.
	Name() string
	volume.Service
	Blobs
	Sharers
}

// Blobs is what a member serves of its store. The receiver of a blob
// verifies it.
type Blobs interface {
	// Fetch streams blob d; with through, a sharing peer hydrating a
	// snapshot that holds it may fetch it from its owners first.
	Fetch(ctx context.Context, d cas.Digest, through bool) (io.ReadCloser, error)
	// FetchRange streams n bytes of blob d from offset off.
	FetchRange(ctx context.Context, d cas.Digest, off, n int64) (io.ReadCloser, error)
	// FetchBatch streams the blobs refs, handing each to put with its
	// length and a reader of exactly its bytes (see wire.Client).
	FetchBatch(ctx context.Context, refs []cas.Ref, through bool, put func(ref cas.Ref, n int64, r io.Reader) error) error
	// Push stores blob d read from r, verifying it first.
	Push(ctx context.Context, d cas.Digest, r io.Reader) error
	// Verify re-hashes the member's copy of blob d and drops it if wrong.
	Verify(ctx context.Context, d cas.Digest) error
	// Sizes returns the size of each blob of ds at the member, -1 for
	// those it lacks.
	Sizes(ctx context.Context, ds []cas.Digest) ([]int64, error)
	// Keep is Sizes, and keeps the blobs the member has from collection
	// for a while (see cas.Store.Keep).
	Keep(ctx context.Context, ds []cas.Digest) ([]int64, error)
}

// Sharers is what a volume's home knows of the nodes sharing a snapshot.
type Sharers interface {
	// AddHolder records that member shares snapshot root.
	AddHolder(ctx context.Context, root cas.Digest, member string) error
	// Holders lists the members that share snapshot root.
	Holders(ctx context.Context, root cas.Digest) ([]string, error)
}

var _ Peer = (*wire.Client)(nil)

// self is this member as a Peer: its home, its store and its list of sharing
// nodes, called in process.
type self struct {
	*volume.Home
	name    string
	store   *cas.Store
	sharers *sharers
}

var _ Peer = (*self)(nil)

func (s *self) Name() string { return s.name }

func (s *self) Fetch(_ context.Context, d cas.Digest, _ bool) (io.ReadCloser, error) {
	return s.store.Open(d)
}

func (s *self) FetchRange(_ context.Context, d cas.Digest, off, n int64) (io.ReadCloser, error) {
	f, err := s.store.Open(d)
	if err != nil {
		return nil, err
	}
	return struct {
		io.Reader
		io.Closer
	}{io.NewSectionReader(f, off, n), f}, nil
}

func (s *self) FetchBatch(_ context.Context, refs []cas.Ref, _ bool, put func(cas.Ref, int64, io.Reader) error) error {
	for _, ref := range refs {
		f, err := s.store.Open(ref.Digest)
		if err != nil {
			continue // not here: skipped, as a remote member does
		}
		err = func(f *os.File) error {
			defer f.Close()
			fi, err := f.Stat()
			if err != nil {
				return err
			}
			return put(ref, fi.Size(), io.LimitReader(f, fi.Size()))
		}(f)
		if err != nil && !errors.Is(err, cas.ErrCorrupt) {
			return err
		}
	}
	return nil
}

func (s *self) Push(_ context.Context, d cas.Digest, r io.Reader) error {
	if s.store.Keep(d) >= 0 {
		return nil
	}
	_, err := s.store.Put(r, d)
	return err
}

func (s *self) Verify(_ context.Context, d cas.Digest) error { return s.store.Verify(d) }

func (s *self) Sizes(_ context.Context, ds []cas.Digest) ([]int64, error) {
	sizes := make([]int64, len(ds))
	for i, d := range ds {
		sizes[i] = s.store.Size(d)
	}
	return sizes, nil
}

func (s *self) Keep(_ context.Context, ds []cas.Digest) ([]int64, error) {
	sizes := make([]int64, len(ds))
	for i, d := range ds {
		sizes[i] = s.store.Keep(d)
	}
	return sizes, nil
}

func (s *self) AddHolder(_ context.Context, root cas.Digest, member string) error {
	s.sharers.add(root, member)
	return nil
}

func (s *self) Holders(_ context.Context, root cas.Digest) ([]string, error) {
	return s.sharers.list(root), nil
}
