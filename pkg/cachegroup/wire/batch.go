package wire

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/cas"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/internal/files"
	"golang.org/x/sys/unix"
)

// Batches: POST /v1/blobs asks for many blobs in one request and streams them
// back in one response. The request names each blob by its digest and the
// size the asker expects (refLen bytes each); the response frames each as its
// digest, its length (-1: not served here) and its bytes.

// maxBatch bounds the blobs one batch request asks for.
const maxBatch = 4096

// refLen is the length of a blob named in a batch request: its digest and
// its size as the asker knows it (0 if it does not).
const refLen = len(cas.Digest{}) + 8

// serveBatch streams many blobs in one response. The request names each blob
// by digest and expected size; the response frames each as its digest, its
// length (-1: not served here) and its bytes. One round trip for many blobs
// and a known size (no stat) make small-file hydration fast. Small blobs are
// read a few at a time ahead of the one being sent, so that a cold page cache
// costs one disk wait for several of them, not one each.
func (s *Server) serveBatch(w http.ResponseWriter, r *http.Request) {
	body, done, ok := s.readBody(w, r, int64(maxBatch*refLen))
	if !ok {
		return
	}
	defer done()
	if len(body)%refLen != 0 {
		s.answer(w, r, nil, badRequest(fmt.Errorf("a batch names 1 to %d blobs of %d bytes each", maxBatch, refLen)))
		return
	}
	through := r.URL.Query().Has("through")
	items := make([]*outgoing, len(body)/refLen)
	for i := range items {
		ref := body[i*refLen : (i+1)*refLen]
		items[i] = &outgoing{d: cas.Digest(ref[:len(cas.Digest{})]), size: int64(binary.BigEndian.Uint64(ref[len(cas.Digest{}):])), ready: make(chan struct{})}
	}
	quit := make(chan struct{})
	defer close(quit)
	ahead := make(chan struct{}, readAhead)
	go func() {
		for _, it := range items {
			select {
			case ahead <- struct{}{}:
			case <-quit:
				return
			}
			go s.prepare(r.Context(), it, through)
		}
	}()

	w.Header().Set("Content-Type", "application/octet-stream")
	pw := newPacedWriter(w)
	bw := bufio.NewWriterSize(pw, 256<<10)
	buf := make([]byte, 64<<10)
	served := map[string]int64{}
	var err error
	for _, it := range items {
		<-it.ready
		<-ahead
		var n int64
		switch {
		case it.err != nil:
			err = writeHeader(bw, it.d, -1)
		case it.data != nil:
			if err = writeHeader(bw, it.d, int64(len(it.data))); err == nil {
				_, err = bw.Write(it.data)
				n = int64(len(it.data))
			}
		default:
			n, err = s.writeFrame(bw, it.d, buf)
		}
		if err != nil {
			return // the client sees a short frame and fails this batch
		}
		served[it.as] += n
	}
	bw.Flush()
	for as, n := range served {
		s.metrics.ServedBytes.WithLabelValues(as).Add(float64(n))
	}
}

// readAhead bounds the blobs a batch prepares ahead of the one it sends;
// aheadMax is the largest blob read ahead into memory (larger ones are
// streamed when their turn comes).
const (
	readAhead = 16
	aheadMax  = 256 << 10
)

// outgoing is one blob of a batch response being prepared.
type outgoing struct {
	d     cas.Digest
	size  int64         // as the asker expects it; 0 if unknown
	ready chan struct{} // closed when what follows is set
	as    string        // served as owner or peer
	err   error         // not served
	data  []byte        // the blob, read ahead; nil to stream it
}

// prepare decides whether it may be served and, if it is small, reads it
// (a file of another size than expected is sent as it is, for the asker to
// reject).
func (s *Server) prepare(ctx context.Context, it *outgoing, through bool) {
	defer close(it.ready)
	if it.as, it.err = s.b.MayServe(ctx, it.d, through); it.err != nil || it.size <= 0 || it.size > aheadMax {
		return
	}
	it.data, it.err = files.ReadFile(s.b.Store().Path(it.d), it.size)
}

// writeFrame streams blob d as one frame of a batch response, or a "not
// here" frame if this member lacks it.
func (s *Server) writeFrame(w *bufio.Writer, d cas.Digest, buf []byte) (int64, error) {
	fd, err := unix.Open(s.b.Store().Path(d), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, writeHeader(w, d, -1)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return 0, writeHeader(w, d, -1)
	}
	if err := writeHeader(w, d, st.Size); err != nil {
		return 0, err
	}
	n, err := io.CopyBuffer(w, io.LimitReader(files.Reader(fd), st.Size), buf)
	if err == nil && n != st.Size {
		err = io.ErrUnexpectedEOF
	}
	return n, err
}

func writeHeader(w io.Writer, d cas.Digest, size int64) error {
	var hdr [refLen]byte
	copy(hdr[:], d[:])
	binary.BigEndian.PutUint64(hdr[len(d):], uint64(size))
	_, err := w.Write(hdr[:])
	return err
}

// FetchBatch streams the blobs refs from the member and hands each to put
// with its length and a reader of exactly its bytes; put must read them all
// or fail. A blob the member does not serve is skipped; a put failing with
// ErrCorrupt skips that blob; any other error of put ends the batch and is
// returned as it is.
func (r *Client) FetchBatch(ctx context.Context, refs []cas.Ref, through bool, put func(ref cas.Ref, n int64, rd io.Reader) error) error {
	path := "/v1/blobs"
	if through {
		path += "?through=1"
	}
	req := make([]byte, 0, len(refs)*refLen)
	for _, ref := range refs {
		req = append(req, ref.Digest[:]...)
		req = binary.BigEndian.AppendUint64(req, uint64(ref.Size))
	}
	resp, err := r.do(ctx, "POST", path, req, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	br := bufio.NewReaderSize(resp.Body, 256<<10)
	var frame [refLen]byte
	for _, ref := range refs {
		if _, err := io.ReadFull(br, frame[:]); err != nil {
			return fmt.Errorf("member %s: batch: %w", r.name, err)
		}
		if cas.Digest(frame[:len(ref.Digest)]) != ref.Digest {
			return fmt.Errorf("member %s: batch out of order", r.name)
		}
		n := int64(binary.BigEndian.Uint64(frame[len(ref.Digest):]))
		if n < 0 {
			continue
		}
		lr := &io.LimitedReader{R: br, N: n}
		perr := put(ref, n, lr)
		if perr != nil && !errors.Is(perr, cas.ErrCorrupt) {
			return perr
		}
		if _, err := io.Copy(io.Discard, lr); err != nil {
			return fmt.Errorf("member %s: batch: %w", r.name, err)
		}
	}
	return nil
}
