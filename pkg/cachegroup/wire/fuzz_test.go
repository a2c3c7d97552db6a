package wire

import (
	"crypto/hmac"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/cas"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/tree"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/volume"
)

// FuzzVerify feeds any credentials to Verify: it must not panic, and must
// accept only requests signed with the secret, for this member, once.
func FuzzVerify(f *testing.F) {
	auth := NewSecretAuth(testSecret)
	seed := func(a *Auth, method, uri, from, to string, body []byte) {
		r, _ := http.NewRequest(method, "http://member-a"+uri, nil)
		a.Sign(r, from, to, cas.Sum(body))
		h := r.Header
		f.Add(method, uri, h.Get(hdrMember), h.Get(hdrTo), h.Get(hdrBody), h.Get(hdrTime), h.Get(hdrNonce), h.Get(hdrAuth))
	}
	seed(auth, "GET", "/v1/volumes", "member-b", "member-a", nil)
	seed(auth, "GET", healthPath, "member-b", "", nil)
	seed(auth, "PUT", "/v1/blobs/"+cas.Sum([]byte("x")).String(), "member-b", "member-a", []byte("x"))
	seed(auth, "GET", "/v1/volumes", "member-b", "member-c", nil)
	seed(NewSecretAuth([]byte("another-secret-0123456789")), "GET", "/v1/volumes", "member-b", "member-a", nil)
	f.Add("GET", "/v1/health", "", "", "", "", "", "")
	f.Add("POST", "/v1/sizes?x=\n", "member-b\n", "member-a", "00", "-1", "zz", "zz")
	f.Fuzz(func(t *testing.T, method, uri, from, to, body, ts, nonce, mac string) {
		u, err := url.ParseRequestURI(uri)
		if err != nil {
			return
		}
		r := &http.Request{Method: method, URL: u, RequestURI: uri, Header: http.Header{}}
		for k, v := range map[string]string{hdrMember: from, hdrTo: to, hdrBody: body, hdrTime: ts, hdrNonce: nonce, hdrAuth: mac} {
			if v != "" {
				r.Header.Set(k, v)
			}
		}
		got, digest, err := auth.Verify(r, "member-a")
		if err != nil {
			return
		}
		if got != from || volume.CheckMemberName(got) != nil || digest.String() != strings.ToLower(body) {
			t.Fatalf("accepted sender %q body %s for headers %q %q", got, digest, from, body)
		}
		if to != "member-a" && (to != "" || method != "GET" || u.Path != healthPath) {
			t.Fatalf("accepted a request for %q", to)
		}
		s := signed{method: method, uri: uri, body: body, from: from, to: to, ts: ts, nonce: nonce}
		want := s.mac(testSecret)
		if m, err := hex.DecodeString(mac); err != nil || !hmac.Equal(m, want) {
			t.Fatalf("accepted a request not signed with the secret: %+v", s)
		}
		if _, _, err := auth.Verify(r, "member-a"); err == nil {
			t.Fatal("accepted the same request twice")
		}
	})
}

// FuzzCommitBody feeds any body to the decoding of a commit as the commit
// route does it: it must not panic, and a commit it accepts has only ops a
// tree can take.
func FuzzCommitBody(f *testing.F) {
	file := tree.Entry{Type: tree.TypeFile, Mode: 0o644, Size: 1, Digest: cas.Sum([]byte("x"))}
	for _, c := range []tree.Commit{
		{Ops: []tree.Op{{Kind: tree.OpUpsert, Path: "a/b.jar", Entry: file}, {Kind: tree.OpDelete, Path: "c"}}},
		{Ops: []tree.Op{{Kind: tree.OpReplace, Path: "d", Entry: tree.Entry{Type: tree.TypeDir, Mode: 0o755}}}},
		{Ops: []tree.Op{{Kind: tree.OpUpsert, Path: "l", Entry: tree.Entry{Type: tree.TypeSymlink, Mode: 0o777, Size: 6, Target: "../../x"}}}},
		{Ops: []tree.Op{{Kind: tree.OpUpsert, Path: "../etc/passwd", Entry: file}}},
	} {
		b, _ := json.Marshal(c)
		f.Add(b)
	}
	f.Add([]byte(`{"ops":[{"k":1,"p":"/abs","e":{"Type":1}}]}`))
	f.Add([]byte(`{"ops":[{"k":2,"p":"a/./b"}]}`))
	f.Add([]byte(`{"base":"` + strings.Repeat("0", 64) + `","ops":null}`))
	f.Add([]byte(`{"ops":[{"k":1,"p":"a\u0000b","e":{"Type":1,"Mode":2048}}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var c tree.Commit
		if decodeJSON(b, &c) != nil || c.Validate() != nil {
			return
		}
		for _, op := range c.Ops {
			parts, err := tree.SplitPath(op.Path)
			if err != nil || strings.HasPrefix(op.Path, "/") {
				t.Fatalf("accepted path %q: %v", op.Path, err)
			}
			for _, p := range parts {
				if p == ".." || p == "." || strings.ContainsAny(p, "/\x00") {
					t.Fatalf("accepted path %q", op.Path)
				}
			}
			switch op.Kind {
			case tree.OpDelete:
			case tree.OpUpsert, tree.OpReplace:
				if op.Entry.Mode&^cas.ModeMask != 0 {
					t.Fatalf("accepted mode %o on %q", op.Entry.Mode, op.Path)
				}
			default:
				t.Fatalf("accepted op kind %d", op.Kind)
			}
		}
	})
}
