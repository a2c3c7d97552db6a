package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/cachegroup/cachegroup/internal/cluster"
)

// rawHelper is the first argument that makes the benchmark program a raw
// network sender or receiver (run inside a host's network namespace through
// nsenter) instead of the benchmark: the baseline that hydration across
// namespaces is measured against.
const rawHelper = "__cgbench-raw"

// rawResult is what a receiver reports when every connection has ended.
type rawResult struct {
	Bytes int64   `json:"bytes"`
	Files int     `json:"files"`
	Secs  float64 `json:"secs"` // first accept to last byte written
	Err   string  `json:"err,omitempty"`
}

// rawMain runs the helper: "recv" or "send", with flags.
func rawMain(args []string) int {
	if len(args) < 1 {
		fmt.Fprintln(os.Stderr, "usage: "+rawHelper+" recv|send [flags]")
		return 2
	}
	var err error
	switch args[0] {
	case "recv":
		err = rawRecv(args[1:])
	case "send":
		err = rawSend(args[1:])
	default:
		err = fmt.Errorf("unknown mode %q", args[0])
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s %s: %v\n", rawHelper, args[0], err)
		return 1
	}
	return 0
}

// rawRecv listens, prints "ready", accepts -conns connections and reads
// each to its end: in stream mode discarding the bytes, in files mode
// writing every framed file below -dir. It then prints a rawResult as JSON.
func rawRecv(args []string) error {
	fs := flag.NewFlagSet("recv", flag.ContinueOnError)
	listen := fs.String("listen", "", "HOST:PORT to listen on")
	conns := fs.Int("conns", 1, "connections to accept")
	mode := fs.String("mode", "stream", "stream or files")
	dir := fs.String("dir", "", "files mode: where the files go")
	timeout := fs.Duration("timeout", 15*time.Minute, "give up after this long")
	if err := fs.Parse(args); err != nil {
		return err
	}
	l, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	defer l.Close()
	time.AfterFunc(*timeout, func() {
		fmt.Fprintf(os.Stderr, "%s recv: timed out after %v\n", rawHelper, *timeout)
		os.Exit(3)
	})
	fmt.Println("ready")
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		res   rawResult
		errs  []error
		start time.Time
		dirs  = map[string]bool{}
	)
	mkdir := func(d string) error {
		mu.Lock()
		done := dirs[d]
		mu.Unlock()
		if done {
			return nil
		}
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
		mu.Lock()
		dirs[d] = true
		mu.Unlock()
		return nil
	}
	for i := 0; i < *conns; i++ {
		c, err := l.Accept()
		if err != nil {
			return err
		}
		if i == 0 {
			start = time.Now()
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer c.Close()
			var (
				n     int64
				files int
				err   error
			)
			if *mode == "files" {
				n, files, err = recvFiles(c, *dir, mkdir)
			} else {
				n, err = recvStream(c)
			}
			mu.Lock()
			res.Bytes += n
			res.Files += files
			if err != nil {
				errs = append(errs, err)
			}
			mu.Unlock()
		}()
	}
	wg.Wait()
	res.Secs = time.Since(start).Seconds()
	if err := errors.Join(errs...); err != nil {
		res.Err = err.Error()
	}
	return json.NewEncoder(os.Stdout).Encode(res)
}

func recvStream(c net.Conn) (int64, error) {
	buf := make([]byte, 1<<20)
	var n int64
	for {
		k, err := c.Read(buf)
		n += int64(k)
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return n, err
		}
	}
}

// recvFiles reads frames (path length u32, path, size u64, bytes; a zero
// path length ends the stream) and writes each file below dir.
func recvFiles(c net.Conn, dir string, mkdir func(string) error) (int64, int, error) {
	r := bufio.NewReaderSize(c, 1<<20)
	var (
		n     int64
		files int
		hdr   [8]byte
	)
	for {
		if _, err := io.ReadFull(r, hdr[:4]); err != nil {
			return n, files, err
		}
		plen := binary.BigEndian.Uint32(hdr[:4])
		if plen == 0 {
			return n, files, nil
		}
		name := make([]byte, plen)
		if _, err := io.ReadFull(r, name); err != nil {
			return n, files, err
		}
		if _, err := io.ReadFull(r, hdr[:8]); err != nil {
			return n, files, err
		}
		size := int64(binary.BigEndian.Uint64(hdr[:8]))
		rel := filepath.Clean(string(name))
		if filepath.IsAbs(rel) || strings.HasPrefix(rel, "..") {
			return n, files, fmt.Errorf("bad path %q", name)
		}
		p := filepath.Join(dir, rel)
		if err := mkdir(filepath.Dir(p)); err != nil {
			return n, files, err
		}
		f, err := os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
		if err != nil {
			return n, files, err
		}
		k, err := io.CopyN(f, r, size)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		n += k
		if err != nil {
			return n, files, err
		}
		files++
	}
}

