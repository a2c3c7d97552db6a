package wire

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
)

// Auth authenticates the members of a group to each other: every request
// carries an HMAC of its method, path, time and sender under a shared secret,
// and, with TLS set, travels over mutual TLS with certificates of the
// group's CA.
type Auth struct {
	secret []byte
	// TLS, if set, is used for both serving and dialing (mTLS).
	TLS *tls.Config
}

// maxSkew bounds the clock difference between members a request survives;
// it also bounds how long a captured request can be replayed.
const maxSkew = 2 * time.Minute

// NewAuth returns an Auth with the shared secret in secretFile and, if
// certFile is set, mutual TLS from certFile, keyFile and caFile.
func NewAuth(secretFile, certFile, keyFile, caFile string) (*Auth, error) {
	a := &Auth{}
	if secretFile != "" {
		b, err := os.ReadFile(secretFile)
		if err != nil {
			return nil, fmt.Errorf("peer secret: %w", err)
		}
		a.secret = []byte(strings.TrimSpace(string(b)))
		if len(a.secret) < 16 {
			return nil, fmt.Errorf("peer secret in %s is shorter than 16 bytes", secretFile)
		}
	}
	if certFile != "" {
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("peer certificate: %w", err)
		}
		ca, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("peer CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(ca) {
			return nil, fmt.Errorf("peer CA %s holds no PEM certificate", caFile)
		}
		a.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool, ClientCAs: pool,
			ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS13}
	}
	if a.secret == nil && a.TLS == nil {
		return nil, errors.New("members must authenticate: give a peer secret file or TLS certificates")
	}
	return a, nil
}

// NewSecretAuth returns an Auth with secret as the shared secret.
func NewSecretAuth(secret []byte) *Auth { return &Auth{secret: secret} }

func (a *Auth) mac(method, path, ts, member string) string {
	m := hmac.New(sha256.New, a.secret)
	fmt.Fprintf(m, "%s\n%s\n%s\n%s", method, path, ts, member)
	return hex.EncodeToString(m.Sum(nil))
}

// Sign adds the credentials of member to r.
func (a *Auth) Sign(r *http.Request, member string) {
	if a.secret == nil {
		return
	}
	ts := strconv.FormatInt(time.Now().Unix(), 10)
	r.Header.Set("X-Cachegroup-Member", member)
	r.Header.Set("X-Cachegroup-Time", ts)
	r.Header.Set("X-Cachegroup-Auth", a.mac(r.Method, r.URL.Path, ts, member))
}

// Verify checks r's credentials and returns the sending member's name.
func (a *Auth) Verify(r *http.Request) (string, error) {
	if a.TLS != nil && (r.TLS == nil || len(r.TLS.VerifiedChains) == 0) {
		return "", errors.New("no verified client certificate")
	}
	member := r.Header.Get("X-Cachegroup-Member")
	if a.secret == nil {
		return member, nil
	}
	ts := r.Header.Get("X-Cachegroup-Time")
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return "", errors.New("missing or malformed credentials")
	}
	if d := time.Since(time.Unix(sec, 0)); d > maxSkew || d < -maxSkew {
		return "", fmt.Errorf("request time is %s off", d.Round(time.Second))
	}
	want := a.mac(r.Method, r.URL.Path, ts, member)
	if !hmac.Equal([]byte(want), []byte(r.Header.Get("X-Cachegroup-Auth"))) {
		return "", errors.New("wrong credentials")
	}
	return member, nil
}
