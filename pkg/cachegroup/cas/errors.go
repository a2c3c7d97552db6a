package cas

import "errors"

// ErrNotFound is returned when a blob, volume or snapshot does not exist.
var ErrNotFound = errors.New("not found")

// ErrCorrupt is returned when content does not match its digest.
var ErrCorrupt = errors.New("content does not match its digest")

// ErrNoSpace is returned when a write would pass the cache size or the disk's
// free-space floor.
var ErrNoSpace = errors.New("cache store is full")
