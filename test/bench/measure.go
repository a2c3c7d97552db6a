package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/cachegroup/cachegroup/internal/csiharness"
)

// treeCount is what one pass over a tree saw.
type treeCount struct {
	Dirs, Files int
	Bytes       int64
	Dur         time.Duration
	Cold        bool // caches were dropped right before
}

// metadataWalk visits every directory below root, reads it and lstat()s
// every entry, in sorted order, single-threaded: what `find -ls` or a build
// tool scanning ~/.m2 does. The same code runs on the raw tree and on mounts.
func metadataWalk(ctx context.Context, root string) (treeCount, error) {
	var c treeCount
	t0 := time.Now()
	var visit func(dir string) error
	visit = func(dir string) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		ents, err := os.ReadDir(dir)
		if err != nil {
			return err
		}
		for _, e := range ents {
			p := filepath.Join(dir, e.Name())
			st, err := os.Lstat(p)
			if err != nil {
				return err
			}
			switch {
			case st.IsDir():
				c.Dirs++
				if err := visit(p); err != nil {
					return err
				}
			case st.Mode().IsRegular():
				c.Files++
				c.Bytes += st.Size()
			}
		}
		return nil
	}
	err := visit(root)
	c.Dur = time.Since(t0)
	return c, err
}

// readEvery reads every regular file below root completely, sequentially,
// in the same sorted walk order, with one reusable buffer.
func readEvery(ctx context.Context, root string, buf []byte) (treeCount, error) {
	var c treeCount
	t0 := time.Now()
	var visit func(dir string) error
	visit = func(dir string) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		ents, err := os.ReadDir(dir)
		if err != nil {
			return err
		}
		for _, e := range ents {
			p := filepath.Join(dir, e.Name())
			switch {
			case e.IsDir():
				c.Dirs++
				if err := visit(p); err != nil {
					return err
				}
			case e.Type().IsRegular():
				f, err := os.Open(p)
				if err != nil {
					return err
				}
				for {
					n, err := f.Read(buf)
					c.Bytes += int64(n)
					if err == io.EOF {
						break
					}
					if err != nil {
						f.Close()
						return err
					}
				}
				f.Close()
				c.Files++
			}
		}
		return nil
	}
	err := visit(root)
	c.Dur = time.Since(t0)
	return c, err
}

// cold runs fn after dropping the caches (when drop is true); Cold in the
// result says whether they were dropped.
func cold(drop bool, fn func() (treeCount, error)) (treeCount, error) {
	dropped := drop && csiharness.DropCaches() == nil
	c, err := fn()
	c.Cold = dropped
	return c, err
}

// copyTree copies the tree at src into dst (an existing directory), keeping
// permission bits and modification times, with one reusable buffer.
func copyTree(ctx context.Context, src, dst string) (treeCount, error) {
	var c treeCount
	t0 := time.Now()
	buf := make([]byte, 1<<20)
	type dirTime struct {
		path string
		mt   time.Time
	}
	var dirTimes []dirTime
	err := filepath.WalkDir(src, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		if rel == "." {
			return nil
		}
		out := filepath.Join(dst, rel)
		st, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			if err := os.Mkdir(out, st.Mode().Perm()); err != nil {
				return err
			}
			c.Dirs++
			dirTimes = append(dirTimes, dirTime{out, st.ModTime()})
		case st.Mode().IsRegular():
			in, err := os.Open(p)
			if err != nil {
				return err
			}
			o, err := os.OpenFile(out, os.O_CREATE|os.O_EXCL|os.O_WRONLY, st.Mode().Perm())
			if err != nil {
				in.Close()
				return err
			}
			n, err := io.CopyBuffer(struct{ io.Writer }{o}, struct{ io.Reader }{in}, buf)
			in.Close()
			if cerr := o.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return err
			}
			if err := os.Chtimes(out, st.ModTime(), st.ModTime()); err != nil {
				return err
			}
			c.Files++
			c.Bytes += n
		default:
			return fmt.Errorf("unexpected file type at %s", p)
		}
		return nil
	})
	// Directory times last: creating entries changed them.
	for i := len(dirTimes) - 1; i >= 0 && err == nil; i-- {
		err = os.Chtimes(dirTimes[i].path, dirTimes[i].mt, dirTimes[i].mt)
	}
	c.Dur = time.Since(t0)
	return c, err
}

// writeNewFiles writes n new files of 1-5 KB into root below
// org/cachegroup-bench/<tag>/, 50 files a directory, as a build adding fresh
// artifacts to its cache would.
func writeNewFiles(root, tag string, n int, seed uint64) (treeCount, error) {
	var c treeCount
	t0 := time.Now()
	r := rand.New(rand.NewPCG(seed, 0x636f6d6d6974))
	buf := make([]byte, 5<<10)
	var dir string
	for i := 0; i < n; i++ {
		if i%50 == 0 {
			dir = filepath.Join(root, "org", "cachegroup-bench", tag, fmt.Sprintf("artifact-%04d", i/50), "1.0.0")
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return c, err
			}
			c.Dirs++
		}
		size := 1024 + r.IntN(4<<10+1)
		b := buf[:size]
		for j := 0; j+8 <= len(b); j += 8 {
			v := r.Uint64()
			for k := 0; k < 8; k++ {
				b[j+k] = byte(v >> (8 * k))
			}
		}
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("file-%05d.bin", i)), b, 0o644); err != nil {
			return c, err
		}
		c.Files++
		c.Bytes += int64(size)
	}
	c.Dur = time.Since(t0)
	return c, nil
}

// percentile returns the p-th percentile (0 < p <= 100, nearest rank) of ds.
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	rank := int(float64(len(s))*p/100+0.999999) - 1
	if rank < 0 {
		rank = 0
	}
	if rank >= len(s) {
		rank = len(s) - 1
	}
	return s[rank]
}

// medianCount returns the run with the median duration.
func medianCount(cs []treeCount) treeCount {
	if len(cs) == 0 {
		return treeCount{}
	}
	s := append([]treeCount(nil), cs...)
	sort.Slice(s, func(i, j int) bool { return s[i].Dur < s[j].Dur })
	return s[len(s)/2]
}

// sameTree reports an error when two passes did not see the same tree.
func sameTree(what string, want, got treeCount) error {
	if want.Files != got.Files || want.Dirs != got.Dirs || want.Bytes != got.Bytes {
		return fmt.Errorf("%s sees %d files, %d dirs, %d bytes; the raw tree has %d files, %d dirs, %d bytes",
			what, got.Files, got.Dirs, got.Bytes, want.Files, want.Dirs, want.Bytes)
	}
	return nil
}

var errInterrupted = errors.New("interrupted")
