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
	if c, err = inParts(ctx, t, c, tmp); err != nil {
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

// inParts returns c as a commit in parts, each stored at its owners, if it
// has more ops than a request carries inline (see tree.PartOps); tmp holds
// the parts on their way.
func inParts(ctx context.Context, t *tool, c *tree.Commit, tmp string) (*tree.Commit, error) {
	size := 0
	for _, op := range c.Ops {
		size += tree.OpBytes(op)
	}
	if len(c.Ops) <= tree.PartOps && size <= tree.MaxPartBytes/2 {
		return c, nil // inline
	}
	var parts []blobSource
	out := &tree.Commit{Base: c.Base}
	for start := 0; start < len(c.Ops); {
		end, size := start, 0
		for end < len(c.Ops) && !tree.Full(end-start, size) {
			size += tree.OpBytes(c.Ops[end])
			end++
		}
		b := tree.EncodePart(c.Ops[start:end])
		start = end
		d := cas.Sum(b)
		path := filepath.Join(tmp, "part-"+d.String())
		if err := os.WriteFile(path, b, 0o600); err != nil {
			return nil, err
		}
		parts = append(parts, blobSource{d: d, size: int64(len(b)), path: path})
		out.Parts = append(out.Parts, cas.Ref{Digest: d, Size: int64(len(b))})
	}
	return out, upload(ctx, t, parts)
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
