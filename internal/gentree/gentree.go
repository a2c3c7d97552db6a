// Package gentree generates deterministic, Maven-like file trees for demos and
// benchmarks.
//
// A tree is laid out like a Maven local repository (~/.m2/repository):
// groupId path / artifactId / version / files, with .pom, .sha1,
// _remote.repositories and maven-metadata files of a few hundred bytes to a few
// kilobytes, .jar files up to a few megabytes and, optionally, one very large
// file. The same Spec (including its Seed) always produces the same tree: the
// same paths, sizes, modes and bytes.
package gentree

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// Spec describes the tree to generate. The counts are targets: Generate hits
// Files and Dirs exactly when they are consistent with the layout (a version
// directory holds at least three files, an artifact directory at least one),
// and TotalBytes within a fraction of a percent.
type Spec struct {
	// Seed selects the tree; the same Spec always yields the same tree.
	Seed uint64 `json:"seed"`
	// Files is the number of regular files, the large file included.
	Files int `json:"files"`
	// Dirs is the number of directories below the root.
	Dirs int `json:"dirs"`
	// TotalBytes is the size of all files except the large file.
	TotalBytes int64 `json:"totalBytes"`
	// MaxJarBytes caps the size of a single .jar file.
	MaxJarBytes int64 `json:"maxJarBytes"`
	// BigFileBytes is the size of one extra large file (a distribution
	// archive in one version directory); 0 means none.
	BigFileBytes int64 `json:"bigFileBytes"`
}

// DefaultSpec returns the benchmark tree: about 20,000 files in about 3,500
// directories, about 500 MB of .pom/.sha1/metadata files and .jar files up to
// 8 MiB, plus one 1 GiB file.
func DefaultSpec() Spec {
	return Spec{
		Seed:         20240601,
		Files:        20000,
		Dirs:         3500,
		TotalBytes:   500 << 20,
		MaxJarBytes:  8 << 20,
		BigFileBytes: 1 << 30,
	}
}

// SmallSpec returns a tree of the same shape small enough for a quick smoke
// run: 600 files in 120 directories, 8 MiB, plus one 16 MiB file.
func SmallSpec() Spec {
	return Spec{
		Seed:         20240601,
		Files:        600,
		Dirs:         120,
		TotalBytes:   8 << 20,
		MaxJarBytes:  1 << 20,
		BigFileBytes: 16 << 20,
	}
}

// String describes the spec in one line.
func (s Spec) String() string {
	return fmt.Sprintf("seed=%d files=%d dirs=%d bytes=%d maxJar=%d bigFile=%d",
		s.Seed, s.Files, s.Dirs, s.TotalBytes, s.MaxJarBytes, s.BigFileBytes)
}

// Stats summarises a generated tree.
type Stats struct {
	// Files is the number of regular files written.
	Files int `json:"files"`
	// Dirs is the number of directories created below the root.
	Dirs int `json:"dirs"`
	// Bytes is the total size of all files, the large file included.
	Bytes int64 `json:"bytes"`
	// SmallFiles is the number of files of at most 8 KiB.
	SmallFiles int `json:"smallFiles"`
	// Jars is the number of .jar files.
	Jars int `json:"jars"`
	// LargestJar is the size of the largest .jar file.
	LargestJar int64 `json:"largestJar"`
	// BigFile is the path (relative to the root) of the large file, if any.
	BigFile string `json:"bigFile,omitempty"`
}

// Entry is one file or directory of a Manifest.
type Entry struct {
	// Dir is true for a directory.
	Dir bool
	// Mode holds the permission bits.
	Mode os.FileMode
	// Size is the file size (0 for directories).
	Size int64
	// SHA256 is the digest of a file's content (zero for directories).
	SHA256 [32]byte
	// ModTime is the modification time. It is not part of Digest (it
	// differs between two generations of the same tree) but Compare checks
	// it when both sides have one.
	ModTime time.Time
}

// Manifest maps slash-separated paths relative to a tree's root to their
// entries. The root itself is not included.
type Manifest map[string]Entry

