// Command cachegroupctl is the operator's tool of a cache group: it asks a
// member, over the group's authenticated peer protocol, how the group is
// (status, volumes), seeds a volume from a directory or a tarball (import),
// copies one out (export), warms a node ahead of a burst of builds (warm)
// and re-hashes a member's store (verify). It needs one member's peer
// address only (a `kubectl port-forward` to a member pod does), and the
// group's secret file or certificates, as the members read them.
//
// Installed as kubectl-cachegroup it is also `kubectl cachegroup`.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/volume"
	"github.com/cachegroup/cachegroup/pkg/cachegroup/wire"
)

// version is the tool's version, set at build time.
var version = "dev"

// options are the flags every command takes.
type options struct {
	address, member, as       string
	secretFile, cert, key, ca string
	output                    string
	timeout                   time.Duration
	snapshot                  string // export: a snapshot instead of the head
	all                       bool   // verify, gc: every member
	dryRun                    bool   // gc: find the garbage, delete nothing
	showVersion               bool
}

// command is one of the tool's commands.
type command struct {
	args  string // its positional arguments, for the usage
	about string
	run   func(ctx context.Context, t *tool, args []string) error
	nargs [2]int // least and most positional arguments
}

var commands = map[string]command{
	"status":  {"", "the members: liveness, weight, store use, owned bytes, blobs below R, outbox", runStatus, [2]int{0, 0}},
	"volumes": {"", "the volumes: name, size against quota, files, generation, last commit, snapshots", runVolumes, [2]int{0, 0}},
	"import":  {"DIR|TARBALL|- VOLUME", "seed VOLUME from a directory or a tar stream, as one commit", runImport, [2]int{2, 2}},
	"export":  {"VOLUME DIR|-", "copy VOLUME's head (or --snapshot's) to a directory, or as a tar stream to stdout", runExport, [2]int{2, 2}},
	"warm":    {"NODE VOLUME", "hydrate VOLUME's head on member NODE ahead of a burst of builds", runWarm, [2]int{2, 2}},
	"verify":  {"[MEMBER]", "re-hash a member's store (default: the one reached; --all: every one), repairing bad copies", runVerify, [2]int{0, 1}},
	"gc":      {"[MEMBER]", "collect a member's garbage now (--all: every one's; --dry-run: only find it)", runCollect, [2]int{0, 1}},
}

// order is the order commands are listed in.
var order = []string{"status", "volumes", "import", "export", "warm", "verify", "gc"}

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", name(), err)
		var ue usageError
		if errors.As(err, &ue) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

// name is how the tool was called: "kubectl cachegroup" as a plugin.
func name() string {
	if b := filepath.Base(os.Args[0]); strings.HasPrefix(b, "kubectl-") {
		return "kubectl " + strings.TrimPrefix(b, "kubectl-")
	}
	return "cachegroupctl"
}

// usageError is a command line the tool cannot run.
type usageError struct{ error }

// flags returns the flag set of every command, filling o.
func flags(o *options) *flag.FlagSet {
	fs := flag.NewFlagSet(name(), flag.ContinueOnError)
	env := func(k, def string) string {
		if v := os.Getenv(k); v != "" {
			return v
		}
		return def
	}
	fs.StringVar(&o.address, "address", env("CACHEGROUP_ADDRESS", "127.0.0.1:7600"), "HOST:PORT of a member's peer protocol (e.g. a kubectl port-forward to a member pod); $CACHEGROUP_ADDRESS")
	fs.StringVar(&o.member, "member", "", "the name of the member at --address (default: asked)")
	fs.StringVar(&o.as, "as", "", "the name this tool signs as (default: cachegroupctl, or the common name of --tls-cert)")
	fs.StringVar(&o.secretFile, "secret-file", env("CACHEGROUP_SECRET_FILE", ""), "the group's shared secret file, as the members read it; $CACHEGROUP_SECRET_FILE")
	fs.StringVar(&o.cert, "tls-cert", env("CACHEGROUP_TLS_CERT", ""), "certificate for mutual TLS with the members, signed by the group's CA")
	fs.StringVar(&o.key, "tls-key", env("CACHEGROUP_TLS_KEY", ""), "key of --tls-cert")
	fs.StringVar(&o.ca, "tls-ca", env("CACHEGROUP_TLS_CA", ""), "the group's CA")
	fs.StringVar(&o.output, "o", "table", "output: table or json")
	fs.DurationVar(&o.timeout, "timeout", 10*time.Minute, "bound on the whole command")
	fs.StringVar(&o.snapshot, "snapshot", "", "export: the snapshot (name or id) to export instead of the volume's head")
	fs.BoolVar(&o.all, "all", false, "verify, gc: every member's store, one after the other")
	fs.BoolVar(&o.dryRun, "dry-run", false, "gc: find the garbage and delete nothing")
	fs.BoolVar(&o.showVersion, "version", false, "print the version and exit")
	fs.Usage = func() {
		w := fs.Output()
		fmt.Fprintf(w, "usage: %s COMMAND [ARGS] [FLAGS]\n\ncommands:\n", name())
		for _, c := range order {
			fmt.Fprintf(w, "  %-8s %-22s %s\n", c, commands[c].args, commands[c].about)
		}
		fmt.Fprintf(w, "\nflags (anywhere on the line):\n")
		fs.PrintDefaults()
	}
	return fs
}

