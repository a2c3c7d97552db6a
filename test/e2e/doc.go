// Package e2e tests a cache group of several members on one machine: each
// member is a separate process of the real driver binary in its own network
// namespace, joined to the others by veth pairs and a bridge the test creates
// and removes, each with its own store, driven through CSI calls on its
// socket with real overlay mounts. It needs root and the ip and nsenter
// commands; without them it skips.
//
// Run it with `go test ./test/e2e -count=1 -v` (as root).
package e2e
