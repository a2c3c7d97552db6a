package node

import (
	"errors"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/tree"
)

// permanent reports whether a commit error will not go away by retrying: a
// commit over the quota, to a volume that is gone, or that a home found
// invalid.
func permanent(err error) bool {
	return errors.Is(err, tree.ErrTooLarge) || errors.Is(err, errVolumeGone) || errors.Is(err, errBadLayer) ||
		errors.Is(err, tree.ErrInvalid)
}

var (
	errVolumeGone = errors.New("volume no longer exists")
	errBadLayer   = errors.New("outbox entry is unreadable or malformed")
)
