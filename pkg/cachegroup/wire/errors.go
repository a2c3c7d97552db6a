package wire

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/cas"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/tree"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/volume"
)

// errStatuses maps the sentinel errors to HTTP statuses and back. An answer
// names its sentinel in hdrError, since some share a status; an answer
// without one is read as the first sentinel of its status.
var errStatuses = []struct {
	err  error
	code int
	name string
}{
	{cas.ErrNotFound, http.StatusNotFound, "not-found"},
	{volume.ErrExists, http.StatusConflict, "exists"},
	{tree.ErrTooLarge, http.StatusRequestEntityTooLarge, "too-large"},
	{cas.ErrNoSpace, http.StatusInsufficientStorage, "no-space"},
	{volume.ErrUnavailable, http.StatusServiceUnavailable, "unavailable"},
	{cas.ErrCorrupt, http.StatusUnprocessableEntity, "corrupt"},
	{tree.ErrInvalid, http.StatusUnprocessableEntity, "invalid"},
	{ErrNotOffered, http.StatusGone, "not-offered"},
	{errBadRequest, http.StatusBadRequest, "bad-request"},
	{volume.ErrInvalidID, http.StatusBadRequest, "invalid-id"},
	{volume.ErrMissingBlob, http.StatusFailedDependency, "missing-blob"},
}

// hdrError names the sentinel error of an answer.
const hdrError = "X-Cachegroup-Error"

// The reasons refused requests are counted under (metrics Refused).
const (
	reasonUnauthenticated  = "unauthenticated"      // no, malformed or wrong credentials
	reasonStale            = "stale"                // signed too long ago, or in the future
	reasonReplay           = "replay"               // a nonce seen before
	reasonWrongDestination = "wrong-destination"    // signed for another member
	reasonBadBodyDigest    = "bad-body-digest"      // the body is not the one signed
	reasonTooLarge         = "too-large"            // a body over its route's cap
	reasonHeaderTooLarge   = "header-too-large"     // headers over the server's cap (431)
	reasonMalformed        = "malformed"            // a request the HTTP server cannot read
	reasonTooManyConns     = "too-many-connections" // over the connection cap
	reasonBusy             = "busy"                 // no room for the request's body now
	reasonNoncesFull       = "nonces-full"          // too many signed requests within the skew to remember
	reasonSlow             = "slow"                 // a body that came too slowly
	reasonTLS              = "tls"                  // a failed TLS handshake
	reasonBadRequest       = "bad-request"          // malformed ids, digests or JSON
	reasonInvalid          = "invalid"              // a commit that breaks the rules of a tree
)

// reasons lists every reason a refusal is counted under, so that each
// series exists from the start (rates see the first refusal).
var reasons = []string{reasonUnauthenticated, reasonStale, reasonReplay, reasonWrongDestination, reasonBadBodyDigest,
	reasonTooLarge, reasonHeaderTooLarge, reasonMalformed, reasonTooManyConns, reasonBusy, reasonNoncesFull, reasonSlow,
	reasonTLS, reasonBadRequest, reasonInvalid}

// ErrNotOffered is a member's answer for a blob it holds only as a private
// node copy of a no-sharing mount.
var ErrNotOffered = errors.New("blob is a private node copy")

// errBadRequest is a request that cannot be served as it is written.
var errBadRequest = errors.New("bad request")

// badRequest says what is wrong with a request.
func badRequest(err error) error { return fmt.Errorf("%w: %v", errBadRequest, err) }

// statusOf returns the status and sentinel name of err; 500 and "" for an
// error of the member's own.
func statusOf(err error) (int, string) {
	for _, s := range errStatuses {
		if errors.Is(err, s.err) {
			return s.code, s.name
		}
	}
	return http.StatusInternalServerError, ""
}

// errRemote is an error a peer answered with.
type errRemote struct {
	code int
	name string // the sentinel the peer named, if any
	msg  string
}

func (e *errRemote) Error() string { return e.msg }

func (e *errRemote) Unwrap() error {
	for _, s := range errStatuses {
		if s.code == e.code && (e.name == "" || e.name == s.name) {
			return s.err
		}
	}
	return nil
}

// IsAnswer reports whether err is an answer a member gave, as opposed to a
// failure to reach it.
func IsAnswer(err error) bool {
	var re *errRemote
	return errors.As(err, &re)
}
