package main

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/cachegroup/cachegroup/internal/csiharness"
)

// buildRecord is what one build did and saw.
type buildRecord struct {
	id       int
	lane     string
	node     string
	at       float64 // seconds since the start, when the build began
	seed     bool
	podStart time.Duration // NodeStageVolume + NodePublishVolume
	files    int           // files seen at the mount
	read     int64         // bytes read and checked
	written  int64         // bytes written (the commit's size)
	deleted  int
	strong   bool   // checked against the exact head
	prevFate string // what the mount told of the previous build
	resolved bool   // its commit left the outbox within the resolve wait
	commitIn time.Duration
	hotGone  int
	forgot   int
	err      string
}

// callTimeout bounds each CSI call of a build (the harness retries
// Unavailable and Aborted answers within it, as the kubelet does).
const callTimeout = 2 * time.Minute

// build runs one build of lane ln on node n: mount, check every file,
// change the tree, re-read the hot set, unmount (the commit), and wait a
// while for the commit to leave the outbox. A seed build writes the
// volume's first tree instead of changing it.
func (s *soak) build(ctx context.Context, ln *lane, n *node, id int, seed bool) (rec buildRecord) {
	rec = buildRecord{id: id, lane: ln.name, node: n.m.Name, at: time.Since(s.start).Seconds(), seed: seed}
	fail := func(format string, args ...any) buildRecord {
		rec.err = fmt.Sprintf(format, args...)
		ln.model.certain = false // what this build did to the head is unknown
		return rec
	}
	// What is still pending; the previous build resolved or not.
	still := ln.pending[:0]
	for _, p := range ln.pending {
		if !p.gone() {
			still = append(still, p)
		}
	}
	ln.pending = still
	settled := len(ln.pending) == 0
	prevResolved := true
	for _, p := range ln.pending {
		if p.build == ln.prev {
			prevResolved = false
		}
	}

	staging := filepath.Join(n.m.Kubelet, "staging", ln.name)
	target := filepath.Join(n.m.Kubelet, "pods", fmt.Sprintf("build-%d", id), "volume")
	t0 := time.Now()
	err := n.call(ctx, callTimeout, func(ctx context.Context, d *csiharness.Driver) error {
		if err := d.Stage(ctx, ln.vol, staging, mountFlags...); err != nil {
			return err
		}
		return d.Publish(ctx, ln.vol, staging, target, mountFlags, false)
	})
	rec.podStart = time.Since(t0)
	if err != nil {
		s.unstage(ln, n, staging)
		rec.err = "mount: " + err.Error()
		return rec // nothing was written: the model stands
	}
	mounted := true
	ops := map[string]op{}
	defer func() {
		if mounted { // a failure on the way: the pod ends all the same
			entries, _ := s.unmount(ctx, ln, n, target, staging)
			ln.prev, ln.prevOps = id, ops
			if p := (pendingCommit{build: id, n: n, entries: entries}); !p.gone() {
				ln.pending = append(ln.pending, p)
			}
		}
	}()

	seen, stamp, read, err := scanTree(target)
	rec.files, rec.read = len(seen), read
	if err != nil {
		s.tally.add([]finding{{kind: kindReadError, msg: fmt.Sprintf("build %d on %s, volume %s: %v", id, n.m.Name, ln.name, err)}})
		return fail("read the tree: %v", err)
	}
	res := ln.model.check(seen, stamp, ln.prev, ln.prevOps, prevResolved, settled)
	s.tally.add(res.findings)
	for _, f := range res.findings {
		if correctness(f.kind) {
			logf("FAILURE build %d on %s: %s", id, n.m.Name, f.msg)
		}
	}
	rec.strong, rec.prevFate, rec.hotGone, rec.forgot = res.strong, res.prevFate, res.hotGone, res.forgotten

	// The build's changes.
	r := rand.New(rand.NewPCG(s.c.seed, uint64(id)))
	write := func(p string, b []byte) error {
		full := filepath.Join(target, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			return err
		}
		sum := digest(sha256.Sum256(b))
		ln.model.wrote(p, sum) // before the commit can land
		if err := os.WriteFile(full, b, 0o644); err != nil {
			return err
		}
		ops[p] = op{sum: sum}
		rec.written += int64(len(b))
		return nil
	}
	if seed {
		hot := max(1, s.c.files/10)
		for i := range s.c.files {
			p := fmt.Sprintf("d%02d/seed-%d.bin", r.IntN(20), i)
			if i < hot {
				p = fmt.Sprintf("hot/h%03d.bin", i)
				ln.model.hot[p] = true
			}
			if err := write(p, content(ln.name, p, id, fileSize(r))); err != nil {
				return fail("write %s: %v", p, err)
			}
		}
	} else {
		var cold []string
		for p := range seen {
			if !ln.model.hot[p] && p != stampPath {
				cold = append(cold, p)
			}
		}
		slices.Sort(cold)
		r.Shuffle(len(cold), func(i, j int) { cold[i], cold[j] = cold[j], cold[i] })
		ndel, nrew := len(seen)/10, len(seen)/20
		for _, p := range cold[:min(ndel, len(cold))] {
			if err := os.Remove(filepath.Join(target, p)); err != nil {
				return fail("delete %s: %v", p, err)
			}
			ops[p] = op{del: true}
			rec.deleted++
		}
		for _, p := range cold[min(ndel, len(cold)):min(ndel+nrew, len(cold))] {
			if err := write(p, content(ln.name, p, id, fileSize(r))); err != nil {
				return fail("rewrite %s: %v", p, err)
			}
		}
		// A tenth added, and a little more, so the tree grows to its quota.
		nadd := max(1, len(seen)*11/100)
		for i := range nadd {
			p := fmt.Sprintf("d%02d/b%d-%d.bin", r.IntN(20), id, i)
			if err := write(p, content(ln.name, p, id, fileSize(r))); err != nil {
				return fail("add %s: %v", p, err)
			}
		}
	}
	if err := write(stampPath, stampContent(id)); err != nil {
		return fail("write the stamp: %v", err)
	}

	// The hot set read again, and what the build wrote read back.
	var again []finding
	for p := range ln.model.hot {
		if want, ok := seen[p]; ok {
			if got, err := sumFile(filepath.Join(target, p)); err != nil || got != want {
				again = append(again, finding{kind: kindWrong, path: p,
					msg: fmt.Sprintf("volume %s: hot %s read again gives %s (%v), first read %s", ln.name, p, got.short(), err, want.short())})
			}
		}
	}
	for p, o := range ops {
		if !o.del {
			if got, err := sumFile(filepath.Join(target, p)); err != nil || got != o.sum {
				again = append(again, finding{kind: kindWrong, path: p,
					msg: fmt.Sprintf("volume %s: %s read back after writing gives %s (%v), wrote %s", ln.name, p, got.short(), err, o.sum.short())})
			}
		}
	}
	s.tally.add(again)
	// A seed writes a whole tree into an empty store: the allowance is the
	// largest commit of the steady state.
	for cur := s.maxCommit.Load(); !seed && cur < rec.written && !s.maxCommit.CompareAndSwap(cur, rec.written); {
		cur = s.maxCommit.Load()
	}

	// The pod ends: its writes go to the outbox and are committed.
	mounted = false
	entries, err := s.unmount(ctx, ln, n, target, staging)
	ln.prev, ln.prevOps = id, ops
	p := pendingCommit{build: id, n: n, entries: entries}
	t1 := time.Now()
	for !p.gone() && time.Since(t1) < s.c.resolveWait && ctx.Err() == nil {
		time.Sleep(20 * time.Millisecond)
	}
	rec.commitIn = time.Since(t1)
	if rec.resolved = p.gone(); !rec.resolved {
		ln.pending = append(ln.pending, p)
	}
	if err != nil {
		return fail("%v", err)
	}
	return rec
}

