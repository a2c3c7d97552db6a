package cachegroup

import (
	"context"
	"errors"
	"net"
	"strconv"
	"strings"

	"github.com/cachegroup/cachegroup/pkg/cachegroup/group"
)

// sourceFunc opens a member source once the member runs.
type sourceFunc func(context.Context) (group.Source, error)

// memberSource returns the configured source of members, or nil for a group
// of one.
func memberSource(cfg Config) (sourceFunc, error) {
	n := 0
	for _, s := range []string{strings.Join(cfg.Members, ","), cfg.MembersDNS, cfg.MembersService} {
		if s != "" {
			n++
		}
	}
	if n > 1 {
		return nil, errors.New("give one member source: --members, --members-dns or --members-service")
	}
	_, port, _ := net.SplitHostPort(cfg.PeerAddress)
	switch {
	case len(cfg.Members) > 0:
		st, err := group.ParseStatic(cfg.Members)
		if err != nil {
			return nil, err
		}
		if len(st) == 1 && st[0].Name == cfg.NodeID {
			return nil, nil // a group of one
		}
		return func(context.Context) (group.Source, error) { return st, nil }, nil
	case cfg.MembersDNS != "":
		if port == "" {
			return nil, errors.New("--members-dns needs --peer-address with a port")
		}
		return func(context.Context) (group.Source, error) {
			return group.DNS{Name: cfg.MembersDNS, Port: port}, nil
		}, nil
	case cfg.MembersService != "":
		p, err := strconv.Atoi(port)
		if err != nil {
			return nil, errors.New("--members-service needs --peer-address with a port")
		}
		return func(ctx context.Context) (group.Source, error) {
			return group.NewEndpointSlices(ctx, cfg.MembersService, p)
		}, nil
	}
	return nil, nil
}
