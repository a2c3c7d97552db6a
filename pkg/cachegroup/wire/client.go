package wire

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
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
// member self. A client of a member known by its address alone (name "")
// may only ask its Health.
func NewClient(name, addr, self string, auth *Auth) *Client {
	dialer := &net.Dialer{Timeout: 3 * time.Second, KeepAlive: 30 * time.Second}
	tr := &http.Transport{
		DialContext: dialer.DialContext,
		// Below the server's IdleTimeout, so that the server does not close a
		// connection just as a request is sent on it.
		IdleConnTimeout:     45 * time.Second,
		MaxIdleConnsPerHost: 64,
		// A peer pulling a blob through for us answers within its own bound.
		ResponseHeaderTimeout: ThroughTimeout + time.Minute,
		WriteBufferSize:       256 << 10,
		ReadBufferSize:        256 << 10,
	}
	scheme := "http"
	if auth.TLS != nil {
		scheme = "https"
		// Dialed with the CA and certificate as they are at each dial: they
		// are reloaded when their files change.
		tr.DialTLSContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
			host, _, err := net.SplitHostPort(addr)
			if err != nil {
				return nil, err
			}
			c, err := dialer.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			tc := tls.Client(c, auth.clientTLS(host))
			if err := tc.HandshakeContext(ctx); err != nil {
				c.Close()
				return nil, err
			}
			return tc, nil
		}
	}
	return &Client{name: name, addr: addr, self: self, auth: auth, client: &http.Client{Transport: tr}, scheme: scheme}
}

// Name returns the member's identity.
func (r *Client) Name() string { return r.name }

// blobBody is the body of a request that streams blob d: its digest is the
// body's, so it is signed without hashing the body first.
type blobBody struct {
	d cas.Digest
	r io.Reader
}

// do sends a request whose body is in: nothing, raw bytes, a blobBody, or
// else a value sent as JSON; the answer's JSON is decoded into out.
func (r *Client) do(ctx context.Context, method, path string, in, out any, hdr ...string) (*http.Response, error) {
	var body io.Reader
	digest := emptyBody
	switch v := in.(type) {
	case nil:
	case []byte:
		body, digest = bytes.NewReader(v), cas.Sum(v)
	case blobBody:
		body, digest = v.r, v.d
	default:
		b, err := json.Marshal(in)
		if err != nil {
			return nil, err
		}
		body, digest = bytes.NewReader(b), cas.Sum(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, r.scheme+"://"+r.addr+path, body)
	if err != nil {
		return nil, err
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	r.auth.Sign(req, r.self, r.name, digest)
	resp, err := r.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("member %s: %w", r.name, err)
	}
	if resp.StatusCode >= 300 {
		defer resp.Body.Close()
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return nil, &errRemote{code: resp.StatusCode, name: resp.Header.Get(hdrError),
			msg: fmt.Sprintf("member %s: %s: %s", r.name, resp.Status, bytes.TrimSpace(msg))}
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
	path := "/v1/blobs/" + d.String()
	if through {
		path += "?through=1"
	}
	resp, err := r.do(ctx, "GET", path, nil, nil)
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

// Sizes returns the size of each blob of ds at the member, -1 for those it lacks.
func (r *Client) Sizes(ctx context.Context, ds []cas.Digest) ([]int64, error) {
	return r.sizes(ctx, "/v1/sizes", ds)
}

// Keep is Sizes, and keeps the blobs the member has from its next
// collections for a while: a home asks it before it applies a commit.
func (r *Client) Keep(ctx context.Context, ds []cas.Digest) ([]int64, error) {
	return r.sizes(ctx, "/v1/keep", ds)
}

func (r *Client) sizes(ctx context.Context, path string, ds []cas.Digest) ([]int64, error) {
	var sizes []int64
	if err := r.call(ctx, "POST", path, ds, &sizes); err != nil {
		return nil, err
	}
	if len(sizes) != len(ds) {
		return nil, fmt.Errorf("member %s: %s: %d answers for %d blobs", r.name, path, len(sizes), len(ds))
	}
	return sizes, nil
}

// Push sends blob d to the member, which verifies it.
func (r *Client) Push(ctx context.Context, d cas.Digest, body io.Reader) error {
	return r.call(ctx, "PUT", "/v1/blobs/"+d.String(), blobBody{d: d, r: body}, nil)
}

// Volume returns a head.
func (r *Client) Volume(ctx context.Context, id string) (volume.Volume, error) {
	var v volume.Volume
	err := r.call(ctx, "GET", "/v1/volumes/"+url.PathEscape(id), nil, &v)
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
	return r.call(ctx, "DELETE", "/v1/volumes/"+url.PathEscape(id), nil, nil)
}

// ExpandVolume raises a volume's quota at the member.
func (r *Client) ExpandVolume(ctx context.Context, id string, quota int64) (volume.Volume, error) {
	var v volume.Volume
	err := r.call(ctx, "POST", "/v1/volumes/"+url.PathEscape(id)+"/expand", struct{ Quota int64 }{quota}, &v)
	return v, err
}

// Commit applies a commit at the member. A commit over MaxCommitBody is
// tree.ErrTooLarge without being sent: no member would take it.
func (r *Client) Commit(ctx context.Context, id string, c *tree.Commit) (volume.CommitResult, error) {
	var res volume.CommitResult
	b, err := json.Marshal(c)
	if err != nil {
		return res, err
	}
	if len(b) > MaxCommitBody {
		return res, fmt.Errorf("commit to %s: %w: %d bytes of ops, a member takes at most %d", id, tree.ErrTooLarge, len(b), MaxCommitBody)
	}
	err = r.call(ctx, "POST", "/v1/volumes/"+url.PathEscape(id)+"/commit", b, &res)
	return res, err
}

// PutHead gives the member a replicated head.
func (r *Client) PutHead(ctx context.Context, v volume.Volume) error {
	return r.call(ctx, "PUT", "/v1/volumes/"+url.PathEscape(v.ID)+"/head", v, nil)
}

// Used tells the member, a home, that nodes read the blobs ds lately.
func (r *Client) Used(ctx context.Context, ds []cas.Digest) error {
	return r.call(ctx, "POST", "/v1/used", ds, nil)
}

// Snapshot returns a snapshot.
func (r *Client) Snapshot(ctx context.Context, id string) (volume.Snapshot, error) {
	var s volume.Snapshot
	err := r.call(ctx, "GET", "/v1/snapshots/"+url.PathEscape(id), nil, &s)
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
	return r.call(ctx, "PUT", "/v1/snapshots/"+url.PathEscape(s.ID), s, nil)
}

// DeleteSnapshot deletes a snapshot at the member.
func (r *Client) DeleteSnapshot(ctx context.Context, id string) error {
	return r.call(ctx, "DELETE", "/v1/snapshots/"+url.PathEscape(id), nil, nil)
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
