// Package cachegroup holds the data of a cache group: a content-addressed blob
// store, Merkle trees of directory objects, volume heads and snapshots kept by a
// volume's home, commits applied to them, and the node tier that materialises
// snapshots on a node's disk and turns a pod's private writes into commits.
//
// A group of one member is the same code path as a group of many: the group
// routes every operation through the Peer interface, and the local member is
// simply the peer it picks.
package cachegroup
