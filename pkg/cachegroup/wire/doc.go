// Package wire is the peer protocol between the members of a group: HTTP/1.1
// on the host network, one request per operation, authenticated by Auth. Its
// Client reaches another member; its Server serves this one, through the
// small Backend interface the member gives it. Errors cross it as HTTP
// statuses, mapped in one place (errors.go), and come out as the same
// sentinel errors on the other side.
//
// It imports cas, tree and volume, never the group or the node tier.
//
// The port is open to the node network, so the server bounds what any caller
// can make it hold: connections (closed at once beyond a cap), time to send
// headers, to send a body and to take an answer (a minimum rate, so large
// blobs still move), idle time, body sizes per route and the body memory of
// all requests at once. A request is authenticated on its headers, before
// any of its body is read; its signature binds its method, path and query,
// body digest, sender, destination, time and nonce (see Auth), and the
// server checks the body it reads against the digest. Every refusal is
// counted in the Refused metric, by reason.
//
//	GET    /v1/health                   the member's name and weight
//	GET    /v1/blobs/{digest}[?through=1]  a blob, ranged; sendfile on plain TCP
//	POST   /v1/blobs[?through=1]        many blobs in one framed stream
//	HEAD   /v1/blobs/{digest}           whether the member has (and offers) it
//	PUT    /v1/blobs/{digest}           store a blob; verified before it is kept
//	POST   /v1/blobs/{digest}/verify    re-hash a copy a peer found wrong; drop it if so
//	POST   /v1/sizes                    the sizes of a list of blobs at the member (-1: not here)
//	POST   /v1/keep                     the same, keeping them from collection a while (a commit's blobs)
//	GET    /v1/volumes[/{id}]           heads
//	POST   /v1/volumes                  create (volume.Spec)
//	DELETE /v1/volumes/{id}
//	POST   /v1/volumes/{id}/expand      raise the quota
//	POST   /v1/volumes/{id}/commit      apply a Commit
//	PUT    /v1/volumes/{id}/head        a replicated head (kept if newer)
//	POST   /v1/used                     blobs nodes read lately (a home evicts by it)
//	GET    /v1/snapshots[/{id}], DELETE /v1/snapshots/{id}
//	PUT    /v1/snapshots/{id}           a replicated snapshot
//	GET    /v1/holders/{root}, POST /v1/holders/{root}  sharing nodes of a snapshot
//	       /v1/admin/...                what an operator's tool asks (see admin.go)
package wire
