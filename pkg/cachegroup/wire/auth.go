package wire

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"time"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/cas"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/volume"
)

// Auth authenticates the members of a group to each other. With a shared
// secret, every request carries an HMAC of what it does and for whom: its
// method, path and query, the SHA-256 of its body, the member sending it and
// the member it is for, the time and a nonce the receiver remembers; so a
// captured request can neither be altered, nor replayed, nor sent to another
// member. With TLS set, members also talk mutual TLS with certificates of
// the group's CA, each named after its member. The secret file and the
// certificate files are re-read when they change.
type Auth struct {
	keys   *secrets   // nil: no shared secret
	certs  *certFiles // nil: no TLS, or TLS set by the caller
	nonces *nonceSet
	// TLS, if set, is the group's mutual TLS, for serving and dialing; its
	// RootCAs and ClientCAs are the CA as first loaded (handshakes use the
	// current one).
	TLS *tls.Config
}

// maxSkew bounds the clock difference between members a request survives;
// nonces are remembered as long, so a captured request is never accepted
// twice.
const maxSkew = 2 * time.Minute

// The headers of a request's credentials.
const (
	hdrMember = "X-Cachegroup-Member" // the sending member
	hdrTo     = "X-Cachegroup-To"     // the member the request is for
	hdrBody   = "X-Cachegroup-Body"   // SHA-256 of the body, hex
	hdrTime   = "X-Cachegroup-Time"   // unix seconds
	hdrNonce  = "X-Cachegroup-Nonce"  // 16 random bytes, hex
	hdrAuth   = "X-Cachegroup-Auth"   // HMAC-SHA-256 of the above, hex
)

// healthPath is the one request that may be for no member in particular: a
// member reached by address alone asks it to learn whom it reached.
const healthPath = "/v1/health"

// emptyBody is the digest of an empty body.
var emptyBody = cas.Sum(nil)

// NewAuth returns an Auth with the shared secrets in secretFile (the current
// one on its first line, optionally the previous one on the second: both are
// accepted, the current one signs) and, if certFile is set, mutual TLS from
// certFile, keyFile and caFile. The files are re-read when they change.
func NewAuth(secretFile, certFile, keyFile, caFile string) (*Auth, error) {
	a := &Auth{nonces: newNonceSet(maxNonces)}
	var err error
	if secretFile != "" {
		if a.keys, err = newSecrets(secretFile); err != nil {
			return nil, err
		}
	}
	if certFile != "" {
		if a.certs, err = newCertFiles(certFile, keyFile, caFile); err != nil {
			return nil, err
		}
		a.TLS = a.certs.tlsConfig()
	}
	if a.keys == nil && a.TLS == nil {
		return nil, errors.New("members must authenticate: give a peer secret file or TLS certificates")
	}
	return a, nil
}

// NewSecretAuth returns an Auth with the fixed shared secret secret.
func NewSecretAuth(secret []byte) *Auth {
	return &Auth{keys: &secrets{keys: [][]byte{secret}}, nonces: newNonceSet(maxNonces)}
}

// signed is what a request's HMAC covers.
type signed struct {
	method, uri, body, from, to, ts, nonce string
}

func (s *signed) mac(key []byte) []byte {
	m := hmac.New(sha256.New, key)
	// Every field is checked to hold no newline before it is signed (the
	// URI is as it came on the wire, where a newline cannot be), so the
	// encoding is unambiguous.
	fmt.Fprintf(m, "cachegroup-peer-v2\n%s\n%s\n%s\n%s\n%s\n%s\n%s", s.method, s.uri, s.body, s.from, s.to, s.ts, s.nonce)
	return m.Sum(nil)
}

// requestURI is the path and query of r as sent on the wire.
func requestURI(r *http.Request) string {
	if r.RequestURI != "" {
		return r.RequestURI // a server's request, as it was received
	}
	return r.URL.RequestURI()
}

// Sign adds to r the credentials of member from for a request to member to
// (or, for the health check only, to no member in particular: "") whose body
// has digest body.
func (a *Auth) Sign(r *http.Request, from, to string, body cas.Digest) {
	r.Header.Set(hdrMember, from)
	if to != "" {
		r.Header.Set(hdrTo, to)
	}
	r.Header.Set(hdrBody, body.String())
	keys := a.keys.get()
	if keys == nil {
		return
	}
	var n [16]byte
	rand.Read(n[:])
	s := signed{method: r.Method, uri: requestURI(r), body: body.String(), from: from, to: to,
		ts: strconv.FormatInt(time.Now().Unix(), 10), nonce: hex.EncodeToString(n[:])}
	r.Header.Set(hdrTime, s.ts)
	r.Header.Set(hdrNonce, s.nonce)
	r.Header.Set(hdrAuth, hex.EncodeToString(s.mac(keys[0])))
}

// refusal is a request refused, with the reason it is counted under.
type refusal struct {
	reason string
	err    error
}

func (e *refusal) Error() string { return e.reason + ": " + e.err.Error() }
func (e *refusal) Unwrap() error { return e.err }

func refuse(reason string, err error) *refusal { return &refusal{reason: reason, err: err} }

// reasonOf returns the reason err is counted under.
func reasonOf(err error) string {
	var r *refusal
	if errors.As(err, &r) {
		return r.reason
	}
	return reasonUnauthenticated
}

