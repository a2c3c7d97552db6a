// Package csiharness runs the cachegroup CSI driver binary as a child process
// and talks to it the way a container orchestrator does: standard CSI v1 gRPC
// over a unix socket. The demo and the benchmark use it; it keeps no state of
// its own beyond the process and the connection.
package csiharness

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

// Config says how to start the driver.
type Config struct {
	// Binary is the path of the cachegroup-csi executable.
	Binary string
	// StoreDir is the member's store directory (--store). It is created if
	// missing.
	StoreDir string
	// NodeID is the member's node name (--node-id); default "node-1".
	NodeID string
	// Group is the member's cache group (--group); default "default".
	Group string
	// Mode is node, controller or all (--mode); default "all".
	Mode string
	// DriverName is the CSI driver name (--driver-name); empty keeps the
	// driver's default.
	DriverName string
	// Args are extra command-line flags passed as they are.
	Args []string
	// LogPath, when set, receives the driver's stdout and stderr (appended).
	// The last 64 KiB are always kept in memory as well (see LogTail).
	LogPath string
	// StartTimeout bounds the wait for the socket and a healthy Probe;
	// default 30s.
	StartTimeout time.Duration
	// StopTimeout is how long Stop waits after SIGTERM before it kills the
	// process; default 15s.
	StopTimeout time.Duration
	// CallTimeout bounds each attempt of a node call made through the
	// helpers (a retried call gets a fresh one); default 2 minutes, the
	// kubelet's.
	CallTimeout time.Duration
}

// Driver is a running driver process and a CSI connection to it.
type Driver struct {
	// Identity is the CSI Identity client.
	Identity csi.IdentityClient
	// Controller is the CSI Controller client.
	Controller csi.ControllerClient
	// Node is the CSI Node client.
	Node csi.NodeClient
	// Conn is the gRPC connection the clients use.
	Conn *grpc.ClientConn
	// Endpoint is the CSI endpoint given to the driver (unix://...).
	Endpoint string
	// SocketPath is the path of the unix socket.
	SocketPath string
	// StoreDir is the driver's store directory.
	StoreDir string

	cfg     Config
	cmd     *exec.Cmd
	sockDir string
	logFile *os.File
	log     *tailBuffer

	done    chan struct{} // closed when the process has exited
	waitErr error

	stopOnce sync.Once
	stopErr  error

	mu      sync.Mutex
	retries int
}