// Digest returns a hex SHA-256 over every entry of m in path order: type,
// path, permission bits, size and content digest.
func (m Manifest) Digest() string {
	paths := make([]string, 0, len(m))
	for p := range m {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	h := sha256.New()
	for _, p := range paths {
		e := m[p]
		kind := "f"
		if e.Dir {
			kind = "d"
		}
		fmt.Fprintf(h, "%s %q %o %d %x\n", kind, p, e.Mode.Perm(), e.Size, e.SHA256)
	}
	return fmt.Sprintf("%x", h.Sum(nil))
}

// Totals returns the number of files, directories and file bytes in m.
func (m Manifest) Totals() (files, dirs int, bytes int64) {
	for _, e := range m {
		if e.Dir {
			dirs++
		} else {
			files++
			bytes += e.Size
		}
	}
	return files, dirs, bytes
}

// Compare checks got against want and returns one line per difference
// (missing, unexpected, or differing entries), at most limit lines (all when
// limit <= 0), and the total number of differences.
func Compare(want, got Manifest, limit int) (diffs []string, n int) {
	add := func(s string) {
		n++
		if limit <= 0 || len(diffs) < limit {
			diffs = append(diffs, s)
		}
	}
	paths := make([]string, 0, len(want))
	for p := range want {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	for _, p := range paths {
		w := want[p]
		g, ok := got[p]
		switch {
		case !ok:
			add("missing: " + p)
		case w.Dir != g.Dir:
			add(fmt.Sprintf("type differs: %s (dir=%v, want dir=%v)", p, g.Dir, w.Dir))
		case w.Mode.Perm() != g.Mode.Perm():
			add(fmt.Sprintf("mode differs: %s (%o, want %o)", p, g.Mode.Perm(), w.Mode.Perm()))
		case w.Size != g.Size:
			add(fmt.Sprintf("size differs: %s (%d, want %d)", p, g.Size, w.Size))
		case w.SHA256 != g.SHA256:
			add(fmt.Sprintf("content differs: %s", p))
		case !w.ModTime.IsZero() && !g.ModTime.IsZero() && !w.ModTime.Equal(g.ModTime):
			add(fmt.Sprintf("mtime differs: %s (%s, want %s)", p,
				g.ModTime.Format(time.RFC3339Nano), w.ModTime.Format(time.RFC3339Nano)))
		}
	}
	extra := make([]string, 0)
	for p := range got {
		if _, ok := want[p]; !ok {
			extra = append(extra, p)
		}
	}
	sort.Strings(extra)
	for _, p := range extra {
		add("unexpected: " + p)
	}
	return diffs, n
}

// Scan walks the tree at dir and returns its manifest, reading and hashing
// every regular file. Symlinks and other special files are an error: a
// generated tree contains none.
func Scan(dir string) (Manifest, error) {
	m := Manifest{}
	buf := make([]byte, 1<<20)
	h := sha256.New()
	err := filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if path == dir {
			return nil
		}
		rel, err := filepath.Rel(dir, path)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case info.IsDir():
			m[rel] = Entry{Dir: true, Mode: info.Mode().Perm(), ModTime: info.ModTime()}
		case info.Mode().IsRegular():
			f, err := os.Open(path)
			if err != nil {
				return err
			}
			h.Reset()
			n, err := io.CopyBuffer(h, struct{ io.Reader }{f}, buf)
			f.Close()
			if err != nil {
				return err
			}
			e := Entry{Mode: info.Mode().Perm(), Size: n, ModTime: info.ModTime()}
			copy(e.SHA256[:], h.Sum(nil))
			m[rel] = e
		default:
			return fmt.Errorf("gentree: unexpected file type %v at %s", info.Mode().Type(), path)
		}
		return nil
	})
	return m, err
}

// Generate writes the tree described by spec into dir, which must be empty or
// not exist yet, and returns its statistics.
func Generate(dir string, spec Spec) (Stats, error) {
	st, _, err := generate(dir, spec, false)
	return st, err
}

// GenerateManifest is Generate that also returns the manifest of what it
// wrote (file contents are hashed while they are written, modification times
// read once all is written), so that a copy of the tree can be verified later
// without reading it back from dir.
func GenerateManifest(dir string, spec Spec) (Stats, Manifest, error) {
	return generate(dir, spec, true)
}

// PlanStats returns the statistics Generate would report for spec without
// writing anything.
func PlanStats(spec Spec) (Stats, error) {
	p, err := newPlan(spec)
	if err != nil {
		return Stats{}, err
	}
	return p.stats(), nil
}

const (
	modeFile = 0o644
	modeDir  = 0o755
)

func generate(dir string, spec Spec, withManifest bool) (Stats, Manifest, error) {
	p, err := newPlan(spec)
	if err != nil {
		return Stats{}, nil, err
	}
	if err := os.MkdirAll(dir, modeDir); err != nil {
		return Stats{}, nil, err
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return Stats{}, nil, err
	}
	if len(ents) > 0 {
		return Stats{}, nil, fmt.Errorf("gentree: %s is not empty", dir)
	}
	var man Manifest
	if withManifest {
		man = make(Manifest, len(p.files)+len(p.dirs))
	}
	for _, d := range p.dirs {
		if err := os.Mkdir(filepath.Join(dir, filepath.FromSlash(d)), modeDir); err != nil {
			return Stats{}, nil, err
		}
		// Make the mode independent of the umask.
		if err := os.Chmod(filepath.Join(dir, filepath.FromSlash(d)), modeDir); err != nil {
			return Stats{}, nil, err
		}
		if man != nil {
			man[d] = Entry{Dir: true, Mode: modeDir}
		}
	}

	// Write the files one after the other in path order, as a sequential
	// download would: the tree's disk layout then resembles a real cache's
	// and a copy of it made the same way.
	buf := make([]byte, 1<<20)
	var h hash.Hash
	if man != nil {
		h = sha256.New()
	}
	for i := range p.files {
		f := &p.files[i]
		sum, err := writeFile(filepath.Join(dir, filepath.FromSlash(f.path)), f, fileSeed(spec.Seed, i), buf, h)
		if err != nil {
			return Stats{}, nil, err
		}
		if man != nil {
			man[f.path] = Entry{Mode: modeFile, Size: f.size, SHA256: sum}
		}
	}
	if man != nil {
		// Modification times, directories' last (their files changed them).
		for p, e := range man {
			st, err := os.Lstat(filepath.Join(dir, filepath.FromSlash(p)))
			if err != nil {
				return Stats{}, nil, err
			}
			e.ModTime = st.ModTime()
			man[p] = e
		}
	}
	return p.stats(), man, nil
}

