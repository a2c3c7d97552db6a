package wire

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/metrics"
	"k8s.io/klog/v2"
)

// The defaults of the Server's bounds.
const (
	defaultReadHeaderTimeout = 10 * time.Second
	defaultIdleTimeout       = 60 * time.Second
	// Each open connection costs a goroutine and its buffers, some 30 KiB.
	defaultMaxConns = 2048
	// Room for two commits of MaxCommitBody, or many smaller bodies.
	defaultBodyMemory = 2 * MaxCommitBody
	// maxHeaderBytes is far above the few hundred bytes of a member's
	// request headers.
	maxHeaderBytes = 64 << 10
)

// writeTimeout bounds the time to answer a request: a pull-through may take
// ThroughTimeout before the answer starts. Blobs are written at minRate
// beyond it (pacedWriter).
const writeTimeout = ThroughTimeout + time.Minute

// orDefault is v, or def if v is not set.
func orDefault[T int | int64 | time.Duration](v, def T) T {
	if v > 0 {
		return v
	}
	return def
}

// ListenAndServe serves s on l until ctx ends, with mutual TLS if s's Auth
// has it.
func (s *Server) ListenAndServe(ctx context.Context, l net.Listener) error {
	hdr := orDefault(s.ReadHeaderTimeout, defaultReadHeaderTimeout)
	var protocols http.Protocols
	protocols.SetHTTP1(true) // the peer protocol is HTTP/1.1: bounds and closing rely on it
	// No ReadTimeout: once passed, it cancels the context of a handler still
	// at work; bodies are read at minRate instead (pacedReader).
	srv := &http.Server{Handler: s.Handler(), ReadHeaderTimeout: hdr, WriteTimeout: writeTimeout,
		IdleTimeout: orDefault(s.IdleTimeout, defaultIdleTimeout), MaxHeaderBytes: maxHeaderBytes,
		Protocols: &protocols, ErrorLog: log.New(serverLog{}, "", 0),
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			if pc, ok := c.(*peerConn); ok && pc.tls != nil {
				return context.WithValue(ctx, tlsConnKey, pc.tls)
			}
			return ctx
		}}
	pl := &peerListener{Listener: l, slots: make(chan struct{}, orDefault(s.MaxConns, defaultMaxConns)),
		tls: s.auth.TLS, handshake: hdr, metrics: s.metrics}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	err := srv.Serve(pl)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// peerListener caps the connections open at once, closing those beyond the
// cap as soon as they are accepted, and does the TLS of its connections
// itself, so that what the HTTP server answers on its own can be counted
// (peerConn).
type peerListener struct {
	net.Listener
	slots     chan struct{}
	tls       *tls.Config
	handshake time.Duration
	metrics   *metrics.Set
}

func (l *peerListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		select {
		case l.slots <- struct{}{}:
		default:
			// Over the cap: closed here, rather than left waiting in the
			// backlog or given a goroutine; counted first, so the count is
			// there when the caller sees the close.
			l.metrics.Refused.WithLabelValues(reasonTooManyConns).Inc()
			c.Close()
			continue
		}
		pc := &peerConn{Conn: c, l: l}
		if l.tls != nil {
			pc.tls = tls.Server(c, l.tls)
			pc.Conn = pc.tls
		}
		return pc, nil
	}
}

// serverAnswer is what follows the status line of the answers the HTTP
// server writes on its own, in one write, to requests it cannot read (431
// for headers over MaxHeaderBytes, 400, 501, 505): a handler's answer has a
// Date header first.
var serverAnswer = []byte("\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n")

// serverRefusal returns the reason the HTTP server refused a request for, if
// b is one of its own answers.
func serverRefusal(b []byte) (string, bool) {
	const statusLine = "HTTP/1.1 "
	i := bytes.Index(b, serverAnswer)
	if !bytes.HasPrefix(b, []byte(statusLine)) || i < len(statusLine)+3 || bytes.Contains(b[:i], []byte("\r\n")) {
		return "", false
	}
	if string(b[len(statusLine):len(statusLine)+3]) == "431" {
		return reasonHeaderTooLarge, true
	}
	return reasonMalformed, true
}

// peerConn is a connection of a peerListener: it holds a slot until it is
// closed, counts the requests the HTTP server refuses on its own, and does the TLS handshake on its
// first read, counting the handshakes that fail.
type peerConn struct {
	net.Conn            // the TLS connection if tls is set
	tls       *tls.Conn // nil on plain TCP
	l         *peerListener
	shake     sync.Once
	shakeErr  error
	closeOnce sync.Once
}

func (c *peerConn) Read(b []byte) (int, error) {
	if c.tls != nil {
		c.shake.Do(c.handshake)
		if c.shakeErr != nil {
			return 0, c.shakeErr
		}
	}
	return c.Conn.Read(b)
}

// handshake does the TLS handshake within the listener's bound.
func (c *peerConn) handshake() {
	ctx, cancel := context.WithTimeout(context.Background(), c.l.handshake)
	defer cancel()
	if err := c.tls.HandshakeContext(ctx); err != nil {
		c.l.metrics.Refused.WithLabelValues(reasonTLS).Inc()
		klog.V(1).InfoS("Refused peer connection", "remote", c.RemoteAddr(), "reason", reasonTLS, "error", err.Error())
		// A read error of the connection: the HTTP server closes it
		// without answering.
		c.shakeErr = &net.OpError{Op: "read", Net: "tcp", Addr: c.LocalAddr(), Err: err}
	}
}

func (c *peerConn) Write(b []byte) (int, error) {
	if reason, ok := serverRefusal(b); ok {
		c.l.metrics.Refused.WithLabelValues(reason).Inc()
	}
	return c.Conn.Write(b)
}

// ReadFrom keeps sendfile on plain TCP.
func (c *peerConn) ReadFrom(r io.Reader) (int64, error) {
	if rf, ok := c.Conn.(io.ReaderFrom); ok && c.tls == nil {
		return rf.ReadFrom(r)
	}
	return io.Copy(writerOnly{c}, r)
}

// CloseWrite lets the server end its side of the connection first.
func (c *peerConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

func (c *peerConn) Close() error {
	err := c.Conn.Close()
	c.closeOnce.Do(func() { <-c.l.slots })
	return err
}

// serverLog passes the HTTP server's own errors to klog.
type serverLog struct{}

func (serverLog) Write(b []byte) (int, error) {
	klog.V(1).InfoS("Peer server", "message", strings.TrimSpace(string(b)))
	return len(b), nil
}
