package wire

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"k8s.io/klog/v2"
)

// reloadInterval is how often, at most, the files of the secret and the
// certificates are checked for a change, on use.
const reloadInterval = time.Second

// minSecret is the shortest shared secret accepted.
const minSecret = 16

// fileStamp tells whether a file changed: a Kubernetes Secret volume swaps
// in new files, so the inode changes even when mtime and size do not.
type fileStamp struct {
	mtime, size int64
	ino         uint64
}

func stampOf(path string) (fileStamp, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return fileStamp{}, err
	}
	st := fileStamp{mtime: fi.ModTime().UnixNano(), size: fi.Size()}
	if sys, ok := fi.Sys().(*syscall.Stat_t); ok {
		st.ino = sys.Ino
	}
	return st, nil
}

// secrets are the group's shared secrets: the first signs, every one
// verifies, so that members can move to a new secret one at a time.
type secrets struct {
	file  string // "" for fixed secrets
	mu    sync.Mutex
	keys  [][]byte
	stamp fileStamp
	next  time.Time // when the file may be checked again
}

// loadSecrets reads a secret file: the current secret on its first line and
// optionally the previous one on the second.
func loadSecrets(file string) ([][]byte, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("peer secret: %w", err)
	}
	var keys [][]byte
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		if len(line) < minSecret {
			return nil, fmt.Errorf("a peer secret in %s is shorter than %d bytes", file, minSecret)
		}
		keys = append(keys, []byte(line))
	}
	switch {
	case len(keys) == 0:
		return nil, fmt.Errorf("peer secret file %s holds no secret", file)
	case len(keys) > 2:
		return nil, fmt.Errorf("peer secret file %s holds %d secrets: at most the current and the previous one", file, len(keys))
	}
	return keys, nil
}

func newSecrets(file string) (*secrets, error) {
	st, err := stampOf(file)
	if err != nil {
		return nil, fmt.Errorf("peer secret: %w", err)
	}
	keys, err := loadSecrets(file)
	if err != nil {
		return nil, err
	}
	return &secrets{file: file, keys: keys, stamp: st, next: time.Now().Add(reloadInterval)}, nil
}

// get returns the secrets, current first, re-reading the file if it
// changed; nil if there are none.
func (s *secrets) get() [][]byte {
	if s == nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.file == "" || time.Now().Before(s.next) {
		return s.keys
	}
	s.next = time.Now().Add(reloadInterval)
	st, err := stampOf(s.file)
	if err != nil || st == s.stamp {
		return s.keys
	}
	keys, err := loadSecrets(s.file)
	if err != nil {
		// A half-written file must not lock the member out of its group.
		klog.ErrorS(err, "Peer secret file changed but cannot be used; keeping the secrets it held before")
		return s.keys
	}
	s.keys, s.stamp = keys, st
	klog.InfoS("Peer secrets reloaded", "file", s.file, "secrets", len(keys))
	return s.keys
}

// certFiles are a member's certificate and key and the group's CA, re-read
// when one of their files changes.
type certFiles struct {
	files  [3]string // certificate, key, CA
	mu     sync.Mutex
	cert   *tls.Certificate
	pool   *x509.CertPool
	stamps [3]fileStamp
	next   time.Time
}

func loadCerts(files [3]string) (*tls.Certificate, *x509.CertPool, [3]fileStamp, error) {
	var stamps [3]fileStamp
	for i, f := range files {
		st, err := stampOf(f)
		if err != nil {
			return nil, nil, stamps, err
		}
		stamps[i] = st
	}
	cert, err := tls.LoadX509KeyPair(files[0], files[1])
	if err != nil {
		return nil, nil, stamps, fmt.Errorf("peer certificate: %w", err)
	}
	ca, err := os.ReadFile(files[2])
	if err != nil {
		return nil, nil, stamps, fmt.Errorf("peer CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		return nil, nil, stamps, fmt.Errorf("peer CA %s holds no PEM certificate", files[2])
	}
	return &cert, pool, stamps, nil
}

func newCertFiles(certFile, keyFile, caFile string) (*certFiles, error) {
	files := [3]string{certFile, keyFile, caFile}
	if keyFile == "" || caFile == "" {
		return nil, errors.New("mutual TLS needs a certificate, its key and the group's CA")
	}
	cert, pool, stamps, err := loadCerts(files)
	if err != nil {
		return nil, err
	}
	return &certFiles{files: files, cert: cert, pool: pool, stamps: stamps, next: time.Now().Add(reloadInterval)}, nil
}

// get returns the certificate and the CA pool, re-reading them if a file
// changed.
func (c *certFiles) get() (*tls.Certificate, *x509.CertPool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if time.Now().Before(c.next) {
		return c.cert, c.pool
	}
	c.next = time.Now().Add(reloadInterval)
	changed := false
	for i, f := range c.files {
		if st, err := stampOf(f); err == nil && st != c.stamps[i] {
			changed = true
		}
	}
	if !changed {
		return c.cert, c.pool
	}
	cert, pool, stamps, err := loadCerts(c.files)
	if err != nil {
		// The certificate and its key are rarely replaced in one step: try
		// again at the next check.
		klog.ErrorS(err, "Peer certificates changed but cannot be used yet; keeping the ones loaded before")
		return c.cert, c.pool
	}
	c.cert, c.pool, c.stamps = cert, pool, stamps
	klog.InfoS("Peer certificates reloaded", "certificate", c.files[0])
	return c.cert, c.pool
}

// tlsConfig returns the group's mutual TLS, its certificate and CA taken
// from c at each handshake, for serving and dialing.
func (c *certFiles) tlsConfig() *tls.Config {
	_, pool := c.get()
	cfg := &tls.Config{MinVersion: tls.VersionTLS13, ClientAuth: tls.RequireAndVerifyClientCert,
		RootCAs: pool, ClientCAs: pool}
	cfg.GetCertificate = func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
		cert, _ := c.get()
		return cert, nil
	}
	cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
		cert, _ := c.get()
		return cert, nil
	}
	// The server verifies client certificates against the CA as it is now.
	cfg.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		cert, pool := c.get()
		return &tls.Config{MinVersion: tls.VersionTLS13, ClientAuth: tls.RequireAndVerifyClientCert,
			ClientCAs: pool, Certificates: []tls.Certificate{*cert}}, nil
	}
	return cfg
}

// clientConfig returns the TLS to dial serverName with, verifying it against
// the CA as it is now (a tls.Config's RootCAs cannot follow a reload).
func (c *certFiles) clientConfig(serverName string) *tls.Config {
	cert, pool := c.get()
	return &tls.Config{MinVersion: tls.VersionTLS13, RootCAs: pool, ServerName: serverName,
		Certificates: []tls.Certificate{*cert}}
}