// writeFile creates path and fills it with f.size pseudo-random bytes of f's
// kind, hashing them into h when h is not nil.
func writeFile(path string, f *planFile, seed uint64, buf []byte, h hash.Hash) ([32]byte, error) {
	var sum [32]byte
	out, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, modeFile)
	if err != nil {
		return sum, err
	}
	if err := out.Chmod(modeFile); err != nil {
		out.Close()
		return sum, err
	}
	if h != nil {
		h.Reset()
	}
	r := rng{s: seed}
	left := f.size
	for left > 0 {
		n := int64(len(buf))
		if n > left {
			n = left
		}
		b := buf[:n]
		r.fill(b)
		switch f.kind {
		case kindHex:
			toAlphabet(b, hexAlphabet, 0)
		case kindText:
			toAlphabet(b, textAlphabet, 72)
		}
		if _, err := out.Write(b); err != nil {
			out.Close()
			return sum, err
		}
		if h != nil {
			h.Write(b)
		}
		left -= n
	}
	if err := out.Close(); err != nil {
		return sum, err
	}
	if h != nil {
		copy(sum[:], h.Sum(nil))
	}
	return sum, nil
}

const (
	hexAlphabet  = "0123456789abcdef"
	textAlphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789<>/= "
)

// toAlphabet maps random bytes onto alphabet (whose length must be a power of
// two), with a newline every lineLen bytes when lineLen > 0.
func toAlphabet(b []byte, alphabet string, lineLen int) {
	mask := byte(len(alphabet) - 1)
	for i := range b {
		if lineLen > 0 && i%lineLen == lineLen-1 {
			b[i] = '\n'
			continue
		}
		b[i] = alphabet[b[i]&mask]
	}
}

// fileSeed derives the content seed of file i from the tree's seed.
func fileSeed(seed uint64, i int) uint64 {
	return splitmix(seed ^ splitmix(uint64(i)+0x9e3779b97f4a7c15))
}

func splitmix(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}

// rng is a small, fast, deterministic generator (splitmix64 stream).
type rng struct{ s uint64 }

func (r *rng) next() uint64 {
	r.s += 0x9e3779b97f4a7c15
	x := r.s
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}

// intn returns a value in [0, n).
func (r *rng) intn(n int) int {
	if n <= 1 {
		return 0
	}
	return int(r.next() % uint64(n))
}

// float returns a value in [0, 1).
func (r *rng) float() float64 {
	return float64(r.next()>>11) / (1 << 53)
}

// normal returns a standard normal value (Box-Muller).
func (r *rng) normal() float64 {
	u1 := r.float()
	if u1 < 1e-12 {
		u1 = 1e-12
	}
	return math.Sqrt(-2*math.Log(u1)) * math.Cos(2*math.Pi*r.float())
}

// fill fills b with pseudo-random bytes, eight at a time.
func (r *rng) fill(b []byte) {
	i := 0
	for ; i+8 <= len(b); i += 8 {
		v := r.next()
		b[i] = byte(v)
		b[i+1] = byte(v >> 8)
		b[i+2] = byte(v >> 16)
		b[i+3] = byte(v >> 24)
		b[i+4] = byte(v >> 32)
		b[i+5] = byte(v >> 40)
		b[i+6] = byte(v >> 48)
		b[i+7] = byte(v >> 56)
	}
	if i < len(b) {
		v := r.next()
		for ; i < len(b); i++ {
			b[i] = byte(v)
			v >>= 8
		}
	}
}

// errSpec reports an unusable spec.
var errSpec = errors.New("gentree: invalid spec")

// ValidateSpec reports whether spec can be generated.
func ValidateSpec(spec Spec) error {
	switch {
	case spec.Dirs < 3:
		return fmt.Errorf("%w: need at least 3 directories, got %d", errSpec, spec.Dirs)
	case spec.Files < 1:
		return fmt.Errorf("%w: need at least 1 file, got %d", errSpec, spec.Files)
	case spec.TotalBytes < 0 || spec.BigFileBytes < 0 || spec.MaxJarBytes < 0:
		return fmt.Errorf("%w: negative size", errSpec)
	}
	return nil
}

// joinPath joins slash-separated components.
func joinPath(parts ...string) string {
	return strings.Join(parts, "/")
}