// parse reads flags and positional arguments in any order.
func parse(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		if args[0] == "--" {
			return append(pos, args[1:]...), nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

// run runs the command line args, writing what it answers to out.
func run(args []string, out io.Writer) error {
	var o options
	fs := flags(&o)
	pos, err := parse(fs, args)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return usageError{err}
	}
	if o.showVersion {
		fmt.Fprintln(out, version)
		return nil
	}
	if len(pos) == 0 {
		fs.Usage()
		return usageError{errors.New("no command")}
	}
	c, ok := commands[pos[0]]
	if !ok {
		return usageError{fmt.Errorf("unknown command %q (commands: %s)", pos[0], strings.Join(order, ", "))}
	}
	if n := len(pos) - 1; n < c.nargs[0] || n > c.nargs[1] {
		return usageError{fmt.Errorf("usage: %s %s %s", name(), pos[0], c.args)}
	}
	if o.output != "table" && o.output != "json" {
		return usageError{fmt.Errorf("-o %q: want table or json", o.output)}
	}
	ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
	defer cancel()
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	t, err := connect(ctx, o, out)
	if err != nil {
		return err
	}
	return c.run(ctx, t, pos[1:])
}

// tool is a command's connection to the member reached and its output.
type tool struct {
	o      options
	member *wire.Client
	out    io.Writer
}

// connect reads the group's credentials and learns the name of the member
// at the address.
func connect(ctx context.Context, o options, out io.Writer) (*tool, error) {
	auth, err := wire.NewAuth(o.secretFile, o.cert, o.key, o.ca)
	if err != nil {
		return nil, fmt.Errorf("credentials: %w", err)
	}
	if o.as == "" {
		o.as = "cachegroupctl"
		if o.cert != "" {
			if o.as, err = certName(o.cert, o.key); err != nil {
				return nil, err
			}
		}
	}
	if err := volume.CheckMemberName(o.as); err != nil {
		return nil, usageError{fmt.Errorf("--as: %w", err)}
	}
	if o.member == "" {
		hctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		h, err := wire.NewClient("", o.address, o.as, auth).Health(hctx)
		cancel()
		if err != nil {
			return nil, fmt.Errorf("reach a member at %s: %w", o.address, err)
		}
		o.member = h.Name
	}
	if err := volume.CheckMemberName(o.member); err != nil {
		return nil, fmt.Errorf("the member at %s: %w", o.address, err)
	}
	return &tool{o: o, member: wire.NewClient(o.member, o.address, o.as, auth), out: out}, nil
}

// certName is the name a member knows the holder of certificate file cert
// by: its common name, or its first DNS name.
func certName(cert, key string) (string, error) {
	pair, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		return "", fmt.Errorf("--tls-cert: %w", err)
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return "", fmt.Errorf("--tls-cert: %w", err)
	}
	if leaf.Subject.CommonName != "" {
		return leaf.Subject.CommonName, nil
	}
	if len(leaf.DNSNames) > 0 {
		return leaf.DNSNames[0], nil
	}
	return "", errors.New("--tls-cert names nobody: give --as")
}

// json writes v as indented JSON.
func (t *tool) json(v any) error {
	e := json.NewEncoder(t.out)
	e.SetIndent("", "  ")
	return e.Encode(v)
}

// volumeID takes a volume's id, or its name (the PV's name).
func volumeID(s string) string {
	if volume.CheckVolumeID(s) == nil {
		return s
	}
	return volume.ID(s)
}
