package main

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/cas"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/tree"
)

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