// Verify checks, on its headers alone, the credentials of r, a request to
// member self, and returns the sending member's name and the digest of the
// body it signed, which the caller checks against the body it reads. A
// request it accepts is never accepted again.
func (a *Auth) Verify(r *http.Request, self string) (string, cas.Digest, error) {
	s, body, err := parseCredentials(r)
	if err != nil {
		return "", cas.Digest{}, refuse(reasonUnauthenticated, err)
	}
	if a.TLS != nil {
		if err := certNamed(r.TLS, s.from); err != nil {
			return "", cas.Digest{}, refuse(reasonUnauthenticated, err)
		}
	}
	keys := a.keys.get()
	var sec int64
	var nonce [16]byte
	if keys != nil {
		if sec, nonce, err = s.check(keys, r.Header.Get(hdrAuth)); err != nil {
			return "", cas.Digest{}, refuse(reasonUnauthenticated, err)
		}
		if d := time.Since(time.Unix(sec, 0)); d > maxSkew || d < -maxSkew {
			return "", cas.Digest{}, refuse(reasonStale, fmt.Errorf("request time is %s off", d.Round(time.Second)))
		}
	}
	if s.to != self && (s.to != "" || r.Method != http.MethodGet || r.URL.Path != healthPath) {
		return "", cas.Digest{}, refuse(reasonWrongDestination, fmt.Errorf("request for member %q sent to %q", s.to, self))
	}
	if keys != nil {
		// Last, so that only requests that would be served take room.
		switch err := a.nonces.add(nonce, sec+int64(maxSkew/time.Second), time.Now().Unix()); {
		case errors.Is(err, errReplay):
			return "", cas.Digest{}, refuse(reasonReplay, err)
		case err != nil:
			return "", cas.Digest{}, refuse(reasonNoncesFull, err)
		}
	}
	return s.from, body, nil
}

// parseCredentials checks the syntax of r's credentials.
func parseCredentials(r *http.Request) (*signed, cas.Digest, error) {
	s := &signed{method: r.Method, uri: requestURI(r), from: r.Header.Get(hdrMember), to: r.Header.Get(hdrTo),
		body: r.Header.Get(hdrBody), ts: r.Header.Get(hdrTime), nonce: r.Header.Get(hdrNonce)}
	if err := volume.CheckMemberName(s.from); err != nil {
		return nil, cas.Digest{}, fmt.Errorf("sender: %w", err)
	}
	if s.to != "" {
		if err := volume.CheckMemberName(s.to); err != nil {
			return nil, cas.Digest{}, fmt.Errorf("destination: %w", err)
		}
	}
	body, err := cas.ParseDigest(s.body)
	if err != nil {
		return nil, cas.Digest{}, fmt.Errorf("body digest: %w", err)
	}
	for _, c := range s.method + s.uri {
		if c == '\n' || c == '\r' {
			return nil, cas.Digest{}, errors.New("newline in the request line")
		}
	}
	return s, body, nil
}

// check verifies s's time and nonce syntax and its HMAC under one of keys.
func (s *signed) check(keys [][]byte, mac string) (int64, [16]byte, error) {
	var nonce [16]byte
	sec, err := strconv.ParseInt(s.ts, 10, 64)
	if err != nil || s.ts != strconv.FormatInt(sec, 10) {
		return 0, nonce, errors.New("missing or malformed request time")
	}
	// The length first: hex.Decode writes past a destination too small.
	if len(s.nonce) != 2*len(nonce) {
		return 0, nonce, errors.New("missing or malformed nonce")
	}
	if _, err := hex.Decode(nonce[:], []byte(s.nonce)); err != nil {
		return 0, nonce, errors.New("missing or malformed nonce")
	}
	got, err := hex.DecodeString(mac)
	if err != nil || len(got) != sha256.Size {
		return 0, nonce, errors.New("missing or malformed signature")
	}
	if !slices.ContainsFunc(keys, func(k []byte) bool { return hmac.Equal(s.mac(k), got) }) {
		return 0, nonce, errors.New("wrong credentials")
	}
	return sec, nonce, nil
}

// certNamed checks that the verified client certificate of a TLS connection
// is member's: its common name or one of its DNS names.
func certNamed(st *tls.ConnectionState, member string) error {
	if st == nil || len(st.VerifiedChains) == 0 || len(st.VerifiedChains[0]) == 0 {
		return errors.New("no verified client certificate")
	}
	leaf := st.VerifiedChains[0][0]
	if leaf.Subject.CommonName == member || slices.Contains(leaf.DNSNames, member) {
		return nil
	}
	return fmt.Errorf("client certificate %q is not member %q's", certName(leaf), member)
}

func certName(c *x509.Certificate) string {
	if c.Subject.CommonName != "" {
		return c.Subject.CommonName
	}
	if len(c.DNSNames) > 0 {
		return c.DNSNames[0]
	}
	return c.Subject.String()
}

// clientTLS returns the TLS to dial serverName with, or nil without TLS.
func (a *Auth) clientTLS(serverName string) *tls.Config {
	switch {
	case a.certs != nil:
		return a.certs.clientConfig(serverName)
	case a.TLS != nil:
		cfg := a.TLS.Clone()
		cfg.ServerName = serverName
		return cfg
	}
	return nil
}
