package driver

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/cachegroup/cachegroup/pkg/cachegroup"
)

// Each cache group error reaches the CO with the code that tells it what
// to do: retry (Unavailable, DeadlineExceeded), give up (NotFound), or
// make room (ResourceExhausted).
func TestErrStatusCodes(t *testing.T) {
	for _, c := range []struct {
		err  error
		want codes.Code
	}{
		{fmt.Errorf("volume v: %w", cachegroup.ErrNotFound), codes.NotFound},
		{fmt.Errorf("volume v: %w", cachegroup.ErrUnavailable), codes.Unavailable},
		{fmt.Errorf("snapshot ../x: %w", cachegroup.ErrInvalidID), codes.InvalidArgument},
		{fmt.Errorf("snapshot s: %w", cachegroup.ErrExists), codes.AlreadyExists},
		{fmt.Errorf("commit: %w", cachegroup.ErrTooLarge), codes.ResourceExhausted},
		{fmt.Errorf("commit: %w", cachegroup.ErrNoSpace), codes.ResourceExhausted},
		{errors.Join(fmt.Errorf("blob b: %w", cachegroup.ErrNoSpace), fmt.Errorf("blob b at c: %w", cachegroup.ErrNotFound)), codes.ResourceExhausted},
		{fmt.Errorf("fetch: %w", context.DeadlineExceeded), codes.DeadlineExceeded},
		{fmt.Errorf("fetch: %w", context.Canceled), codes.Canceled},
		{fmt.Errorf("disk on fire"), codes.Internal},
		{status.Error(codes.InvalidArgument, "bad"), codes.InvalidArgument},
	} {
		err := errStatus(c.err, "stage volume %s", "v")
		if got := status.Code(err); got != c.want {
			t.Errorf("%v: code %v, want %v", c.err, got, c.want)
		}
	}
	// Building a snapshot, a blob no member has is a head that moved on.
	for err, want := range map[error]codes.Code{
		fmt.Errorf("fetch blob b: %w", cachegroup.ErrNotFound):     codes.Unavailable,
		errors.Join(cachegroup.ErrNoSpace, cachegroup.ErrNotFound): codes.ResourceExhausted,
		fmt.Errorf("fetch: %w", cachegroup.ErrUnavailable):         codes.Unavailable,
	} {
		if got := status.Code(snapshotStatus(err, "stage volume %s", "v")); got != want {
			t.Errorf("snapshot: %v: code %v, want %v", err, got, want)
		}
	}
}
