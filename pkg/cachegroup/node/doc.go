// Package node is a member's node tier: the snapshots materialised on this
// node's disk for its pods (hydration from the group, hard links into the
// blob store), the layers of the pods mounted here, and the durable outbox
// whose committer turns each ended layer into a commit.
//
// It imports the group and the layers below it; only the member (package
// cachegroup) imports it.
package node
