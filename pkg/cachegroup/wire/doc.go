// Package wire is the peer protocol between the members of a group: HTTP/1.1
// on the host network, one request per operation, authenticated by Auth. Its
// Client reaches another member; its Server serves this one, through the
// small Backend interface the member gives it. Errors cross it as HTTP
// statuses, mapped in one place (errors.go), and come out as the same
// sentinel errors on the other side.
//
// It imports cas, tree and volume, never the group or the node tier.
//
//	GET    /v1/health                   the member's name and weight
//	GET    /v1/blobs/{digest}           a blob, ranged; sendfile on plain TCP
//	POST   /v1/blobs                    many blobs in one framed stream
//	HEAD   /v1/blobs/{digest}           whether the member has (and offers) it
//	PUT    /v1/blobs/{digest}           store a blob; verified before it is kept
//	POST   /v1/blobs/{digest}/verify    re-hash a copy a peer found wrong; drop it if so
//	POST   /v1/have                     which of a list of blobs the member holds
//	GET    /v1/volumes[/{id}]           heads
//	POST   /v1/volumes                  create (VolumeSpec)
//	DELETE /v1/volumes/{id}
//	POST   /v1/volumes/{id}/expand      raise the quota
//	POST   /v1/volumes/{id}/commit      apply a Commit
//	PUT    /v1/volumes/{id}/head        a replicated head (kept if newer)
//	GET    /v1/snapshots[/{id}], DELETE /v1/snapshots/{id}
//	PUT    /v1/snapshots/{id}           a replicated snapshot
//	GET    /v1/holders/{root}, POST /v1/holders/{root}  sharing nodes of a snapshot
package wire
