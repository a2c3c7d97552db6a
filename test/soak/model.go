package main

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// stampPath is the file every build rewrites with its id: since the last
// writer wins per path, it names the last build whose commit landed.
const stampPath = ".soak/stamp"

// digest is a file content's SHA-256.
type digest [32]byte

// short returns the first hex digits of d, for messages.
func (d digest) short() string { return fmt.Sprintf("%x", d[:6]) }

// content returns the bytes build writes at path of volume vol: a header
// naming all three (so wrong bytes can be traced to their writer), then
// size pseudo-random bytes seeded by the header.
func content(vol, path string, build, size int) []byte {
	hdr := fmt.Sprintf("soak v=%s p=%s b=%d n=%d\n", vol, path, build, size)
	h := sha256.Sum256([]byte(hdr))
	r := rand.New(rand.NewPCG(binary.LittleEndian.Uint64(h[:8]), binary.LittleEndian.Uint64(h[8:16])))
	b := make([]byte, len(hdr)+size)
	copy(b, hdr)
	for i := len(hdr); i < len(b); i += 8 {
		var w [8]byte
		binary.LittleEndian.PutUint64(w[:], r.Uint64())
		copy(b[i:], w[:])
	}
	return b
}

// stampContent is the stamp's content for build.
func stampContent(build int) []byte { return []byte("build " + strconv.Itoa(build) + "\n") }

// parseStamp returns the build a stamp's content names, or -1.
func parseStamp(b []byte) int {
	s, ok := strings.CutPrefix(strings.TrimSpace(string(b)), "build ")
	if !ok {
		return -1
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		return -1
	}
	return n
}

// fileSize draws a file size: mostly small files, some medium, a few large,
// like a package cache.
func fileSize(r *rand.Rand) int {
	switch p := r.IntN(100); {
	case p < 70:
		return 1<<10 + r.IntN(15<<10)
	case p < 95:
		return 16<<10 + r.IntN(112<<10)
	default:
		return 256<<10 + r.IntN(768<<10)
	}
}

// op is one change a build made to a path: a new content, or a delete.
type op struct {
	del bool
	sum digest
}

// volModel is what the harness knows of one volume: every content ever
// written at each path (any of which a read may see: a commit's fate is
// not always known), and, while certain, exactly what the head holds.
type volModel struct {
	name string
	// versions holds, per path, every content a build wrote there.
	versions map[string]map[digest]bool
	// hot are paths every build reads and no build changes.
	hot map[string]bool
	// certain says want is exactly the head (minus what the cache forgot):
	// every build of the volume so far has a known fate, and they landed in
	// the order they were made.
	certain bool
	// want is the head as the model knows it, while certain.
	want map[string]digest
	// stamp is the build the stamp named at the last check.
	stamp int
}

// newVolModel returns the model of an empty volume.
func newVolModel(name string) *volModel {
	return &volModel{name: name, versions: map[string]map[digest]bool{}, hot: map[string]bool{},
		want: map[string]digest{}, certain: true, stamp: 0}
}

// wrote records that a build wrote sum at path (before its commit is sent).
func (v *volModel) wrote(path string, sum digest) {
	s := v.versions[path]
	if s == nil {
		s = map[digest]bool{}
		v.versions[path] = s
	}
	s[sum] = true
}

// finding is one check's result at one path.
type finding struct {
	kind string // see the kind constants
	path string
	msg  string
}

// Kinds of findings; correctness tells which are failures.
const (
	kindWrong       = "wrong-bytes" // content no build ever wrote at the path
	kindStale       = "stale"       // an older version than the newest committed, with no eviction to explain it
	kindResurrected = "resurrected" // a path a landed commit deleted is back
	kindForgotten   = "forgotten"   // a path the head should hold is gone (eviction: allowed)
	kindHotEvicted  = "hot-evicted" // a hot path is gone while cold paths remain
	kindStampOdd    = "stamp-odd"   // the stamp names no build the model expects (the lane goes uncertain)
	kindReadError   = "read-error"  // a file the mount lists cannot be read
)

// correctness reports whether findings of kind are correctness failures.
func correctness(kind string) bool {
	return kind == kindWrong || kind == kindStale || kind == kindResurrected || kind == kindReadError
}

// checkResult is what a check of a mounted tree found.
type checkResult struct {
	findings []finding
	// strong says the tree was checked against the exact head, not only
	// against the versions ever written.
	strong bool
	// prevFate is what the check learned of the previous build: "landed",
	// "dropped" or "" (unknown).
	prevFate  string
	forgotten int
	hotGone   int
}

