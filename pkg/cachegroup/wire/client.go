package wire

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/cas"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/tree"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/volume"
)

// ThroughTimeout bounds a pull-through fetch a member makes for a peer.
const ThroughTimeout = 2 * time.Minute

// Client is another member, reached over the peer protocol.
type Client struct {
	name, addr string
	self       string // this member's name, sent with every request
	auth       *Auth
	client     *http.Client
	scheme     string
}

var _ volume.Service = (*Client)(nil)

// NewClient returns the member called name at addr (host:port), reached as
// member self.
func NewClient(name, addr, self string, auth *Auth) *Client {
	tr := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 3 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     90 * time.Second,
		// A peer pulling a blob through for us answers within its own bound.
		ResponseHeaderTimeout: ThroughTimeout + time.Minute,
		TLSClientConfig:       auth.TLS,
		WriteBufferSize:       256 << 10,
		ReadBufferSize:        256 << 10,
	}
	scheme := "http"
	if auth.TLS != nil {
		scheme = "https"
	}
	return &Client{name: name, addr: addr, self: self, auth: auth, client: &http.Client{Transport: tr}, scheme: scheme}
}

// Name returns the member's identity.
func (r *Client) Name() string { return r.name }

func (r *Client) do(ctx context.Context, method, path string, in, out any, hdr ...string) (*http.Response, error) {
	var body io.Reader
	if rd, ok := in.(io.Reader); ok {
		body = rd
	} else if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return nil, err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, r.scheme+"://"+r.addr+path, body)
	if err != nil {
		return nil, err
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	r.auth.Sign(req, r.self)
	resp, err := r.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("member %s: %w", r.name, err)
	}
	if resp.StatusCode >= 300 {
		defer resp.Body.Close()
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return nil, &errRemote{code: resp.StatusCode, msg: fmt.Sprintf("member %s: %s: %s", r.name, resp.Status, bytes.TrimSpace(msg))}
	}
	if out == nil {
		return resp, nil
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return nil, fmt.Errorf("member %s: %s %s: %w", r.name, method, path, err)
	}
	return resp, nil
}

