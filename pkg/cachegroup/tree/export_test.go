package tree

// SetFlushEntries makes edits flush past n loaded entries until the
// returned function restores the bound.
func SetFlushEntries(n int) (restore func()) {
	old := flushEntries
	flushEntries = n
	return func() { flushEntries = old }
}
