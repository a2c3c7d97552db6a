// Package cas is a member's content-addressed blob store on one disk: blobs
// named by their SHA-256 digest, verified whenever they are read into use,
// written by rename so that a blob that exists is complete, and bounded by a
// cache size and a free-space floor. Files of materialised snapshots are hard
// links to its blobs, so it also owns the metadata of those inodes.
//
// It may import only the project's internal helpers; every other layer of the
// member imports it.
package cas
