package tree

import "errors"

// ErrTooLarge is returned for a commit whose own files exceed the volume quota.
var ErrTooLarge = errors.New("commit is larger than the volume quota")

// ErrInvalid is returned for a commit that breaks the rules of a tree (a bad
// path, an unknown op, an entry no tree may hold): the same commit is refused
// however often it is sent.
var ErrInvalid = errors.New("invalid commit")