// Start launches the driver binary with flags per the project contract
// (--mode, --endpoint on a unix socket in a fresh temporary directory,
// --node-id, --store, --group), waits until the socket accepts CSI calls and
// Probe reports ready, and returns the handle. On error the process is
// stopped and nothing is left running.
func Start(ctx context.Context, cfg Config) (*Driver, error) {
	if cfg.Binary == "" {
		return nil, errors.New("csiharness: no driver binary given")
	}
	if _, err := os.Stat(cfg.Binary); err != nil {
		return nil, fmt.Errorf("csiharness: driver binary: %w", err)
	}
	if cfg.StoreDir == "" {
		return nil, errors.New("csiharness: no store directory given")
	}
	if cfg.NodeID == "" {
		cfg.NodeID = "node-1"
	}
	if cfg.Group == "" {
		cfg.Group = "default"
	}
	if cfg.Mode == "" {
		cfg.Mode = "all"
	}
	if cfg.StartTimeout <= 0 {
		cfg.StartTimeout = 30 * time.Second
	}
	if cfg.StopTimeout <= 0 {
		cfg.StopTimeout = 15 * time.Second
	}
	if cfg.CallTimeout <= 0 {
		cfg.CallTimeout = 2 * time.Minute
	}
	store, err := filepath.Abs(cfg.StoreDir)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(store, 0o755); err != nil {
		return nil, err
	}
	// A short path: unix socket paths are limited to 107 bytes.
	sockDir, err := os.MkdirTemp("", "cgcsi-")
	if err != nil {
		return nil, err
	}
	sock := filepath.Join(sockDir, "csi.sock")
	d := &Driver{
		Endpoint:   "unix://" + sock,
		SocketPath: sock,
		StoreDir:   store,
		cfg:        cfg,
		sockDir:    sockDir,
		log:        &tailBuffer{max: 64 << 10},
		done:       make(chan struct{}),
	}
	args := []string{
		"--mode=" + cfg.Mode,
		"--endpoint=" + d.Endpoint,
		"--node-id=" + cfg.NodeID,
		"--store=" + store,
		"--group=" + cfg.Group,
	}
	if cfg.DriverName != "" {
		args = append(args, "--driver-name="+cfg.DriverName)
	}
	args = append(args, cfg.Args...)
	d.cmd = exec.Command(cfg.Binary, args...)
	var out io.Writer = d.log
	if cfg.LogPath != "" {
		f, err := os.OpenFile(cfg.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			os.RemoveAll(sockDir)
			return nil, err
		}
		d.logFile = f
		out = io.MultiWriter(f, d.log)
	}
	d.cmd.Stdout = out
	d.cmd.Stderr = out
	d.cmd.SysProcAttr = &syscall.SysProcAttr{
		// Its own process group: a terminal's Ctrl-C reaches only us, and
		// we stop the driver in order after cleaning up its mounts.
		Setpgid: true,
		// If we die without stopping it, it is told to stop too.
		Pdeathsig: syscall.SIGTERM,
	}
	if err := d.cmd.Start(); err != nil {
		d.closeLog()
		os.RemoveAll(sockDir)
		return nil, fmt.Errorf("csiharness: start %s: %w", cfg.Binary, err)
	}
	go func() {
		d.waitErr = d.cmd.Wait()
		close(d.done)
	}()
	if err := d.waitReady(ctx); err != nil {
		d.Stop()
		return nil, fmt.Errorf("%w\n--- driver log (tail) ---\n%s", err, d.LogTail(4096))
	}
	return d, nil
}

// waitReady waits for the socket to appear, connects, and polls Probe until
// the driver says it is ready.
func (d *Driver) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, d.cfg.StartTimeout)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		if _, err := os.Stat(d.SocketPath); err == nil {
			break
		}
		select {
		case <-d.done:
			return fmt.Errorf("csiharness: driver exited before listening: %v", d.exitStatus())
		case <-ctx.Done():
			return fmt.Errorf("csiharness: socket %s did not appear: %w", d.SocketPath, ctx.Err())
		case <-tick.C:
		}
	}
	conn, err := grpc.NewClient("unix://"+d.SocketPath, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("csiharness: connect: %w", err)
	}
	d.Conn = conn
	d.Identity = csi.NewIdentityClient(conn)
	d.Controller = csi.NewControllerClient(conn)
	d.Node = csi.NewNodeClient(conn)
	var last error
	for {
		pctx, pcancel := context.WithTimeout(ctx, 5*time.Second)
		resp, err := d.Identity.Probe(pctx, &csi.ProbeRequest{})
		pcancel()
		switch {
		case err != nil:
			last = err
		case resp.GetReady() == nil || resp.GetReady().GetValue():
			return nil
		default:
			last = errors.New("Probe: not ready")
		}
		select {
		case <-d.done:
			return fmt.Errorf("csiharness: driver exited during start-up: %v", d.exitStatus())
		case <-ctx.Done():
			return fmt.Errorf("csiharness: driver not ready: %v (%w)", last, ctx.Err())
		case <-tick.C:
		}
	}
}

// PID returns the driver's process ID.
func (d *Driver) PID() int { return d.cmd.Process.Pid }

// Exited is closed when the driver process has exited.
func (d *Driver) Exited() <-chan struct{} { return d.done }

// Running reports whether the driver process is still running.
func (d *Driver) Running() bool {
	select {
	case <-d.done:
		return false
	default:
		return true
	}
}

// exitStatus describes how the process ended (call after done is closed).
func (d *Driver) exitStatus() string {
	if d.waitErr != nil {
		return d.waitErr.Error()
	}
	return "exit status 0"
}

// ResetPeakRSS makes the driver's peak resident set size its current one,
// so that PeakRSS then measures the peak of what runs next.
func (d *Driver) ResetPeakRSS() error {
	return os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", d.PID()), []byte("5"), 0)
}

