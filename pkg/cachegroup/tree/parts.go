package tree

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/cas"
)

// Parts: a commit of more ops than one request should carry is sent as a
// list of parts, each a blob holding a run of its ops, stored at its owners
// like a file's content. A home reads the parts one at a time and swaps the
// head once all are applied, so memory follows a part, not the commit, no
// request body grows with it, and no pod sees half of it.
const (
	// PartOps is the most ops a part holds, and the most a node sends
	// inline; a part of them is a few MiB of JSON.
	PartOps = 8192
	// MaxPartBytes bounds one part's encoding, checked before it is read.
	MaxPartBytes = 16 << 20
	// MaxParts bounds the parts of one commit: over 100 million ops.
	MaxParts = 1 << 14
)

// Full reports whether a part of n ops whose OpBytes add up to size is
// full: another op may not join it. One op more than a part that is not
// full still encodes in well under MaxPartBytes, whatever its paths.
func Full(n, size int) bool { return n >= PartOps || size > MaxPartBytes/2 }

// OpBytes is at least the bytes of op's encoding: its numbers and names,
// and its strings escaped at worst (a control byte is six).
func OpBytes(op Op) int { return 512 + 6*(len(op.Path)+len(op.From)+len(op.Entry.Target)) }

// part is the encoding of a part: JSON, as commits on the wire are.
type part struct {
	Ops []Op `json:"ops"`
}

// EncodePart returns the encoding of a part holding ops.
func EncodePart(ops []Op) []byte {
	b, _ := json.Marshal(part{Ops: ops}) // ops of plain fields always encode
	return b
}

// DecodePart decodes and validates the part r reads; what it finds wrong
// is ErrInvalid.
func DecodePart(r io.Reader) ([]Op, error) {
	var p part
	dec := json.NewDecoder(r)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&p); err != nil {
		return nil, fmt.Errorf("%w: part: %v", ErrInvalid, err)
	}
	if len(p.Ops) > PartOps {
		return nil, fmt.Errorf("%w: part of %d ops, at most %d", ErrInvalid, len(p.Ops), PartOps)
	}
	if err := (&Commit{Ops: p.Ops}).Validate(); err != nil {
		return nil, err
	}
	return p.Ops, nil
}

// ReadPart reads part p from s, loading it there first with load.
func ReadPart(s *cas.Store, load func(cas.Digest) error, p cas.Ref) ([]Op, error) {
	d := p.Digest
	if err := load(d); err != nil {
		return nil, fmt.Errorf("part %s: %w", d, err)
	}
	if n := s.Size(d); n < 0 {
		return nil, fmt.Errorf("part %s: %w", d, cas.ErrNotFound)
	} else if n != p.Size || n > MaxPartBytes {
		return nil, fmt.Errorf("%w: part %s of %d bytes, the commit says %d", ErrInvalid, d, n, p.Size)
	}
	f, err := s.Open(d) // decoded as read: the decoder keeps its own copy
	if err != nil {
		return nil, fmt.Errorf("part %s: %w", d, err)
	}
	defer f.Close()
	h := sha256.New()
	r := io.TeeReader(io.LimitReader(f, MaxPartBytes), h)
	ops, err := DecodePart(r)
	if err == nil {
		_, err = io.Copy(io.Discard, r) // the rest, for the digest
	}
	if err == nil && cas.Digest(h.Sum(nil)) != d {
		err = cas.ErrCorrupt // checked before any op is used
	}
	if err != nil {
		return nil, fmt.Errorf("part %s: %w", d, err)
	}
	return ops, nil
}

// Runs calls fn with the ops of c in order, a run at a time: the inline
// ops, then each part's, read from s (made present by load). The slice fn
// gets is valid until it returns.
func (c *Commit) Runs(s *cas.Store, load func(cas.Digest) error, fn func(ops []Op) error) error {
	if len(c.Ops) > 0 {
		if err := fn(c.Ops); err != nil {
			return err
		}
	}
	for _, p := range c.Parts {
		ops, err := ReadPart(s, load, p)
		if err != nil {
			return err
		}
		if err := fn(ops); err != nil {
			return err
		}
	}
	return nil
}

// FilesOf returns the blobs of the files ops write with the sizes they give
// them, each pair once.
func FilesOf(ops []Op) []cas.Ref {
	seen := map[cas.Ref]bool{}
	var refs []cas.Ref
	for _, op := range ops {
		ref := cas.Ref{Digest: op.Entry.Digest, Size: op.Entry.Size}
		if op.Kind == OpUpsert && op.Entry.Type == TypeFile && !seen[ref] {
			seen[ref] = true
			refs = append(refs, ref)
		}
	}
	return refs
}
