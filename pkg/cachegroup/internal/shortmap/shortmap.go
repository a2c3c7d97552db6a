// Package shortmap is a map from 64-bit keys (the first bytes of a digest)
// for tables of millions: sorted arrays for the many, a small map for those
// set since they were last merged, at about 8 bytes and a value an entry
// where a Go map takes two to three times that.
package shortmap

import (
	"iter"
	"slices"
)

// minMerge is the fewest new keys merged into the arrays at once; past it,
// a merge waits for a sixteenth of the table, so that each key set costs
// a bounded number of moves however large the table grows.
const minMerge = 4096

// Map maps uint64 keys to values of V. The zero Map is empty and ready to
// use; a Map is not safe for concurrent use.
type Map[V any] struct {
	keys []uint64 // sorted, distinct
	vals []V      // vals[i] is the value of keys[i]
	news map[uint64]V
}

// Len returns the number of keys in m.
func (m *Map[V]) Len() int { return len(m.keys) + len(m.news) }

// Get returns the value of k, and whether m holds k.
func (m *Map[V]) Get(k uint64) (V, bool) {
	if i, ok := slices.BinarySearch(m.keys, k); ok {
		return m.vals[i], true
	}
	v, ok := m.news[k]
	return v, ok
}

// Set sets the value of k to v.
func (m *Map[V]) Set(k uint64, v V) {
	if i, ok := slices.BinarySearch(m.keys, k); ok {
		m.vals[i] = v
		return
	}
	if m.news == nil {
		m.news = map[uint64]V{}
	}
	m.news[k] = v
	if len(m.news) >= max(minMerge, len(m.keys)/16) {
		m.merge()
	}
}

// merge moves the new keys into the arrays.
func (m *Map[V]) merge() {
	add := make([]uint64, 0, len(m.news))
	for k := range m.news {
		add = append(add, k)
	}
	slices.Sort(add)
	m.vals = slices.Grow(m.vals, len(add))[:len(m.keys)+len(add)]
	m.keys = Merge(m.keys, add, func(to, from int, added bool) {
		if added {
			m.vals[to] = m.news[add[from]]
		} else {
			m.vals[to] = m.vals[from]
		}
	})
	m.news = nil
}

// Merge merges the sorted keys add into the sorted keys, in place and from
// the end so that nothing is copied twice, and returns the merged keys.
// placed, if not nil, is told where each key went: to index to, from index
// from of keys or, if added, of add.
func Merge(keys, add []uint64, placed func(to, from int, added bool)) []uint64 {
	n, a := len(keys), len(add)
	keys = slices.Grow(keys, a)[:n+a]
	i, j := n-1, a-1
	for w := n + a - 1; j >= 0; w-- {
		if i >= 0 && keys[i] > add[j] {
			keys[w] = keys[i]
			if placed != nil {
				placed(w, i, false)
			}
			i--
		} else {
			keys[w] = add[j]
			if placed != nil {
				placed(w, j, true)
			}
			j--
		}
	}
	return keys
}

// DeleteFunc deletes every key for which del returns true.
func (m *Map[V]) DeleteFunc(del func(k uint64, v V) bool) {
	w := 0
	for i, k := range m.keys {
		if !del(k, m.vals[i]) {
			m.keys[w], m.vals[w] = k, m.vals[i]
			w++
		}
	}
	clear(m.vals[w:]) // let go of what the values point to
	m.keys, m.vals = m.keys[:w], m.vals[:w]
	for k, v := range m.news {
		if del(k, v) {
			delete(m.news, k)
		}
	}
	// A table that shrank a lot gives its arrays back.
	if cap(m.keys) > 1024 && len(m.keys) < cap(m.keys)/4 {
		m.keys, m.vals = slices.Clone(m.keys), slices.Clone(m.vals)
	}
}

// All returns the keys of m and their values, in no particular order.
func (m *Map[V]) All() iter.Seq2[uint64, V] {
	return func(yield func(uint64, V) bool) {
		for i, k := range m.keys {
			if !yield(k, m.vals[i]) {
				return
			}
		}
		for k, v := range m.news {
			if !yield(k, v) {
				return
			}
		}
	}
}
