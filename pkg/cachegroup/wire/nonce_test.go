package wire

import (
	"errors"
	"testing"
)

func TestNonceSetForgetsOnlyStaleNoncesAndRefusesWhenFull(t *testing.T) {
	s := newNonceSet(2)
	n := func(b byte) [16]byte { return [16]byte{b} }
	const now = 1000000
	if s.add(n(1), now+120, now) != nil || s.add(n(2), now+5, now) != nil {
		t.Fatal("two nonces refused")
	}
	if err := s.add(n(1), now+120, now); !errors.Is(err, errReplay) {
		t.Fatalf("a nonce seen: %v", err)
	}
	if err := s.add(n(3), now+120, now); !errors.Is(err, errNoncesFull) {
		t.Fatalf("a third nonce in a set of two: %v", err)
	}
	// Nonce 2 may be forgotten once its request is stale, and not before.
	if err := s.add(n(3), now+120, now+5); !errors.Is(err, errNoncesFull) {
		t.Fatalf("at the last second nonce 2's request is accepted: %v", err)
	}
	if err := s.add(n(2), now+120, now+nonceBucket+6); err != nil {
		t.Fatalf("nonce 2, forgotten: %v", err)
	}
	if err := s.add(n(1), now+120, now+nonceBucket+6); !errors.Is(err, errReplay) {
		t.Fatalf("nonce 1, whose request is still fresh: %v", err)
	}
}
