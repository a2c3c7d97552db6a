package main

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/cas"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/tree"
)

// uploads bounds the blobs sent at once.
const uploads = 4

// blobSource is where the bytes of an imported file are read from.
type blobSource struct {
	d    cas.Digest
	size int64
	path string // a file of the directory imported, or a temporary copy
}

// importResult is what an import did.
type importResult struct {
	Volume     string  `json:"volume"`
	Generation uint64  `json:"generation"`
	Ops        int     `json:"ops"`
	Files      int     `json:"files"`
	Blobs      int     `json:"blobs"`
	Bytes      int64   `json:"bytes"`
	Evicted    int     `json:"evicted"`
	Seconds    float64 `json:"seconds"`
}

// runImport seeds a volume from a directory or a tarball as one commit, as
// a node's committer commits a pod's writes: each file hashed, its blob
// stored at its owners, and then the commit applied at the volume's home.
func runImport(ctx context.Context, t *tool, args []string) error {
	start := time.Now()
	id := volumeID(args[1])
	head, err := t.member.AdminVolume(ctx, id)
	if err != nil {
		if errors.Is(err, cas.ErrNotFound) {
			return fmt.Errorf("volume %s does not exist: create it first (a PVC of the cache's StorageClass)", args[1])
		}
		return err
	}
	tmp, err := os.MkdirTemp("", "cachegroupctl-import-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	var (
		ops   []tree.Op
		blobs []blobSource
	)
	if fi, err := os.Stat(args[0]); err == nil && fi.IsDir() {
		ops, blobs, err = scanDir(args[0])
		if err != nil {
			return err
		}
	} else {
		ops, blobs, err = scanTar(args[0], tmp)
		if err != nil {
			return err
		}
	}
	c := &tree.Commit{Base: head.Root, Ops: ops}
	if err := c.Validate(); err != nil {
		return err
	}
	res := importResult{Volume: id, Ops: len(ops), Blobs: len(blobs)}
	for _, op := range ops {
		if op.Entry.Type == tree.TypeFile {
			res.Files++
			res.Bytes += op.Entry.Size
		}
	}
	if err := upload(ctx, t, blobs); err != nil {
		return err
	}
	cr, err := t.member.AdminCommit(ctx, id, c)
	if err != nil {
		return fmt.Errorf("commit to volume %s: %w", id, err)
	}
	res.Generation, res.Evicted, res.Seconds = cr.Volume.Generation, cr.Evicted, time.Since(start).Seconds()
	if t.o.output == "json" {
		return t.json(res)
	}
	fmt.Fprintf(t.out, "imported %d files (%s, %d distinct blobs) into volume %s as generation %d in %.1fs",
		res.Files, size(res.Bytes), res.Blobs, id, res.Generation, res.Seconds)
	if res.Evicted > 0 {
		fmt.Fprintf(t.out, "; %d files evicted to stay within quota", res.Evicted)
	}
	fmt.Fprintln(t.out)
	return nil
}

