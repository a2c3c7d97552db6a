package node

import (
	"cmp"
	"context"
	"errors"
	"io"
	"slices"
	"sync"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/cas"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/group"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/internal/flight"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/internal/parallel"
)

// Batches: a hydration fetches the blobs it lacks as streams of many blobs
// (POST /v1/blobs), each from the blob's first source, several streams at
// once so that members serve while this node writes. A blob a batch cannot
// deliver (a source down, a copy that fails verification) is fetched alone
// afterwards, along its whole fallback order.
const (
	// batchMax is the largest blob fetched in a batch; bigger ones are
	// fetched alone, at the same time as the batches.
	batchMax = 16 << 20
	// batchBlobs and batchBytes bound one batch, so that each source's
	// blobs are split into a few streams that run side by side.
	batchBlobs = 256
	batchBytes = 32 << 20
	// batchStreams bounds the batches in flight on one node.
	batchStreams = 4
	// smallBlob is the largest blob a batch reads into memory and verifies
	// before anything is written; bigger ones are verified as they are
	// written and removed if wrong.
	smallBlob = 1 << 20
)

// blobRef names a blob to fetch and, when it is a file's content, the
// snapshot's files that have it.
type blobRef struct {
	cas.Ref
	files []placed
}

// putFunc stores a fetched blob: n bytes read from r, in buf if they fit.
type putFunc func(ref blobRef, n int64, r io.Reader, buf []byte) error

// fetchAll makes sure every blob of refs is on this node, handing each one
// it fetches in a batch to put. A tree object already here is skipped; the
// refs with files are blobs link found missing, and a blob fetched alone has
// its files linked by fetchAlone. The large blobs of files are fetched in
// the background (see later): the hydration goes on meanwhile.
func (h *hydration) fetchAll(ctx context.Context, refs []blobRef, put putFunc) error {
	var (
		big, alone []blobRef
		bySource   = map[group.Peer][]blobRef{}
		seen       = map[cas.Digest]bool{}
	)
	for _, ref := range refs {
		if seen[ref.Digest] {
			continue
		}
		seen[ref.Digest] = true
		if ref.files == nil && h.n.store.Has(ref.Digest) {
			continue
		}
		if ref.Size > batchMax {
			if ref.files != nil {
				h.later(ctx, ref)
			} else {
				big = append(big, ref) // a tree object: its directory is read next
			}
			continue
		}
		src := h.sources(ref.Digest)
		if len(src) == 0 {
			alone = append(alone, ref)
			continue
		}
		bySource[src[0]] = append(bySource[src[0]], ref)
	}

	// The large blobs stream alone while the batches run.
	var (
		wg     sync.WaitGroup
		bigErr error
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		bigErr = parallel.Do(big, batchStreams, parallel.NoState, func(ref blobRef, _ struct{}) error {
			return h.fetchAlone(ctx, ref)
		})
	}()

	var (
		mu      sync.Mutex
		undone  []blobRef
		failure error // a local failure: the hydration cannot go on
	)
	parallel.Do(splitBatches(bySource), batchStreams, func() []byte { return make([]byte, smallBlob) }, func(b batch, buf []byte) error {
		left, local := h.runBatch(ctx, b, put, buf)
		mu.Lock()
		defer mu.Unlock()
		failure = cmp.Or(failure, local)
		undone = append(undone, left...)
		return nil
	})
	if failure == nil {
		failure = parallel.Do(append(alone, undone...), hydrateWorkers, parallel.NoState, func(ref blobRef, _ struct{}) error {
			return h.fetchAlone(ctx, ref)
		})
	}
	wg.Wait()
	return errors.Join(failure, bigErr)
}

