// Package tree holds the Merkle trees of a volume: directory objects with
// their canonical encoding and the validation of every name and entry, and
// commits (path upserts, deletes and replaces) applied against a base tree
// within a quota.
//
// It imports only cas, whose store keeps the tree objects as blobs.
package tree
