package wire

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/cas"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/tree"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/volume"
)

// errStatuses maps the sentinel errors to HTTP statuses and back.
var errStatuses = []struct {
	err  error
	code int
}{
	{cas.ErrNotFound, http.StatusNotFound},
	{volume.ErrExists, http.StatusConflict},
	{tree.ErrTooLarge, http.StatusRequestEntityTooLarge},
	{cas.ErrNoSpace, http.StatusInsufficientStorage},
	{volume.ErrUnavailable, http.StatusServiceUnavailable},
	{cas.ErrCorrupt, http.StatusUnprocessableEntity},
	{ErrNotOffered, http.StatusGone},
	{errBadRequest, http.StatusBadRequest},
	{volume.ErrInvalidID, http.StatusBadRequest},
}

// ErrNotOffered is a member's answer for a blob it holds only as a private
// node copy of a no-sharing mount.
var ErrNotOffered = errors.New("blob is a private node copy")

// errBadRequest is a request that cannot be served as it is written.
var errBadRequest = errors.New("bad request")

// badRequest says what is wrong with a request.
func badRequest(err error) error { return fmt.Errorf("%w: %v", errBadRequest, err) }

// errRemote is an error a peer answered with.
type errRemote struct {
	code int
	msg  string
}

func (e *errRemote) Error() string { return e.msg }

func (e *errRemote) Unwrap() error {
	for _, s := range errStatuses {
		if s.code == e.code {
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
