// Package group is a member's view of its cache group: who the members are
// (static lists, DNS, EndpointSlices) and whether they answer, where each
// volume's homes and each blob's owners are (weighted rendezvous hashing),
// routing every operation to them, and re-replication and anti-entropy after
// the group changes. Every member, this one included, is reached through the
// Peer interface.
//
// It imports cas, tree, volume and wire, never the node tier.
package group
