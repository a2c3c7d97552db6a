package cachegroup

import (
	"github.com/cachegroup/cachegroup/pkg/cachegroup/cas"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/tree"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/volume"
)

// The errors a member's operations wrap, from the layer that makes each, for
// callers that map them (the CSI driver to gRPC codes).
var (
	ErrNotFound    = cas.ErrNotFound       // a blob, volume or snapshot does not exist
	ErrCorrupt     = cas.ErrCorrupt        // content does not match its digest
	ErrNoSpace     = cas.ErrNoSpace        // the cache size or the free-space floor would be passed
	ErrTooLarge    = tree.ErrTooLarge      // a commit larger than the volume's quota
	ErrExists      = volume.ErrExists      // a name taken by something incompatible
	ErrUnavailable = volume.ErrUnavailable // no live member can serve this
	ErrInvalidID   = volume.ErrInvalidID   // an id or member name that breaks its syntax
)
