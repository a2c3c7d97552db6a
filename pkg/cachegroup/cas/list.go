package cas

import (
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
)

// Listing the store: whole, a chunk at a time, or as 8-byte keys.

// All returns the digest of every blob in the store. A pass over a store of
// millions holds less with Each, Shorts or Chunks.
func (s *Store) All() ([]Digest, error) {
	var all []Digest
	err := filepath.WalkDir(s.blobDir(), func(_ string, e fs.DirEntry, err error) error {
		if err == nil && e.Type().IsRegular() {
			if d, err := ParseDigest(e.Name()); err == nil {
				all = append(all, d)
			}
		}
		return nil
	})
	return all, err
}

// Chunks calls fn with the blobs of the store about n at a time (whole
// directories of the store's fan-out, so a chunk may hold more), so that a
// pass over millions of blobs holds thousands. fn must not keep ds; Chunks
// stops at the first error fn returns, and reports it, or the first
// directory it could not read.
func (s *Store) Chunks(n int, fn func(ds []Digest) error) error {
	fans, err := os.ReadDir(s.blobDir())
	if err != nil {
		return err
	}
	var ds []Digest
	for _, fan := range fans {
		if !fan.IsDir() {
			continue
		}
		ents, err := os.ReadDir(filepath.Join(s.blobDir(), fan.Name()))
		if err != nil {
			return err
		}
		for _, e := range ents {
			if d, err := ParseDigest(e.Name()); err == nil && e.Type().IsRegular() {
				ds = append(ds, d)
			}
		}
		if len(ds) >= n {
			if err := fn(ds); err != nil {
				return err
			}
			ds = ds[:0]
		}
	}
	if len(ds) > 0 {
		return fn(ds)
	}
	return nil
}

// Shorts returns the Short of every blob in the store, sorted: a listing of
// a quarter of the size of the digests, for a collection of millions. It
// stops with ctx's error once ctx ends.
func (s *Store) Shorts(ctx context.Context) ([]uint64, error) {
	var keys []uint64
	err := s.Each(ctx, func(d Digest) { keys = append(keys, d.Short()) })
	slices.Sort(keys)
	return keys, err
}

// Each calls fn for every blob in the store, without listing them all at
// once, and reports the first directory it could not read (after which
// some blobs were left out). It stops with ctx's error once ctx ends: a
// walk of a store of millions takes seconds, and a process stopping waits
// for the walks it runs.
func (s *Store) Each(ctx context.Context, fn func(Digest)) error {
	return filepath.WalkDir(s.blobDir(), func(_ string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if e.Type().IsRegular() {
			if d, err := ParseDigest(e.Name()); err == nil {
				fn(d)
			}
		}
		return nil
	})
}
