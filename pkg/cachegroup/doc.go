// Package cachegroup is a member of a cache group, wired from its layers:
// Open builds the blob store (cas), the volume home (volume), the group's
// membership and placement (group), the peer protocol's server (wire) and
// the node tier (node) from one Config, and Run runs what a member does in
// the background. The CSI driver holds only the mapping of CSI calls onto a
// Member.
//
// The layers import one way: cas ← tree ← volume ← wire ← group ← node ←
// cachegroup. This package is the only one that knows them all.
package cachegroup
