package node

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/cas"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/internal/files"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/internal/parallel"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/tree"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/volume"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// manifest is a scanned outbox entry: the commit it makes, written to disk
// before any file is moved out of the upper directory, so a crash after the
// move still knows every blob's digest. A commit of more than PartOps ops
// keeps them in parts in the store, which the manifest names.
type manifest struct {
	Commit  tree.Commit `json:"commit"`
	Ops     int         `json:"opCount"`
	Dropped int         `json:"dropped"`

	keys []uint64 // shorts of the blobs it names, files and parts: see Keeps
}

// moveIn puts the new files of ops into the store: each moved from upper
// (a rename: no copy), or, with copied, copied from the layer's disk, or
// copied by scanning and gone since.
func (n *Node) moveIn(ctx context.Context, upper string, ops []tree.Op, copied bool, buf []byte) error {
	for _, op := range ops {
		if op.Kind != tree.OpUpsert || op.Entry.Type != tree.TypeFile {
			continue
		}
		d := op.Entry.Digest
		if n.store.Has(d) {
			continue
		}
		src := filepath.Join(upper, filepath.FromSlash(op.Path))
		if copied {
			e := op.Entry
			if err := copyFile(n.store, src, &e, buf); err != nil {
				return fmt.Errorf("commit %s: %w", op.Path, err)
			}
			if e.Digest != d {
				return fmt.Errorf("%w: %s changed after it was scanned", errBadLayer, op.Path)
			}
			continue
		}
		_, err := n.store.Adopt(src, d, op.Entry.Size)
		if errors.Is(err, fs.ErrNotExist) && n.group.Fetch(ctx, d) == nil {
			// Moved into the store by an earlier attempt and dropped since
			// (by a process without the pin): the group had it, and has
			// given it back.
			err = nil
		}
		if err != nil {
			return fmt.Errorf("commit %s: %w", op.Path, err)
		}
	}
	return nil
}

// commitEntry turns one outbox entry into a commit and removes it once the
// group has applied the commit.
func (n *Node) commitEntry(ctx context.Context, entry string) error {
	start := time.Now()
	l, ok, err := readLayer(entry)
	if err != nil || !ok {
		return fmt.Errorf("%w: %s: %v", errBadLayer, entry, err)
	}
	if err := volume.CheckVolumeID(l.VolumeID); err != nil {
		return fmt.Errorf("%w: %s: %v", errBadLayer, entry, err)
	}
	// A layer with its own disk is read from there and copied into the
	// store (a rename cannot cross filesystems); its image stays whole
	// until the entry is done.
	copied := hasDisk(entry)
	if copied {
		if err := mountDisk(entry, true); err != nil {
			return err
		}
	}
	upper, _ := upperOf(entry)
	// The commit's blobs stay on this node until the commit is applied:
	// neither a collection nor re-replication may take them halfway, from
	// the first part a scan stores (a scan of a million files takes longer
	// than the garbage grace).
	kept := n.newPin()
	defer kept.drop()
	m, err := n.manifestOf(ctx, entry, l, kept)
	if err != nil {
		return err
	}
	keys := m.keys
	if keys == nil { // the manifest an earlier attempt wrote
		if keys, err = n.readKeys(entry); err != nil {
			return err
		}
	}
	kept.set(keys)
	load := func(d cas.Digest) error {
		if n.store.Has(d) {
			return nil
		}
		return n.group.Fetch(ctx, d) // pushed by an attempt, and collected here since
	}
	// A run of ops at a time (a part of a large commit): each new file
	// moved into the store (a rename: no copy), or copied from the layer's
	// disk, and pushed to its owners.
	var buf []byte
	err = m.Commit.Runs(n.store, load, func(ops []tree.Op) error {
		var blobs []cas.Digest
		for _, op := range ops {
			if op.Kind == tree.OpUpsert && op.Entry.Type == tree.TypeFile {
				blobs = append(blobs, op.Entry.Digest)
			}
		}
		if copied && buf == nil {
			buf = make([]byte, copyBuf)
		}
		if err := n.moveIn(ctx, upper, ops, copied, buf); err != nil {
			return err
		}
		if err := n.store.Sync(); err != nil {
			return err
		}
		for _, d := range blobs {
			if !l.Sharing && !n.group.IsOwner(d) {
				n.markPrivate(d)
			}
		}
		return n.group.PushAll(ctx, blobs)
	})
	if err != nil {
		return err
	}
	if len(m.Commit.Parts) > 0 {
		parts := make([]cas.Digest, len(m.Commit.Parts))
		for i, p := range m.Commit.Parts {
			parts[i] = p.Digest
		}
		if err := n.group.PushAll(ctx, parts); err != nil {
			return err
		}
	}
	res, err := n.group.Commit(ctx, l.VolumeID, &m.Commit)
	if errors.Is(err, cas.ErrNotFound) && !n.allBlobsHere(&m.Commit) {
		return err
	} else if errors.Is(err, cas.ErrNotFound) {
		return fmt.Errorf("%w: %v", errVolumeGone, err)
	}
	if err != nil {
		return err
	}
	n.group.Metrics().CommitSeconds.Observe(time.Since(start).Seconds())
	n.group.Metrics().Evicted.Add(float64(res.Evicted))
	n.Stats.Commits.Add(1)
	klog.V(2).InfoS("Committed", "volume", l.VolumeID, "ops", m.Ops, "parts", len(m.Commit.Parts), "generation", res.Volume.Generation,
		"evicted", res.Evicted, "duration", time.Since(start))
	n.discard(entry)
	return nil
}

