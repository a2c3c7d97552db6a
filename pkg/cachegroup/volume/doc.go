// Package volume holds volume heads and snapshots and the home that keeps
// them: a volume's current root with its settings, the snapshots that pin a
// generation, and the serialised application of commits to a head.
//
// It imports cas and tree; the group it joins reaches it through the small
// Group interface, never the other way round.
package volume