// upload stores every blob at its owners through the member, a few at once.
func upload(ctx context.Context, t *tool, blobs []blobSource) error {
	work := make(chan blobSource)
	errs := make(chan error, uploads)
	var wg sync.WaitGroup
	for range uploads {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for b := range work {
				if err := uploadOne(ctx, t, b); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	var err error
feed:
	for _, b := range blobs {
		select {
		case work <- b:
		case err = <-errs:
			break feed
		}
	}
	close(work)
	wg.Wait()
	if err == nil {
		select {
		case err = <-errs:
		default:
		}
	}
	return err
}

func uploadOne(ctx context.Context, t *tool, b blobSource) error {
	f, err := os.Open(b.path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := t.member.AdminPutBlob(ctx, b.d, io.LimitReader(f, b.size)); err != nil {
		return fmt.Errorf("store %s: %w", b.path, err)
	}
	return nil
}

// entryOf is the tree entry of a file's metadata: permission bits and the
// sticky bit only (never setuid or setgid), owner, mtime.
func entryOf(typ tree.Type, mode fs.FileMode, uid, gid int, mtime time.Time) tree.Entry {
	m := uint32(mode.Perm())
	if mode&fs.ModeSticky != 0 {
		m |= 0o1000
	}
	return tree.Entry{Type: typ, Mode: m, UID: uint32(uid), GID: uint32(gid), Mtime: mtime.UnixNano()}
}

// scanDir lists directory root as upserts, hashing every file.
func scanDir(root string) ([]tree.Op, []blobSource, error) {
	var ops []tree.Op
	seen := map[cas.Digest]bool{}
	var blobs []blobSource
	err := filepath.WalkDir(root, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, p)
		if err != nil || rel == "." {
			return err
		}
		fi, err := e.Info()
		if err != nil {
			return err
		}
		uid, gid := 0, 0
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			uid, gid = int(st.Uid), int(st.Gid)
		}
		ent := entryOf(0, fi.Mode(), uid, gid, fi.ModTime())
		switch {
		case fi.IsDir():
			ent.Type = tree.TypeDir
		case fi.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			ent.Type, ent.Target, ent.Size = tree.TypeSymlink, target, int64(len(target))
		case fi.Mode().IsRegular():
			d, n, err := hashFile(p)
			if err != nil {
				return err
			}
			ent.Type, ent.Digest, ent.Size = tree.TypeFile, d, n
			if !seen[d] {
				seen[d] = true
				blobs = append(blobs, blobSource{d: d, size: n, path: p})
			}
		default:
			fmt.Fprintf(os.Stderr, "skipped %s: not a file, directory or symlink\n", p)
			return nil
		}
		ops = append(ops, tree.Op{Kind: tree.OpUpsert, Path: filepath.ToSlash(rel), Entry: ent})
		return nil
	})
	return ops, blobs, err
}

func hashFile(p string) (cas.Digest, int64, error) {
	f, err := os.Open(p)
	if err != nil {
		return cas.Digest{}, 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	return cas.Digest(h.Sum(nil)), n, err
}

// scanTar lists the tar stream in file src ("-": stdin; gzip-compressed or
// not) as upserts, copying every file's bytes into dir while hashing them.
func scanTar(src, dir string) ([]tree.Op, []blobSource, error) {
	var r io.Reader = os.Stdin
	if src != "-" {
		f, err := os.Open(src)
		if err != nil {
			return nil, nil, err
		}
		defer f.Close()
		r = f
	}
	br := newPeekReader(r)
	if magic, _ := br.peek(2); len(magic) == 2 && magic[0] == 0x1f && magic[1] == 0x8b {
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, nil, err
		}
		r = zr
	} else {
		r = br
	}
	tr := tar.NewReader(r)
	var ops []tree.Op
	var blobs []blobSource
	files := map[string]tree.Entry{} // for hard links
	seen := map[cas.Digest]bool{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return ops, blobs, nil
		}
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", src, err)
		}
		p, err := tarPath(h.Name)
		if err != nil {
			return nil, nil, err
		}
		if p == "" {
			continue // the root itself
		}
		ent := entryOf(0, h.FileInfo().Mode(), h.Uid, h.Gid, h.ModTime)
		switch h.Typeflag {
		case tar.TypeDir:
			ent.Type = tree.TypeDir
		case tar.TypeSymlink:
			ent.Type, ent.Target, ent.Size = tree.TypeSymlink, h.Linkname, int64(len(h.Linkname))
		case tar.TypeLink:
			lp, err := tarPath(h.Linkname)
			if err != nil {
				return nil, nil, err
			}
			e, ok := files[lp]
			if !ok {
				return nil, nil, fmt.Errorf("%s: hard link %s to %s, which is not a file before it", src, h.Name, h.Linkname)
			}
			ent = e
		case tar.TypeReg:
			tmp := filepath.Join(dir, fmt.Sprint(len(blobs)))
			d, n, err := copyHashed(tmp, tr)
			if err != nil {
				return nil, nil, err
			}
			ent.Type, ent.Digest, ent.Size = tree.TypeFile, d, n
			if seen[d] {
				os.Remove(tmp)
			} else {
				seen[d] = true
				blobs = append(blobs, blobSource{d: d, size: n, path: tmp})
			}
			files[p] = ent
		default:
			fmt.Fprintf(os.Stderr, "skipped %s: not a file, directory or symlink\n", h.Name)
			continue
		}
		ops = append(ops, tree.Op{Kind: tree.OpUpsert, Path: p, Entry: ent})
	}
}

