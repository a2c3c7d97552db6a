package cas

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"testing"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/internal/files"
)

func TestStoreVerifies(t *testing.T) {
	s, err := OpenStore(t.TempDir(), Limits{})
	if err != nil {
		t.Fatal(err)
	}
	good := []byte("content")
	if _, err := s.Put(bytes.NewReader([]byte("wrong")), Sum(good)); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Put of wrong bytes: %v", err)
	}
	if s.Has(Sum(good)) {
		t.Fatal("wrong bytes were stored")
	}
	d, err := s.Put(bytes.NewReader(good), Sum(good))
	if err != nil || d != Sum(good) {
		t.Fatal(err)
	}
	// Bytes flipped on disk are caught before use and the blob dropped.
	if err := files.WriteAtomic(s.Path(d), []byte("CONTENT")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ReadAll(d); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("ReadAll of flipped blob: %v", err)
	}
	if s.Has(d) {
		t.Fatal("corrupt blob kept")
	}
	small, _ := OpenStore(t.TempDir(), Limits{CacheSize: 4})
	if _, err := small.PutBytes([]byte("12345")); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("over cache size: %v", err)
	}
}

// Bytes charged by others on the store's disk count against its cache size
// with the blobs, until their account closes.
func TestChargesCountAgainstTheCacheSize(t *testing.T) {
	s, err := OpenStore(t.TempDir(), Limits{CacheSize: 100})
	if err != nil {
		t.Fatal(err)
	}
	s.Charge("disks", 60)
	s.Charge("outbox", 30)
	s.Charge("disks", 80) // replaces, does not add
	if s.Charged() != 110 || s.Capacity() != 0 {
		t.Fatalf("charged %d, capacity %d", s.Charged(), s.Capacity())
	}
	if _, err := s.PutBytes([]byte("x")); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("a blob past the cache size with charges: %v", err)
	}
	s.Charge("disks", 0)
	if _, err := s.PutBytes([]byte("fits")); err != nil {
		t.Fatal(err)
	}
	if s.Charged() != 30 || s.Used() != 4 || s.Capacity() != 66 {
		t.Fatalf("charged %d, used %d, capacity %d", s.Charged(), s.Used(), s.Capacity())
	}
}

// Chunks hands out every blob once, in chunks of about the size asked, and
// Shorts lists them all, sorted.
func TestChunksAndShortsListEveryBlob(t *testing.T) {
	s, err := OpenStore(t.TempDir(), Limits{})
	if err != nil {
		t.Fatal(err)
	}
	want := map[Digest]bool{}
	for i := range 500 {
		d, err := s.PutBytes(fmt.Append(nil, "blob ", i))
		if err != nil {
			t.Fatal(err)
		}
		want[d] = true
	}
	got := map[Digest]bool{}
	chunks := 0
	err = s.Chunks(100, func(ds []Digest) error {
		chunks++
		for _, d := range ds {
			if got[d] {
				t.Fatalf("blob %s handed out twice", d)
			}
			got[d] = true
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(got, want) || chunks < 3 || chunks > 5 {
		t.Fatalf("%d blobs of %d in %d chunks of about 100", len(got), len(want), chunks)
	}
	stop := errors.New("stop")
	if err := s.Chunks(100, func([]Digest) error { return stop }); err != stop {
		t.Fatalf("Chunks returned %v, not the error of fn", err)
	}
	keys, err := s.Shorts(context.Background())
	if err != nil || len(keys) != len(want) || !slices.IsSorted(keys) {
		t.Fatalf("Shorts: %d keys, sorted %v, %v", len(keys), slices.IsSorted(keys), err)
	}
}