// PeakRSS returns the driver's peak resident set size in bytes: VmHWM from
// /proc/PID/status while it runs, the kernel's maxrss once it has exited.
func (d *Driver) PeakRSS() (int64, error) {
	if d.Running() {
		v, err := ReadVmHWM(d.PID())
		if err == nil || d.Running() {
			return v, err
		}
	}
	<-d.done
	if ps := d.cmd.ProcessState; ps != nil {
		if ru, ok := ps.SysUsage().(*syscall.Rusage); ok {
			return ru.Maxrss * 1024, nil
		}
	}
	return 0, errors.New("csiharness: peak RSS unavailable")
}

// ReadVmHWM returns VmHWM (peak resident set size) of process pid in bytes.
func ReadVmHWM(pid int) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		line := s.Text()
		if !strings.HasPrefix(line, "VmHWM:") {
			continue
		}
		fields := strings.Fields(strings.TrimPrefix(line, "VmHWM:"))
		if len(fields) < 1 {
			break
		}
		kb, err := strconv.ParseInt(fields[0], 10, 64)
		if err != nil {
			return 0, err
		}
		return kb * 1024, nil
	}
	if err := s.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("csiharness: no VmHWM in /proc/%d/status", pid)
}

// Stop closes the connection, sends SIGTERM, waits up to StopTimeout and
// then kills the process (by its PID). It returns an error when the process
// had to be killed or exited with a failure status. Calling it again returns
// the first result.
func (d *Driver) Stop() error {
	d.stopOnce.Do(func() {
		if d.Conn != nil {
			d.Conn.Close()
		}
		if d.Running() {
			_ = d.cmd.Process.Signal(syscall.SIGTERM)
		}
		select {
		case <-d.done:
			if d.waitErr != nil {
				d.stopErr = fmt.Errorf("csiharness: driver exited: %v", d.waitErr)
			}
		case <-time.After(d.cfg.StopTimeout):
			_ = d.cmd.Process.Kill()
			<-d.done
			d.stopErr = fmt.Errorf("csiharness: driver did not stop within %v of SIGTERM; killed", d.cfg.StopTimeout)
		}
		d.closeLog()
		os.RemoveAll(d.sockDir)
	})
	return d.stopErr
}

func (d *Driver) closeLog() {
	if d.logFile != nil {
		d.logFile.Close()
		d.logFile = nil
	}
}

// LogTail returns at most n bytes of the end of the driver's output.
func (d *Driver) LogTail(n int) string { return d.log.tail(n) }

// Retries returns how many node calls the helpers have retried so far
// (after Aborted, Unavailable or an attempt's deadline).
func (d *Driver) Retries() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.retries
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	buf []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if len(t.buf) > t.max {
		t.buf = append([]byte(nil), t.buf[len(t.buf)-t.max:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) tail(n int) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	b := t.buf
	if len(b) > n {
		b = b[len(b)-n:]
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			b = b[i+1:]
		}
	}
	return string(b)
}

// retryable reports whether a node call should be retried the way the
// kubelet retries it.
func retryable(err error) bool {
	switch status.Code(err) {
	case codes.Aborted, codes.Unavailable, codes.DeadlineExceeded:
		return true
	}
	return false
}

// retry runs call with a fresh CallTimeout per attempt until it succeeds,
// fails with a non-retryable error, or ctx ends.
func (d *Driver) retry(ctx context.Context, call func(ctx context.Context) error) error {
	backoff := 10 * time.Millisecond
	for {
		actx, cancel := context.WithTimeout(ctx, d.cfg.CallTimeout)
		err := call(actx)
		cancel()
		if err == nil || !retryable(err) || ctx.Err() != nil {
			return err
		}
		if !d.Running() {
			return fmt.Errorf("%w (driver exited: %s)", err, d.exitStatus())
		}
		d.mu.Lock()
		d.retries++
		d.mu.Unlock()
		select {
		case <-ctx.Done():
			return err
		case <-time.After(backoff):
		}
		if backoff < 500*time.Millisecond {
			backoff *= 2
		}
	}
}
