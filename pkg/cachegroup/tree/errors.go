package tree

import "errors"

// ErrTooLarge is returned for a commit whose own files exceed the volume quota.
var ErrTooLarge = errors.New("commit is larger than the volume quota")
