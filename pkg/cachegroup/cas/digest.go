package cas

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
)

// Digest is the SHA-256 of a blob's content; it names the blob everywhere.
type Digest [sha256.Size]byte

// String returns the digest in lower-case hex.
func (d Digest) String() string { return hex.EncodeToString(d[:]) }

// IsZero reports whether d is the zero digest (no content).
func (d Digest) IsZero() bool { return d == Digest{} }

// Short returns d's first 8 bytes as a number: a compact key for marks kept
// of many blobs, only where two blobs sharing a mark is harmless.
func (d Digest) Short() uint64 { return binary.BigEndian.Uint64(d[:8]) }

// MarshalText encodes d as hex.
func (d Digest) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// UnmarshalText decodes a hex digest.
func (d *Digest) UnmarshalText(b []byte) error {
	p, err := ParseDigest(string(b))
	if err != nil {
		return err
	}
	*d = p
	return nil
}

// ParseDigest parses a lower- or upper-case hex SHA-256 digest.
func ParseDigest(s string) (Digest, error) {
	var d Digest
	if len(s) != 2*len(d) {
		return d, fmt.Errorf("digest %q: want %d hex characters", s, 2*len(d))
	}
	if _, err := hex.Decode(d[:], []byte(s)); err != nil {
		return d, fmt.Errorf("digest %q: %w", s, err)
	}
	return d, nil
}

// Sum returns the digest of b.
func Sum(b []byte) Digest { return sha256.Sum256(b) }

// Ref names a blob to fetch: its digest and its size if known (0 if not).
type Ref struct {
	Digest Digest
	Size   int64
}
