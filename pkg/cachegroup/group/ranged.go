package group

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/cas"
	"golang.org/x/sys/unix"
	"k8s.io/klog/v2"
)

// A large blob is fetched as ranges from several of its sources at once,
// written into one file as they arrive, and hashed in order behind them: one
// stream per blob leaves a large file's fetch to a single core and a single
// member, and it is the last thing a hydration waits for. rangedParts is how
// many ranges a large blob is cut into; they are dealt out to its sources in
// turn.
const rangedParts = 4

// rangeBuf is the buffer each range is copied and hashed through.
const rangeBuf = 256 << 10

// RangedMin is the smallest blob fetched in ranges; a variable so that tests
// can fetch small blobs in ranges.
var RangedMin int64 = 64 << 20

// FetchLarge stores blob d of size bytes from sources: in ranges from the
// first two of them if it is large, or (if that fails, say because a source
// is down or sent wrong bytes) as FetchFrom does, one source after another,
// which finds and repairs a bad copy. It returns the member that served it
// (for ranges, the first).
func (g *Group) FetchLarge(ctx context.Context, d cas.Digest, size int64, sources []Peer) (Peer, error) {
	var remotes []Peer
	for _, p := range sources {
		if p != Peer(g.self) && len(remotes) < 2 && g.Live(p.Name()) {
			remotes = append(remotes, p)
		}
	}
	if size >= RangedMin && len(remotes) == 2 {
		err := g.fetchRanges(ctx, d, size, remotes)
		if err == nil {
			return remotes[0], nil
		}
		if ctx.Err() != nil {
			return nil, err
		}
		klog.V(1).InfoS("Fetching in ranges failed; fetching the whole blob", "blob", d, "err", err)
	}
	return g.FetchFrom(ctx, d, sources)
}

// fetchRanges fetches blob d of size bytes in rangedParts ranges from
// remotes at once into a temporary file and places it in the store if it
// hashes to d.
func (g *Group) fetchRanges(ctx context.Context, d cas.Digest, size int64, remotes []Peer) error {
	st := g.self.store
	f, err := st.CreateTemp()
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer func() {
		f.Close()
		if tmp != "" {
			os.Remove(tmp)
		}
	}()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	part := (size + rangedParts - 1) / rangedParts
	w := &rangeWriter{written: make([]int64, rangedParts)}
	w.cond = sync.NewCond(&w.mu)
	var wg sync.WaitGroup
	for i := range rangedParts {
		off := int64(i) * part
		n := min(part, size-off)
		if n <= 0 {
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := w.fetch(ctx, f, remotes[i%len(remotes)], d, i, off, n)
			if err != nil {
				w.fail(err)
				cancel()
			}
		}()
	}
	sum, herr := w.hash(f, size, part)
	if herr != nil {
		w.fail(herr)
		cancel()
	}
	wg.Wait()
	if w.err != nil {
		return fmt.Errorf("fetch blob %s in ranges: %w", d, w.err)
	}
	if sum != d {
		return fmt.Errorf("fetch blob %s in ranges: %w", d, cas.ErrCorrupt)
	}
	if err := f.Close(); err != nil {
		return err
	}
	placed, err := st.Adopt(tmp, d, size)
	if placed {
		tmp = ""
	}
	return err
}

// rangeWriter tracks the ranges of one blob being written.
type rangeWriter struct {
	mu      sync.Mutex
	cond    *sync.Cond
	written []int64 // bytes of each range in the file
	err     error
}

func (w *rangeWriter) fail(err error) {
	w.mu.Lock()
	if w.err == nil {
		w.err = err
	}
	w.cond.Broadcast()
	w.mu.Unlock()
}

// fetch writes range i of blob d, n bytes at off, from r into f.
func (w *rangeWriter) fetch(ctx context.Context, f *os.File, r Peer, d cas.Digest, i int, off, n int64) error {
	body, err := r.FetchRange(ctx, d, off, n)
	if err != nil {
		return err
	}
	defer body.Close()
	buf := make([]byte, rangeBuf)
	for done := int64(0); done < n; {
		k, err := io.ReadAtLeast(body, buf[:min(int64(len(buf)), n-done)], 1)
		if k > 0 {
			if _, werr := f.WriteAt(buf[:k], off+done); werr != nil {
				return werr
			}
			done += int64(k)
			w.mu.Lock()
			w.written[i] = done
			w.cond.Broadcast()
			w.mu.Unlock()
		}
		if err != nil && done < n {
			return fmt.Errorf("member %s: range %d-%d: %w", r.Name(), off, off+n-1, err)
		}
	}
	return nil
}

// hash reads the file in order as the ranges fill it and returns its digest.
func (w *rangeWriter) hash(f *os.File, size, part int64) (cas.Digest, error) {
	h := sha256.New()
	buf := make([]byte, rangeBuf)
	for pos := int64(0); pos < size; {
		i := pos / part
		w.mu.Lock()
		for w.err == nil && i*part+w.written[i] <= pos {
			w.cond.Wait()
		}
		end, err := i*part+w.written[i], w.err
		w.mu.Unlock()
		if err != nil {
			return cas.Digest{}, err
		}
		k, rerr := unix.Pread(int(f.Fd()), buf[:min(int64(len(buf)), end-pos)], pos)
		if rerr != nil {
			return cas.Digest{}, rerr
		}
		if k == 0 {
			return cas.Digest{}, errors.New("range file shorter than written")
		}
		h.Write(buf[:k])
		pos += int64(k)
	}
	return cas.Digest(h.Sum(nil)), nil
}