// manifestOf returns the manifest of outbox entry (of layer l): the one an
// earlier attempt wrote, or a new scan of its upper directory, written down
// before any file moves. What a scan stores is kept in kept as it goes.
func (n *Node) manifestOf(ctx context.Context, entry string, l Layer, kept pin) (manifest, error) {
	mpath := filepath.Join(entry, "manifest.json")
	var m manifest
	if b, err := os.ReadFile(mpath); err == nil {
		if err := json.Unmarshal(b, &m); err != nil {
			return m, fmt.Errorf("%w: %s: %v", errBadLayer, mpath, err)
		}
		return m, nil
	}
	v, err := n.group.Volume(ctx, l.VolumeID)
	if errors.Is(err, cas.ErrNotFound) {
		return m, fmt.Errorf("%w: %s", errVolumeGone, l.VolumeID)
	}
	if err != nil {
		return m, err
	}
	owner := l.FileOwner
	if owner == nil {
		owner = v.FileOwner
	}
	upper, _ := upperOf(entry)
	base := &baseTree{store: n.store, root: l.Base, fetch: func(d cas.Digest) error { return n.group.Fetch(ctx, d) }}
	if m, err = scanUpper(upper, owner, base, n.store, hasDisk(entry), kept.add); err != nil {
		return m, err
	}
	m.Commit.Base = l.Base
	// The keys go first: an entry with a manifest has them (see Keeps).
	if err := writeKeys(entry, m.keys); err != nil {
		return m, err
	}
	b, _ := json.Marshal(&m)
	if err := files.WriteAtomic(mpath, b); err != nil {
		return m, err
	}
	if m.Dropped > 0 {
		n.Stats.Dropped.Add(int64(m.Dropped))
		n.group.Metrics().DroppedFiles.Add(float64(m.Dropped))
		klog.InfoS("Dropped device files, FIFOs and sockets from a commit", "volume", l.VolumeID, "count", m.Dropped)
	}
	return m, nil
}

func (n *Node) allBlobsHere(c *tree.Commit) bool {
	missing := errors.New("missing")
	err := c.Runs(n.store, func(cas.Digest) error { return nil }, func(ops []tree.Op) error {
		for _, op := range ops {
			if op.Kind == tree.OpUpsert && op.Entry.Type == tree.TypeFile && !n.store.Has(op.Entry.Digest) {
				return missing
			}
		}
		return nil
	})
	return err == nil
}

