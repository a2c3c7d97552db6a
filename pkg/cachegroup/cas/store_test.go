package cas

import (
	"bytes"
	"errors"
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
