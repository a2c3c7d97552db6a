package shortmap

import (
	"math/rand/v2"
	"runtime"
	"testing"
)

// A Map holds what a Go map would through sets, merges and deletes.
func TestMapAgreesWithAGoMap(t *testing.T) {
	var m Map[int64]
	want := map[uint64]int64{}
	r := rand.New(rand.NewPCG(1, 2))
	check := func(when string) {
		t.Helper()
		if m.Len() != len(want) {
			t.Fatalf("%s: Len %d, want %d", when, m.Len(), len(want))
		}
		for k, v := range want {
			if got, ok := m.Get(k); !ok || got != v {
				t.Fatalf("%s: Get(%d) = %d, %v; want %d", when, k, got, ok, v)
			}
		}
		seen := 0
		for k, v := range m.All() {
			if want[k] != v {
				t.Fatalf("%s: All gave %d=%d, want %d", when, k, v, want[k])
			}
			seen++
		}
		if seen != len(want) {
			t.Fatalf("%s: All gave %d keys, want %d", when, seen, len(want))
		}
		if _, ok := m.Get(1 << 63); ok != (want[1<<63] != 0) {
			t.Fatalf("%s: a key never set is found", when)
		}
	}
	for round := range 5 {
		for range 30000 {
			k := r.Uint64N(50000) // many keys set again
			v := r.Int64()
			m.Set(k, v)
			want[k] = v
		}
		check("after sets")
		if len(m.keys) == 0 {
			t.Fatal("nothing was merged into the arrays")
		}
		cut := int64(round) << 60
		m.DeleteFunc(func(_ uint64, v int64) bool { return v < cut })
		for k, v := range want {
			if v < cut {
				delete(want, k)
			}
		}
		check("after deletes")
	}
	m.DeleteFunc(func(uint64, int64) bool { return true })
	clear(want)
	check("emptied")
}

// BenchmarkMapBytes reports the heap a table of a million keys takes, against
// a Go map of the same.
func BenchmarkMapBytes(b *testing.B) {
	const n = 1 << 20
	heap := func() uint64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	for range b.N {
		before := heap()
		var m Map[int64]
		for i := range uint64(n) {
			m.Set(i*0x9e3779b97f4a7c15, int64(i))
		}
		b.ReportMetric(float64(heap()-before)/n, "B/key")
		before = heap()
		g := map[uint64]int64{}
		for i := range uint64(n) {
			g[i*0x9e3779b97f4a7c15] = int64(i)
		}
		b.ReportMetric(float64(heap()-before)/n, "map-B/key")
		runtime.KeepAlive(&m)
		runtime.KeepAlive(g)
	}
}