// tarPath is a tar entry's name as a path in the volume: relative and
// clean; a name with a ".." component is refused, never re-rooted.
func tarPath(name string) (string, error) {
	for _, part := range strings.Split(name, "/") {
		if part == ".." {
			return "", fmt.Errorf("tar entry %q leaves the root", name)
		}
	}
	p := strings.TrimPrefix(path.Clean("/"+name), "/")
	return p, nil
}

func copyHashed(dst string, r io.Reader) (cas.Digest, int64, error) {
	f, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return cas.Digest{}, 0, err
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, h), r)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return cas.Digest(h.Sum(nil)), n, err
}

// peekReader lets the first bytes of a stream be looked at before it is read.
type peekReader struct {
	r   io.Reader
	buf []byte
}

func newPeekReader(r io.Reader) *peekReader { return &peekReader{r: r} }

func (p *peekReader) peek(n int) ([]byte, error) {
	for len(p.buf) < n {
		b := make([]byte, n-len(p.buf))
		k, err := p.r.Read(b)
		p.buf = append(p.buf, b[:k]...)
		if err != nil {
			return p.buf, err
		}
	}
	return p.buf[:n], nil
}

func (p *peekReader) Read(b []byte) (int, error) {
	if len(p.buf) > 0 {
		n := copy(b, p.buf)
		p.buf = p.buf[n:]
		return n, nil
	}
	return p.r.Read(b)
}

// exportResult is what an export did.
type exportResult struct {
	Volume     string     `json:"volume"`
	Snapshot   string     `json:"snapshot,omitempty"`
	Generation uint64     `json:"generation,omitempty"`
	Root       cas.Digest `json:"root"`
	Files      int        `json:"files"`
	Dirs       int        `json:"dirs"`
	Symlinks   int        `json:"symlinks"`
	Bytes      int64      `json:"bytes"`
	Seconds    float64    `json:"seconds"`
}

// runExport copies a volume's head, or a snapshot, to a directory or as a
// tar stream to stdout; every byte is verified against its digest.
func runExport(ctx context.Context, t *tool, args []string) error {
	start := time.Now()
	res := exportResult{Volume: volumeID(args[0])}
	if t.o.snapshot != "" {
		l, err := t.member.AdminVolumes(ctx)
		if err != nil {
			return err
		}
		for _, s := range l.Snapshots {
			if (s.ID == t.o.snapshot || s.Name == t.o.snapshot) && s.VolumeID == res.Volume {
				res.Snapshot, res.Root = s.ID, s.Root
			}
		}
		if res.Snapshot == "" {
			return fmt.Errorf("volume %s has no snapshot %q", args[0], t.o.snapshot)
		}
	} else {
		v, err := t.member.AdminVolume(ctx, res.Volume)
		if err != nil {
			return err
		}
		res.Generation, res.Root = v.Generation, v.Root
	}
	var sink exportSink
	if args[1] == "-" {
		if t.o.output == "json" {
			return usageError{errors.New("export to - writes the tar stream to stdout: no -o json")}
		}
		tw := tar.NewWriter(t.out)
		sink = &tarSink{tw: tw}
		defer tw.Close()
	} else {
		if err := os.MkdirAll(args[1], 0o755); err != nil {
			return err
		}
		sink = &dirSink{root: args[1]}
	}
	if err := walkExport(ctx, t, res.Root, "", sink, &res); err != nil {
		return err
	}
	if err := sink.finish(); err != nil {
		return err
	}
	res.Seconds = time.Since(start).Seconds()
	switch {
	case args[1] == "-":
		fmt.Fprintf(os.Stderr, "exported %d files (%s) of volume %s\n", res.Files, size(res.Bytes), res.Volume)
	case t.o.output == "json":
		return t.json(res)
	default:
		fmt.Fprintf(t.out, "exported %d files, %d directories, %d symlinks (%s) of volume %s to %s in %.1fs\n",
			res.Files, res.Dirs, res.Symlinks, size(res.Bytes), res.Volume, args[1], res.Seconds)
	}
	return nil
}

