package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
)

// entry is what the test expects of one path in a volume.
type entry struct {
	Kind byte        // 'f' file, 'd' directory, 'l' symlink
	Mode fs.FileMode // permission bits
	Size int64
	Sum  string // a file's SHA-256, hex
	Link string // a symlink's target
}

func (e entry) String() string {
	switch e.Kind {
	case 'f':
		return fmt.Sprintf("file %v %d bytes sha256 %.12s", e.Mode, e.Size, e.Sum)
	case 'l':
		return "symlink -> " + e.Link
	}
	return fmt.Sprintf("dir %v", e.Mode)
}

// manifest is a file tree: relative path -> entry.
type manifest map[string]entry

// add copies o's entries into m.
func (m manifest) add(o manifest) {
	for p, e := range o {
		m[p] = e
	}
}

// sums returns the distinct contents (SHA-256) of m's files.
func (m manifest) sums() []string {
	seen := map[string]bool{}
	var out []string
	for _, e := range m {
		if e.Kind == 'f' && !seen[e.Sum] {
			seen[e.Sum] = true
			out = append(out, e.Sum)
		}
	}
	sort.Strings(out)
	return out
}

// files returns m's file paths, sorted.
func (m manifest) files() []string {
	var out []string
	for p, e := range m {
		if e.Kind == 'f' {
			out = append(out, p)
		}
	}
	sort.Strings(out)
	return out
}

// bytes returns the total size of m's files.
func (m manifest) bytes() int64 {
	var n int64
	for _, e := range m {
		if e.Kind == 'f' {
			n += e.Size
		}
	}
	return n
}

// setSpec says what writeSet writes.
type setSpec struct {
	Files            int // small files, spread over directories of 25
	MinSize, MaxSize int // their sizes
	Big              int // files of 1-3 MiB
}

// writeSet writes a set of files below root/prefix, their content random
// (from seed, so sets never share content): spec's files, an empty file, an
// executable, a symlink and an empty directory. It returns what it wrote.
func writeSet(root, prefix string, seed uint64, spec setSpec) (manifest, error) {
	src := rand.NewChaCha8(seedBytes(seed))
	r := rand.New(src)
	m := manifest{}
	mkdir := func(rel string) error {
		if err := os.MkdirAll(filepath.Join(root, rel), 0o755); err != nil {
			return err
		}
		// Every level below prefix, and prefix itself, with its mode.
		for p := rel; p != "." && p != ""; p = filepath.Dir(p) {
			if err := os.Chmod(filepath.Join(root, p), 0o755); err != nil {
				return err
			}
			m[p] = entry{Kind: 'd', Mode: 0o755}
		}
		return nil
	}
	write := func(rel string, size int, mode fs.FileMode) error {
		b := make([]byte, size)
		src.Read(b)
		p := filepath.Join(root, rel)
		if err := os.WriteFile(p, b, mode); err != nil {
			return err
		}
		if err := os.Chmod(p, mode); err != nil {
			return err
		}
		s := sha256.Sum256(b)
		m[rel] = entry{Kind: 'f', Mode: mode, Size: int64(size), Sum: hex.EncodeToString(s[:])}
		return nil
	}
	if err := mkdir(prefix); err != nil {
		return nil, err
	}
	for i := range spec.Files {
		dir := filepath.Join(prefix, fmt.Sprintf("d%02d", i/25))
		if i%25 == 0 {
			if err := mkdir(dir); err != nil {
				return nil, err
			}
		}
		size := spec.MinSize + r.IntN(spec.MaxSize-spec.MinSize+1)
		if err := write(filepath.Join(dir, fmt.Sprintf("f%03d.bin", i)), size, 0o644); err != nil {
			return nil, err
		}
	}
	if spec.Big > 0 {
		if err := mkdir(filepath.Join(prefix, "big")); err != nil {
			return nil, err
		}
	}
	for i := range spec.Big {
		size := 1<<20 + r.IntN(2<<20)
		if err := write(filepath.Join(prefix, "big", fmt.Sprintf("big%02d.bin", i)), size, 0o644); err != nil {
			return nil, err
		}
	}
	if err := write(filepath.Join(prefix, "empty"), 0, 0o644); err != nil {
		return nil, err
	}
	if err := write(filepath.Join(prefix, "tool.sh"), 100+r.IntN(400), 0o755); err != nil {
		return nil, err
	}
	if err := mkdir(filepath.Join(prefix, "emptydir")); err != nil {
		return nil, err
	}
	link := filepath.Join(prefix, "link")
	if err := os.Symlink("tool.sh", filepath.Join(root, link)); err != nil {
		return nil, err
	}
	m[link] = entry{Kind: 'l', Link: "tool.sh"}
	return m, nil
}

func seedBytes(seed uint64) [32]byte {
	var b [32]byte
	for i := range 8 {
		b[i] = byte(seed >> (8 * i))
	}
	copy(b[8:], "cachegroup e2e file sets")
	return b
}

// scan reads the tree below root: every entry, and every file's SHA-256.
func scan(root string) (manifest, error) {
	m := manifest{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == root {
			return nil
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		switch {
		case fi.Mode().IsDir():
			m[rel] = entry{Kind: 'd', Mode: fi.Mode().Perm()}
		case fi.Mode()&fs.ModeSymlink != 0:
			t, err := os.Readlink(p)
			if err != nil {
				return err
			}
			m[rel] = entry{Kind: 'l', Link: t}
		case fi.Mode().IsRegular():
			sum, n, err := hashFile(p)
			if err != nil {
				return err
			}
			m[rel] = entry{Kind: 'f', Mode: fi.Mode().Perm(), Size: n, Sum: sum}
		default:
			m[rel] = entry{Kind: '?', Mode: fi.Mode()}
		}
		return nil
	})
	return m, err
}

// hashFile returns the SHA-256 (hex) and size of the file at p.
func hashFile(p string) (string, int64, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return "", 0, err
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

// compare returns the differences between want and got (at most limit of
// them described) and their number.
func compare(want, got manifest, limit int) ([]string, int) {
	var paths []string
	for p := range want {
		paths = append(paths, p)
	}
	for p := range got {
		if _, ok := want[p]; !ok {
			paths = append(paths, p)
		}
	}
	sort.Strings(paths)
	var diffs []string
	n := 0
	for _, p := range paths {
		w, inWant := want[p]
		g, inGot := got[p]
		var d string
		switch {
		case !inGot:
			d = fmt.Sprintf("%s: missing (want %v)", p, w)
		case !inWant:
			d = fmt.Sprintf("%s: unexpected %v", p, g)
		case w != g:
			d = fmt.Sprintf("%s: got %v, want %v", p, g, w)
		default:
			continue
		}
		n++
		if len(diffs) < limit {
			diffs = append(diffs, d)
		}
	}
	return diffs, n
}