// scanUpper reads an overlay upper directory as a list of changes: whiteouts
// become deletes, opaque directories replaces, directories a rename moved
// (overlay redirects, resolved in base, the tree the pod started from)
// grafts, everything else upserts. Symlinks are recorded and never followed;
// device files, FIFOs and sockets are dropped; setuid and setgid bits are
// stripped (on the file itself too, since it becomes the blob). Files are
// hashed here, once; with copied, they are copied into store as they are
// hashed and left unchanged. Past PartOps ops, the ops go to store as
// parts, a run at a time, so memory follows a part, not the layer. Unless
// it is nil, keep is given the keys of what each run names as soon as the
// run is stored, to keep it from collection until the manifest does.
func scanUpper(upper string, owner *volume.FileOwner, base *baseTree, store *cas.Store, copied bool, keep func(keys []uint64)) (manifest, error) {
	var m manifest
	var (
		run   []tree.Op // the ops of the part being scanned
		size  int       // about the bytes of run's encoding
		files []int     // indexes in run of the file ops, still to hash
	)
	into := store
	if !copied {
		into = nil
	}
	// end hashes the files of run and, with part (the run is full, or the
	// last of several), stores it as a part.
	end := func(part bool) error {
		from := len(m.keys)
		if err := hashFiles(upper, run, files, into); err != nil {
			return err
		}
		if err := (&tree.Commit{Ops: run}).Validate(); err != nil {
			return fmt.Errorf("%w: %v", errBadLayer, err)
		}
		for _, i := range files {
			m.keys = append(m.keys, short(run[i].Entry.Digest))
		}
		m.Ops += len(run)
		if !part {
			m.Commit.Ops = run
			if keep != nil {
				keep(m.keys[from:]) // blobs copied into the store
			}
			return nil
		}
		b := tree.EncodePart(run)
		d, err := store.PutBytes(b)
		if err != nil {
			return err
		}
		m.Commit.Parts = append(m.Commit.Parts, cas.Ref{Digest: d, Size: int64(len(b))})
		m.keys = append(m.keys, short(d))
		if keep != nil {
			keep(m.keys[from:])
		}
		run, files, size = run[:0], files[:0], 0
		return nil
	}
	add := func(op tree.Op, file bool) error {
		if tree.Full(len(run), size) {
			if err := end(true); err != nil {
				return err
			}
		}
		size += tree.OpBytes(op)
		if file {
			files = append(files, len(run))
		}
		run = append(run, op)
		return nil
	}
	// The lower directories of the directories being walked, root first:
	// the walk goes depth first, so a path's parent is always on it.
	type walked struct {
		rel   string
		lower lowerDir
	}
	stack := []walked{{lower: lowerDir{ok: true}}}
	buf := make([]byte, maxRedirect+1)
	err := filepath.WalkDir(upper, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == upper {
			return nil
		}
		rel := filepath.ToSlash(strings.TrimPrefix(p, upper+string(filepath.Separator)))
		dir, name := path.Split(rel)
		for stack[len(stack)-1].rel != strings.TrimSuffix(dir, "/") {
			stack = stack[:len(stack)-1]
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		e := tree.Entry{Mode: st.Mode & cas.ModeMask, UID: st.Uid, GID: st.Gid, Mtime: st.Mtim.Nano()}
		if owner != nil {
			e.UID, e.GID = owner.UID, owner.GID
		}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFCHR:
			if st.Rdev == 0 { // an overlay whiteout
				return add(tree.Op{Kind: tree.OpDelete, Path: rel}, false)
			}
			m.Dropped++
		case unix.S_IFDIR:
			at, err := placeDir(p, name, stack[len(stack)-1].lower, base, buf)
			if err != nil {
				return err
			}
			stack = append(stack, walked{rel: rel, lower: at.lower})
			e.Type, e.Digest = tree.TypeDir, at.digest
			return add(tree.Op{Kind: at.kind, Path: rel, Entry: e, From: at.from}, false)
		case unix.S_IFLNK:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			e.Type, e.Target, e.Size = tree.TypeSymlink, target, int64(len(target))
			return add(tree.Op{Kind: tree.OpUpsert, Path: rel, Entry: e}, false)
		case unix.S_IFREG:
			e.Type, e.Size = tree.TypeFile, st.Size
			return add(tree.Op{Kind: tree.OpUpsert, Path: rel, Entry: e}, true)
		default:
			m.Dropped++
		}
		return nil
	})
	if err != nil {
		return m, fmt.Errorf("scan %s: %w", upper, err)
	}
	if err := end(len(m.Commit.Parts) > 0); err != nil {
		return m, err
	}
	return m, nil
}

// hashWorkers bounds the files hashed at once; copyWorkers the files copied
// at once, more, since a copy waits on creating files in the store.
const hashWorkers, copyWorkers = 4, 8

// copyBuf is the buffer of one hashing worker; a file that fits is read
// whole before anything is written, so a copy of one the store holds costs
// no write.
const copyBuf = 256 << 10

// hashFiles hashes the files ops[i] for i in idx, in parallel, and gives each
// file the metadata its entry records, so it can become the blob as it is;
// or, with into, copies each into that store as a blob with that metadata.
func hashFiles(upper string, ops []tree.Op, idx []int, into *cas.Store) error {
	workers := hashWorkers
	if into != nil {
		workers = copyWorkers
	}
	return parallel.Do(idx, workers, func() []byte { return make([]byte, copyBuf) }, func(i int, buf []byte) error {
		path := filepath.Join(upper, filepath.FromSlash(ops[i].Path))
		if into != nil {
			return copyFile(into, path, &ops[i].Entry, buf)
		}
		return hashFile(path, &ops[i].Entry, buf)
	})
}

