package volume

import "errors"

// ErrExists is returned when a name is taken by something incompatible.
var ErrExists = errors.New("already exists with different settings")

// ErrUnavailable is returned when none of the members that could serve a
// request is live.
var ErrUnavailable = errors.New("no live member can serve this")

// ErrMissingBlob is returned for a commit naming a blob that is not at its
// owners: the committer pushes it again before it retries.
var ErrMissingBlob = errors.New("a blob the commit names is not at its owners")

// ErrInvalidID is returned for an id or a member name that breaks its syntax:
// nothing with such an id exists, and no path or URL is ever built from it.
var ErrInvalidID = errors.New("invalid id")