// maxTreeObject bounds a tree object read: a directory of a million entries.
const maxTreeObject = 512 << 20

// walkExport writes the tree at root, at path dir of the export, to sink.
func walkExport(ctx context.Context, t *tool, root cas.Digest, dir string, sink exportSink, res *exportResult) error {
	rc, err := t.member.AdminOpenBlob(ctx, root)
	if err != nil {
		return fmt.Errorf("tree %s: %w", root, err)
	}
	b, err := io.ReadAll(io.LimitReader(rc, maxTreeObject))
	rc.Close()
	if err != nil {
		return fmt.Errorf("tree %s: %w", root, err)
	}
	if cas.Sum(b) != root {
		return fmt.Errorf("tree %s: %w", root, cas.ErrCorrupt)
	}
	tr, err := tree.Decode(b)
	if err != nil {
		return fmt.Errorf("tree %s: %w", root, err)
	}
	for _, e := range tr.Entries {
		p := path.Join(dir, e.Name)
		switch e.Type {
		case tree.TypeDir:
			res.Dirs++
			if err := sink.dir(p, e); err != nil {
				return err
			}
			if err := walkExport(ctx, t, e.Digest, p, sink, res); err != nil {
				return err
			}
		case tree.TypeSymlink:
			res.Symlinks++
			if err := sink.symlink(p, e); err != nil {
				return err
			}
		case tree.TypeFile:
			res.Files++
			res.Bytes += e.Size
			if err := exportFile(ctx, t, p, e, sink); err != nil {
				return err
			}
		}
	}
	return sink.dirDone(dir)
}

func exportFile(ctx context.Context, t *tool, p string, e tree.Entry, sink exportSink) error {
	rc, err := t.member.AdminOpenBlob(ctx, e.Digest)
	if err != nil {
		return fmt.Errorf("%s: %w", p, err)
	}
	defer rc.Close()
	h := sha256.New()
	// The sink gets exactly e.Size bytes, checked against the digest
	// before the file counts as written.
	err = sink.file(p, e, io.TeeReader(io.LimitReader(rc, e.Size), h), func() error {
		if cas.Digest(h.Sum(nil)) != e.Digest {
			return fmt.Errorf("%s: blob %s: %w", p, e.Digest, cas.ErrCorrupt)
		}
		return nil
	})
	return err
}

// exportSink is where an export writes: a directory or a tar stream.
type exportSink interface {
	dir(p string, e tree.Entry) error
	dirDone(p string) error
	symlink(p string, e tree.Entry) error
	// file writes e.Size bytes of r at p; check says whether they were
	// the right ones, once read.
	file(p string, e tree.Entry, r io.Reader, check func() error) error
	finish() error
}

// tarSink writes a tar stream.
type tarSink struct{ tw *tar.Writer }

func header(p string, e tree.Entry, typ byte) *tar.Header {
	return &tar.Header{Name: p, Typeflag: typ, Mode: int64(e.Mode), Uid: int(e.UID), Gid: int(e.GID),
		ModTime: time.Unix(0, e.Mtime), Format: tar.FormatPAX}
}