// check compares a mounted tree (path to content digest) with the model.
// prev is the volume's previous build and prevResolved whether its commit
// had left the outbox before the mount; prevOps its changes; settled
// whether no build of the volume has a commit still pending. The model is
// then brought to what was seen.
func (v *volModel) check(seen map[string]digest, stampBuild, prev int, prevOps map[string]op, prevResolved, settled bool) checkResult {
	var res checkResult
	add := func(kind, path, format string, args ...any) {
		res.findings = append(res.findings, finding{kind: kind, path: path, msg: fmt.Sprintf(format, args...)})
	}
	// Always: a file that exists holds some version written at its path.
	for p, sum := range seen {
		if !v.versions[p][sum] {
			if len(v.versions[p]) == 0 {
				add(kindWrong, p, "volume %s: %s exists (content %s) but no build ever wrote it", v.name, p, sum.short())
			} else {
				add(kindWrong, p, "volume %s: %s has content %s, none of the %d versions written there", v.name, p, sum.short(), len(v.versions[p]))
			}
		}
	}
	switch {
	case !v.certain:
	case prev == 0: // nothing built on the volume yet
		if stampBuild != v.stamp {
			add(kindStampOdd, stampPath, "volume %s: stamp names build %d before any build", v.name, stampBuild)
			v.certain = false
		}
	case !prevResolved:
		v.certain = false // the previous commit may land at any time from now
	case stampBuild == prev:
		res.prevFate = "landed"
		for p, o := range prevOps {
			if o.del {
				delete(v.want, p)
			} else {
				v.want[p] = o.sum
			}
		}
	case stampBuild == v.stamp:
		res.prevFate = "dropped"
	case stampBuild > 0 && stampBuild < v.stamp:
		add(kindStale, stampPath, "volume %s: stamp names build %d, older than build %d seen before", v.name, stampBuild, v.stamp)
		v.certain = false
	default: // the stamp itself forgotten, or naming a build of no sense
		add(kindStampOdd, stampPath, "volume %s: stamp names build %d; expected %d (previous build landed) or %d (dropped)", v.name, stampBuild, prev, v.stamp)
		v.certain = false
	}
	if v.certain {
		res.strong = true
		for p, sum := range seen {
			w, ok := v.want[p]
			switch {
			case !v.versions[p][sum]: // reported above
			case !ok:
				add(kindResurrected, p, "volume %s: %s exists (content %s) though the head should not hold it", v.name, p, sum.short())
			case w != sum:
				add(kindStale, p, "volume %s: %s has content %s, an older version than the head's %s", v.name, p, sum.short(), w.short())
			}
		}
		for p := range v.want {
			if _, ok := seen[p]; !ok {
				res.forgotten++
			}
		}
	}
	// The hot set: none missing while cold files remain.
	cold := 0
	for p := range seen {
		if !v.hot[p] && p != stampPath {
			cold++
		}
	}
	for p := range v.hot {
		if _, ok := seen[p]; !ok {
			res.hotGone++
		}
	}
	if res.hotGone > 0 && cold > 0 {
		add(kindHotEvicted, "", "volume %s: %d of %d hot paths are gone while %d cold files remain", v.name, res.hotGone, len(v.hot), cold)
	}
	// From here on the model is what was seen: forgotten paths are gone,
	// and a lane that was uncertain is certain again once nothing is pending.
	if settled || v.certain {
		v.certain = true
		v.want = make(map[string]digest, len(seen))
		for p, sum := range seen {
			if v.versions[p][sum] {
				v.want[p] = sum
			}
		}
	}
	v.stamp = stampBuild
	if res.forgotten > 0 {
		add(kindForgotten, "", "volume %s: %d paths the head should hold are gone (evicted)", v.name, res.forgotten)
	}
	return res
}

// tally counts findings by kind, safely across builds.
type tally struct {
	mu     sync.Mutex
	counts map[string]int
	first  map[string][]string // the first few messages of each kind
}

func newTally() *tally { return &tally{counts: map[string]int{}, first: map[string][]string{}} }

// add counts fs.
func (t *tally) add(fs []finding) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, f := range fs {
		t.counts[f.kind]++
		if len(t.first[f.kind]) < 5 {
			t.first[f.kind] = append(t.first[f.kind], f.msg)
		}
	}
}

// get returns the count of kind.
func (t *tally) get(kind string) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.counts[kind]
}

// examples returns the first messages of kind.
func (t *tally) examples(kind string) []string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return slices.Clone(t.first[kind])
}