// rawSend connects to -to and sends: in stream mode -bytes bytes from a
// buffer, in files mode every -parts-th file (from -part) of the list in
// -list, read from below -root, framed for recvFiles (file bytes by
// sendfile, as the driver serves blobs).
func rawSend(args []string) error {
	fs := flag.NewFlagSet("send", flag.ContinueOnError)
	to := fs.String("to", "", "HOST:PORT to send to")
	mode := fs.String("mode", "stream", "stream or files")
	total := fs.Int64("bytes", 0, "stream mode: bytes to send")
	root := fs.String("root", "", "files mode: the tree the list is relative to")
	list := fs.String("list", "", "files mode: file of relative paths, one a line")
	part := fs.Int("part", 0, "files mode: this sender's share")
	parts := fs.Int("parts", 1, "files mode: number of senders")
	if err := fs.Parse(args); err != nil {
		return err
	}
	c, err := net.Dial("tcp", *to)
	if err != nil {
		return err
	}
	defer c.Close()
	if *mode == "stream" {
		buf := make([]byte, 1<<20)
		for i := range buf {
			buf[i] = byte(i*131 + i>>8)
		}
		for left := *total; left > 0; {
			k := min(int64(len(buf)), left)
			if _, err := c.Write(buf[:k]); err != nil {
				return err
			}
			left -= k
		}
		return c.(*net.TCPConn).CloseWrite()
	}
	data, err := os.ReadFile(*list)
	if err != nil {
		return err
	}
	tc := c.(*net.TCPConn)
	var hdr []byte
	for i, rel := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		if i%*parts != *part || rel == "" {
			continue
		}
		f, err := os.Open(filepath.Join(*root, rel))
		if err != nil {
			return err
		}
		fi, err := f.Stat()
		if err != nil {
			f.Close()
			return err
		}
		hdr = binary.BigEndian.AppendUint32(hdr[:0], uint32(len(rel)))
		hdr = append(hdr, rel...)
		hdr = binary.BigEndian.AppendUint64(hdr, uint64(fi.Size()))
		if _, err := tc.Write(hdr); err != nil {
			f.Close()
			return err
		}
		n, err := tc.ReadFrom(io.LimitReader(f, fi.Size())) // sendfile
		f.Close()
		if err == nil && n != fi.Size() {
			err = fmt.Errorf("%s: sent %d of %d bytes", rel, n, fi.Size())
		}
		if err != nil {
			return err
		}
	}
	if _, err := tc.Write([]byte{0, 0, 0, 0}); err != nil {
		return err
	}
	return tc.CloseWrite()
}

// rawTransfer runs a receiver on to and one sender on each of from (each
// inside its host's network namespace) and returns what the receiver got and
// the wall time from the senders' start to the receiver's end. sendArgs
// gives sender i its flags.
func rawTransfer(ctx context.Context, to *cluster.Member, from []*cluster.Member, recvArgs []string, sendArgs func(i int) []string) (rawResult, time.Duration, error) {
	self, err := os.Executable()
	if err != nil {
		return rawResult{}, 0, err
	}
	ctx, cancel := context.WithTimeout(ctx, 20*time.Minute)
	defer cancel()
	addr := fmt.Sprintf("%s:%d", to.IP, rawPort)
	recv := to.Exec(ctx, self, append([]string{rawHelper, "recv", "-listen=" + addr, fmt.Sprintf("-conns=%d", len(from))}, recvArgs...)...)
	var stderr strings.Builder
	recv.Stderr = &stderr
	out, err := recv.StdoutPipe()
	if err != nil {
		return rawResult{}, 0, err
	}
	if err := recv.Start(); err != nil {
		return rawResult{}, 0, err
	}
	defer recv.Wait()
	defer cancel() // kills the receiver if it is still running
	sc := bufio.NewScanner(out)
	if !sc.Scan() || sc.Text() != "ready" {
		return rawResult{}, 0, fmt.Errorf("raw receiver on %s did not start: %s", to.Name, strings.TrimSpace(stderr.String()))
	}
	start := time.Now()
	errc := make(chan error, len(from))
	for i, m := range from {
		go func() {
			cmd := m.Exec(ctx, self, append([]string{rawHelper, "send", "-to=" + addr}, sendArgs(i)...)...)
			if b, err := cmd.CombinedOutput(); err != nil {
				errc <- fmt.Errorf("raw sender on %s: %v: %s", m.Name, err, strings.TrimSpace(string(b)))
				return
			}
			errc <- nil
		}()
	}
	var errs []error
	for range from {
		if err := <-errc; err != nil {
			errs = append(errs, err)
			cancel()
		}
	}
	if err := errors.Join(errs...); err != nil {
		return rawResult{}, 0, err
	}
	var res rawResult
	if !sc.Scan() {
		return rawResult{}, 0, fmt.Errorf("raw receiver on %s: no result: %s", to.Name, strings.TrimSpace(stderr.String()))
	}
	took := time.Since(start)
	if err := json.Unmarshal(sc.Bytes(), &res); err != nil {
		return rawResult{}, 0, fmt.Errorf("raw receiver on %s: %v: %q", to.Name, err, sc.Text())
	}
	if res.Err != "" {
		return res, took, fmt.Errorf("raw receiver on %s: %s", to.Name, res.Err)
	}
	return res, took, nil
}

// rawPort is the port the raw receiver listens on.
const rawPort = 7700