func (s *tarSink) dir(p string, e tree.Entry) error {
	return s.tw.WriteHeader(header(p+"/", e, tar.TypeDir))
}
func (s *tarSink) dirDone(string) error { return nil }
func (s *tarSink) symlink(p string, e tree.Entry) error {
	h := header(p, e, tar.TypeSymlink)
	h.Linkname = e.Target
	return s.tw.WriteHeader(h)
}
func (s *tarSink) file(p string, e tree.Entry, r io.Reader, check func() error) error {
	h := header(p, e, tar.TypeReg)
	h.Size = e.Size
	if err := s.tw.WriteHeader(h); err != nil {
		return err
	}
	if n, err := io.Copy(s.tw, r); err != nil || n != e.Size {
		return fmt.Errorf("%s: %d of %d bytes: %v", p, n, e.Size, err)
	}
	return check() // a tar stream already written cannot take it back: the export fails
}
func (s *tarSink) finish() error { return s.tw.Flush() }

// dirSink writes below a directory, metadata as it was (owners if root).
type dirSink struct {
	root  string
	dirs  []pendingDir // directories whose times are set once their entries are written
	owner bool
}

type pendingDir struct {
	path string
	e    tree.Entry
}

func (s *dirSink) dir(p string, e tree.Entry) error {
	full := filepath.Join(s.root, filepath.FromSlash(p))
	if err := os.Mkdir(full, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	s.dirs = append(s.dirs, pendingDir{full, e})
	return nil
}

func (s *dirSink) dirDone(string) error { return nil }

func (s *dirSink) symlink(p string, e tree.Entry) error {
	full := filepath.Join(s.root, filepath.FromSlash(p))
	os.Remove(full)
	if err := os.Symlink(e.Target, full); err != nil {
		return err
	}
	s.chown(full, e, true)
	mt := time.Unix(0, e.Mtime)
	return lutimes(full, mt)
}

func (s *dirSink) file(p string, e tree.Entry, r io.Reader, check func() error) error {
	full := filepath.Join(s.root, filepath.FromSlash(p))
	tmp := full + ".cachegroupctl-tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	n, err := io.Copy(f, r)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil && n != e.Size {
		err = fmt.Errorf("%s: %d of %d bytes", p, n, e.Size)
	}
	if err == nil {
		err = check()
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	s.chown(tmp, e, false)
	if err := os.Chmod(tmp, fs.FileMode(e.Mode&0o777)|sticky(e.Mode)); err != nil {
		return err
	}
	mt := time.Unix(0, e.Mtime)
	if err := os.Chtimes(tmp, mt, mt); err != nil {
		return err
	}
	return os.Rename(tmp, full)
}

func (s *dirSink) chown(p string, e tree.Entry, link bool) {
	if os.Geteuid() != 0 {
		return // only root can give files away
	}
	if link {
		os.Lchown(p, int(e.UID), int(e.GID))
	} else {
		os.Chown(p, int(e.UID), int(e.GID))
	}
}

func (s *dirSink) finish() error {
	// Deepest first, so that setting a directory's times is not undone by
	// writing into it.
	for i := len(s.dirs) - 1; i >= 0; i-- {
		d := s.dirs[i]
		s.chown(d.path, d.e, false)
		if err := os.Chmod(d.path, fs.FileMode(d.e.Mode&0o777)|sticky(d.e.Mode)); err != nil {
			return err
		}
		mt := time.Unix(0, d.e.Mtime)
		if err := os.Chtimes(d.path, mt, mt); err != nil {
			return err
		}
	}
	return nil
}

func sticky(mode uint32) fs.FileMode {
	if mode&0o1000 != 0 {
		return fs.ModeSticky
	}
	return 0
}

// lutimes sets a symlink's own times, not those of what it links to.
func lutimes(p string, t time.Time) error {
	ts := unix.NsecToTimespec(t.UnixNano())
	return unix.UtimesNanoAt(unix.AT_FDCWD, p, []unix.Timespec{ts, ts}, unix.AT_SYMLINK_NOFOLLOW)
}