func (r *Client) call(ctx context.Context, method, path string, in, out any) error {
	resp, err := r.do(ctx, method, path, in, out)
	if err == nil && out == nil {
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	return err
}

// Health asks the member who it is.
func (r *Client) Health(ctx context.Context) (Health, error) {
	var h Health
	err := r.call(ctx, "GET", "/v1/health", nil, &h)
	return h, err
}

// Fetch streams blob d from the member; the caller verifies it. With
// through, a sharing peer may fetch the blob from its owners first if it
// does not have it yet.
func (r *Client) Fetch(ctx context.Context, d cas.Digest, through bool) (io.ReadCloser, error) {
	var hdr []string
	if through {
		hdr = []string{"X-Cachegroup-Through", "1"}
	}
	resp, err := r.do(ctx, "GET", "/v1/blobs/"+d.String(), nil, nil, hdr...)
	if err != nil {
		return nil, err
	}
	return resp.Body, nil
}

// FetchRange streams n bytes of blob d from offset off; the caller verifies
// the whole blob.
func (r *Client) FetchRange(ctx context.Context, d cas.Digest, off, n int64) (io.ReadCloser, error) {
	resp, err := r.do(ctx, "GET", "/v1/blobs/"+d.String(), nil, nil, "Range", fmt.Sprintf("bytes=%d-%d", off, off+n-1))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusPartialContent || resp.ContentLength != n {
		resp.Body.Close()
		return nil, fmt.Errorf("member %s: range %d-%d of blob %s: got %s, %d bytes", r.name, off, off+n-1, d, resp.Status, resp.ContentLength)
	}
	return resp.Body, nil
}

// Verify asks the member to re-hash its copy of blob d and drop it if wrong.
func (r *Client) Verify(ctx context.Context, d cas.Digest) error {
	return r.call(ctx, "POST", "/v1/blobs/"+d.String()+"/verify", nil, nil)
}

// HaveAll reports which of ds the member holds.
func (r *Client) HaveAll(ctx context.Context, ds []cas.Digest) ([]bool, error) {
	var has []bool
	if err := r.call(ctx, "POST", "/v1/have", ds, &has); err != nil {
		return nil, err
	}
	if len(has) != len(ds) {
		return nil, fmt.Errorf("member %s: have: %d answers for %d blobs", r.name, len(has), len(ds))
	}
	return has, nil
}

// Push sends blob d to the member, which verifies it.
func (r *Client) Push(ctx context.Context, d cas.Digest, body io.Reader) error {
	return r.call(ctx, "PUT", "/v1/blobs/"+d.String(), body, nil)
}

// Volume returns a head.
func (r *Client) Volume(ctx context.Context, id string) (volume.Volume, error) {
	var v volume.Volume
	err := r.call(ctx, "GET", "/v1/volumes/"+id, nil, &v)
	return v, err
}

// Volumes returns every head the member keeps, deleted ones included.
func (r *Client) Volumes(ctx context.Context) ([]volume.Volume, error) {
	var vs []volume.Volume
	err := r.call(ctx, "GET", "/v1/volumes", nil, &vs)
	return vs, err
}

// CreateVolume creates a volume at the member.
func (r *Client) CreateVolume(ctx context.Context, spec volume.Spec) (volume.Volume, error) {
	var v volume.Volume
	err := r.call(ctx, "POST", "/v1/volumes", spec, &v)
	return v, err
}

// DeleteVolume deletes a volume at the member.
func (r *Client) DeleteVolume(ctx context.Context, id string) error {
	return r.call(ctx, "DELETE", "/v1/volumes/"+id, nil, nil)
}

// ExpandVolume raises a volume's quota at the member.
func (r *Client) ExpandVolume(ctx context.Context, id string, quota int64) (volume.Volume, error) {
	var v volume.Volume
	err := r.call(ctx, "POST", "/v1/volumes/"+id+"/expand", struct{ Quota int64 }{quota}, &v)
	return v, err
}

// Commit applies a commit at the member.
func (r *Client) Commit(ctx context.Context, id string, c *tree.Commit) (volume.CommitResult, error) {
	var res volume.CommitResult
	err := r.call(ctx, "POST", "/v1/volumes/"+id+"/commit", c, &res)
	return res, err
}

// PutHead gives the member a replicated head.
func (r *Client) PutHead(ctx context.Context, v volume.Volume) error {
	return r.call(ctx, "PUT", "/v1/volumes/"+v.ID+"/head", v, nil)
}

// Snapshot returns a snapshot.
func (r *Client) Snapshot(ctx context.Context, id string) (volume.Snapshot, error) {
	var s volume.Snapshot
	err := r.call(ctx, "GET", "/v1/snapshots/"+id, nil, &s)
	return s, err
}

// Snapshots lists the member's snapshots.
func (r *Client) Snapshots(ctx context.Context) ([]volume.Snapshot, error) {
	var ss []volume.Snapshot
	err := r.call(ctx, "GET", "/v1/snapshots", nil, &ss)
	return ss, err
}

// PutSnapshot gives the member a replicated snapshot.
func (r *Client) PutSnapshot(ctx context.Context, s volume.Snapshot) error {
	return r.call(ctx, "PUT", "/v1/snapshots/"+s.ID, s, nil)
}

// DeleteSnapshot deletes a snapshot at the member.
func (r *Client) DeleteSnapshot(ctx context.Context, id string) error {
	return r.call(ctx, "DELETE", "/v1/snapshots/"+id, nil, nil)
}

// Holders returns the members sharing snapshot root.
func (r *Client) Holders(ctx context.Context, root cas.Digest) ([]string, error) {
	var hs []string
	err := r.call(ctx, "GET", "/v1/holders/"+root.String(), nil, &hs)
	return hs, err
}

// AddHolder tells the member that member shares snapshot root.
func (r *Client) AddHolder(ctx context.Context, root cas.Digest, member string) error {
	return r.call(ctx, "POST", "/v1/holders/"+root.String(), struct{ Member string }{member}, nil)
}