// runBatch fetches batch b, handing each blob to put with buf, and returns
// the refs it did not deliver (to be fetched alone) and, if this node could
// not store a blob, why.
func (h *hydration) runBatch(ctx context.Context, b batch, put putFunc, buf []byte) (undone []blobRef, local error) {
	// Claimed when the batch starts, not before: a peer pulling a blob
	// through this node waits only for fetches under way, never for a
	// batch queued behind others that may be waiting on that peer.
	claims := map[cas.Digest]*flight.Call{}
	var refs []blobRef
	for _, ref := range b.refs {
		f, mine := h.n.fetches.Claim(ref.Digest)
		if mine && !h.private && h.n.store.Has(ref.Digest) {
			// Pulled through for a peer meanwhile.
			h.n.fetches.Done(ref.Digest, f, nil)
			mine = false
		}
		if !mine {
			undone = append(undone, ref) // another fetch has it or brought it
			continue
		}
		claims[ref.Digest] = f
		refs = append(refs, ref)
	}
	got := map[cas.Digest]bool{}
	var err error
	if len(refs) > 0 {
		byDigest := make(map[cas.Digest]blobRef, len(refs))
		asked := make([]cas.Ref, len(refs))
		for i, ref := range refs {
			byDigest[ref.Digest], asked[i] = ref, ref.Ref
		}
		err = b.from.FetchBatch(ctx, asked, len(h.holders.get()) > 0, func(ref cas.Ref, n int64, r io.Reader) error {
			err := put(byDigest[ref.Digest], n, r, buf)
			switch {
			case err == nil:
				got[ref.Digest] = true
				h.fetched(ref.Digest, n, b.from)
			case !errors.Is(err, cas.ErrCorrupt): // a wrong copy is fetched again alone
				local = err
			}
			return err
		})
	}
	for d, f := range claims {
		h.n.fetches.Done(d, f, nil)
	}
	if local == nil && err != nil {
		h.n.group.Failed(b.from, err)
	}
	for _, ref := range refs {
		if !got[ref.Digest] {
			undone = append(undone, ref)
		}
	}
	return undone, local
}

// fetchAlone fetches blob ref by itself along its fallback order and links
// its files, if it has any.
func (h *hydration) fetchAlone(ctx context.Context, ref blobRef) error {
	if err := h.fetch(ctx, ref.Digest, ref.Size); err != nil {
		return err
	}
	return h.linkAll(ref.files)
}

// later fetches large blob ref alone in the background, at most
// batchStreams at once, and links its files; a failure stops the
// hydration, which waits for these before it ends.
func (h *hydration) later(ctx context.Context, ref blobRef) {
	h.big.Add(1)
	go func() {
		defer h.big.Done()
		select {
		case h.bigSlots <- struct{}{}:
		case <-ctx.Done():
			return
		}
		defer func() { <-h.bigSlots }()
		if err := h.fetchAlone(ctx, ref); err != nil {
			h.cancel(err)
		}
	}()
}

// batch is one stream of blobs from one member.
type batch struct {
	from group.Peer
	refs []blobRef
}

// splitBatches cuts each member's blobs into batches of at most batchBlobs
// blobs and batchBytes bytes, taking turns between members so that every
// member serves from the start.
func splitBatches(bySource map[group.Peer][]blobRef) []batch {
	var per [][]batch
	for r, refs := range bySource {
		var bs []batch
		cur := batch{from: r}
		var bytes int64
		for _, ref := range refs {
			if len(cur.refs) == batchBlobs || (len(cur.refs) > 0 && bytes+ref.Size > batchBytes) {
				bs = append(bs, cur)
				cur, bytes = batch{from: r}, 0
			}
			cur.refs = append(cur.refs, ref)
			bytes += ref.Size
		}
		if len(cur.refs) > 0 {
			bs = append(bs, cur)
		}
		per = append(per, bs)
	}
	slices.SortFunc(per, func(a, b []batch) int { return len(b) - len(a) })
	var out []batch
	for i := 0; len(per) > 0 && i < len(per[0]); i++ {
		for _, bs := range per {
			if i < len(bs) {
				out = append(out, bs[i])
			}
		}
	}
	return out
}