// unmount unpublishes the pod (noting the outbox entry it adds) and
// unstages the volume, as the kubelet does after a volume's last pod on a
// node: lanes keep one pod per volume.
func (s *soak) unmount(ctx context.Context, ln *lane, n *node, target, staging string) ([]string, error) {
	n.outboxMu.Lock()
	before := outboxEntries(n.m.Store)
	err := n.call(ctx, callTimeout, func(ctx context.Context, d *csiharness.Driver) error {
		return d.Unpublish(ctx, ln.vol, target)
	})
	after := outboxEntries(n.m.Store)
	n.outboxMu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("unpublish: %w", err)
	}
	var added []string
	for _, e := range after {
		if !slices.Contains(before, e) {
			added = append(added, e)
		}
	}
	if len(added) == 0 {
		added = []string{} // committed before the listing: known and gone
	}
	if err := s.unstage(ln, n, staging); err != nil {
		return added, err
	}
	return added, nil
}

// unstage unstages the volume on n, bounded.
func (s *soak) unstage(ln *lane, n *node, staging string) error {
	err := n.call(context.Background(), callTimeout, func(ctx context.Context, d *csiharness.Driver) error {
		return d.Unstage(ctx, ln.vol, staging)
	})
	if err != nil {
		return fmt.Errorf("unstage: %w", err)
	}
	return nil
}

// scanTree reads every regular file below root and returns its content
// digests by slash path, the build the stamp names (0 without one), and
// the bytes read.
func scanTree(root string) (map[string]digest, int, int64, error) {
	seen := map[string]digest{}
	stamp := 0
	var read int64
	err := filepath.WalkDir(root, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !e.Type().IsRegular() {
			return nil
		}
		rel, _ := filepath.Rel(root, p)
		rel = filepath.ToSlash(rel)
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		read += int64(len(b))
		seen[rel] = sha256.Sum256(b)
		if rel == stampPath {
			if stamp = parseStamp(b); stamp < 0 {
				stamp = 0
			}
		}
		return nil
	})
	return seen, stamp, read, err
}

// sumFile returns the digest of the file at p.
func sumFile(p string) (digest, error) {
	b, err := os.ReadFile(p)
	if err != nil {
		return digest{}, err
	}
	return sha256.Sum256(b), nil
}