// openUpperFile opens the regular file at path of an upper layer, without
// following a symlink and without blocking on a FIFO put in its place.
func openUpperFile(path string) (*os.File, unix.Stat_t, error) {
	var st unix.Stat_t
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		return nil, st, fmt.Errorf("open %s: %w", path, err)
	}
	f := os.NewFile(uintptr(fd), path)
	if err := unix.Fstat(fd, &st); err != nil {
		f.Close()
		return nil, st, err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		f.Close()
		return nil, st, fmt.Errorf("%w: %s changed type while scanned", errBadLayer, path)
	}
	return f, st, nil
}

// hashFile hashes the regular file at path without following a symlink,
// sets its owner and mode to e's and removes its extended attributes.
func hashFile(path string, e *tree.Entry, buf []byte) error {
	f, st, err := openUpperFile(path)
	if err != nil {
		return err
	}
	defer f.Close()
	fd := int(f.Fd())
	h := sha256.New()
	n, err := io.CopyBuffer(h, files.Reader(fd), buf) // not f: its WriteTo would ignore buf
	if err != nil {
		return fmt.Errorf("hash %s: %w", path, err)
	}
	h.Sum(e.Digest[:0])
	e.Size = n
	if st.Uid != e.UID || st.Gid != e.GID {
		if err := unix.Fchown(fd, int(e.UID), int(e.GID)); err != nil {
			return fmt.Errorf("chown %s: %w", path, err)
		}
	}
	if st.Mode&07777 != e.Mode {
		if err := unix.Fchmod(fd, e.Mode); err != nil {
			return fmt.Errorf("chmod %s: %w", path, err)
		}
	}
	if err := stripXattrs(fd); err != nil {
		return fmt.Errorf("remove extended attributes of %s: %w", path, err)
	}
	return nil
}

// copyFile copies the regular file at path, without following a symlink,
// into store s as a blob with e's owner, mode and modification time, hashing
// it as it copies (one read), and records its digest and size in e. The file
// itself is left as it is; a blob the store holds already is not written.
func copyFile(s *cas.Store, path string, e *tree.Entry, buf []byte) error {
	f, _, err := openUpperFile(path)
	if err != nil {
		return err
	}
	defer f.Close()
	head, err := io.ReadFull(f, buf)
	if err != nil && err != io.ErrUnexpectedEOF && err != io.EOF {
		return fmt.Errorf("read %s: %w", path, err)
	}
	whole := head < len(buf)
	if whole {
		e.Digest, e.Size = cas.Sum(buf[:head]), int64(head)
		if s.Has(e.Digest) {
			return nil
		}
	}
	meta := cas.Meta{Mode: e.Mode, UID: e.UID, GID: e.GID, Mtime: e.Mtime}
	tmp, err := s.OpenUnnamed(meta)
	if err != nil {
		return err
	}
	defer tmp.Close() // unnamed, unless linked into the store
	if whole {
		_, err = tmp.Write(buf[:head])
	} else {
		h := sha256.New()
		h.Write(buf)
		if _, err = tmp.Write(buf); err == nil {
			var n int64
			n, err = io.CopyBuffer(io.MultiWriter(tmp, h), files.Reader(f.Fd()), buf)
			h.Sum(e.Digest[:0])
			e.Size = int64(head) + n
		}
	}
	if err != nil {
		return fmt.Errorf("copy %s into the store: %w", path, err)
	}
	_, err = s.LinkUnnamed(tmp, e.Digest, e.Size, meta)
	return err
}

// stripXattrs removes every extended attribute of the open file fd. The file
// becomes a blob that every pod of the group reads: a pod's attributes
// (security.capability, user.*, overlay's trusted.overlay.*) must not ride
// along, and a tree does not record them.
func stripXattrs(fd int) error {
	for {
		size, err := unix.Flistxattr(fd, nil)
		if err != nil || size == 0 {
			return err
		}
		buf := make([]byte, size)
		size, err = unix.Flistxattr(fd, buf)
		if errors.Is(err, unix.ERANGE) {
			continue // an attribute was added in between: list again
		}
		if err != nil {
			return err
		}
		for name := range strings.SplitSeq(string(buf[:size]), "\x00") {
			if name == "" {
				continue
			}
			if err := unix.Fremovexattr(fd, name); err != nil && !errors.Is(err, unix.ENODATA) {
				return fmt.Errorf("%s: %w", name, err)
			}
		}
		return nil
	}
}

// opaque reports whether an upper directory hides everything below it in
// the lower layer.
func opaque(path string) bool {
	buf := make([]byte, 4)
	n, err := unix.Lgetxattr(path, "trusted.overlay.opaque", buf)
	return err == nil && n == 1 && buf[0] == 'y'
}
