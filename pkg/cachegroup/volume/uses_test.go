package volume

import (
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/cas"
)

// Past its bound the table forgets the least recently used, also when a
// commit recorded them all at one time.
func TestUsesForgetTheOldest(t *testing.T) {
	u := loadUses(filepath.Join(t.TempDir(), "uses"))
	digests := func(from, n int) []cas.Digest {
		ds := make([]cas.Digest, n)
		for i := range ds {
			ds[i] = cas.Sum(fmt.Append(nil, from+i))
		}
		return ds
	}
	old, now := time.Unix(1000, 0), time.Unix(2000, 0)
	u.touch(digests(0, 300), old)
	u.touch(digests(300, 900), now)
	u.forgetOldest(1000)
	if n := u.at.Len(); n != 900 {
		t.Fatalf("%d uses kept, want 900", n)
	}
	for _, d := range digests(0, 300) {
		if _, ok := u.at.Get(useKey(d)); ok {
			t.Fatal("an older use was kept over a newer one")
		}
	}
	// All at one time: as many go as the bound asks, not none.
	u.touch(digests(1200, 600), now)
	u.forgetOldest(1000)
	if n := u.at.Len(); n != 900 {
		t.Fatalf("%d uses of one time kept, want 900", n)
	}
	// Written down and read back whole.
	u.save()
	if v := loadUses(u.path); v.at.Len() != 900 {
		t.Fatalf("%d uses read back, want 900", v.at.Len())
	}
}
