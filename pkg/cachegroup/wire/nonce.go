package wire

import (
	"encoding/binary"
	"errors"
	"sync"
)

// maxNonces bounds the nonces a member remembers: at most this many signed
// requests within maxSkew are accepted, about 8,000 a second on average.
const maxNonces = 1 << 20

// nonceBucket is the width, in seconds, of the groups of nonces that are
// forgotten together.
const nonceBucket = 10

var (
	errReplay     = errors.New("the request's nonce was seen before: a replay")
	errNoncesFull = errors.New("too many signed requests within the clock skew window")
)

// nonceSet remembers the nonces of accepted requests until the requests are
// too old to be accepted again, in bounded memory: when it is full it
// refuses new requests rather than forget nonces early, which would let a
// captured request be replayed.
type nonceSet struct {
	mu   sync.Mutex
	max  int
	seen map[uint64]struct{}
	// byBucket holds the nonces that may be forgotten from the start of
	// each bucket (unix seconds / nonceBucket).
	byBucket map[int64][]uint64
}

func newNonceSet(max int) *nonceSet {
	return &nonceSet{max: max, seen: map[uint64]struct{}{}, byBucket: map[int64][]uint64{}}
}

// add records nonce n of a request that may be accepted until unix second
// until; it fails if n was seen or the set is full. now is the unix time.
func (s *nonceSet) add(n [16]byte, until, now int64) error {
	// Eight bytes of a random nonce key the set: a collision among a million
	// is a one-in-ten-million refusal, at half the memory of the full nonce.
	k := binary.LittleEndian.Uint64(n[:8])
	s.mu.Lock()
	defer s.mu.Unlock()
	for b, ks := range s.byBucket {
		if b*nonceBucket <= now {
			for _, k := range ks {
				delete(s.seen, k)
			}
			delete(s.byBucket, b)
		}
	}
	if _, ok := s.seen[k]; ok {
		return errReplay
	}
	if len(s.seen) >= s.max {
		return errNoncesFull
	}
	s.seen[k] = struct{}{}
	// The first bucket that starts after until: forgotten only once stale.
	b := until/nonceBucket + 1
	s.byBucket[b] = append(s.byBucket[b], k)
	return nil
}
