package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestMembershipFromDNS runs three members that find each other by a DNS
// name (--members-dns), as in Kubernetes through a headless Service's A
// records, and changes what the name resolves to while they run. The
// members resolve with the system resolver; each sees a hosts file of the
// test's as its /etc/hosts (in a mount namespace of its own), rewritten in
// place to add and remove addresses.
func TestMembershipFromDNS(t *testing.T) {
	cl := newCluster(t)
	a, b, c := cl.addHost("a"), cl.addHost("b"), cl.addHost("c")
	const name = "members.cachegroup.test"
	hosts := filepath.Join(cl.Dir, "hosts")
	resolve := func(ms ...*member) {
		t.Helper()
		text := "127.0.0.1 localhost\n"
		for _, m := range ms {
			text += fmt.Sprintf("%s %s\n", m.IP, name)
		}
		// WriteFile truncates in place: the members' /etc/hosts is a bind
		// mount of this inode.
		if err := os.WriteFile(hosts, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	resolve(a, b)
	for _, m := range []*member{a, b, c} {
		if err := m.UseHostsFile(hosts); err != nil {
			t.Fatal(err)
		}
		// A grace period of a second: a member the name drops leaves at once
		// (a member missing from its source keeps its place that long).
		if err := m.Start(context.Background(), "", cl.Secret, "--members-dns="+name, "--member-grace-period=1s"); err != nil {
			t.Fatal(err)
		}
	}
	// C is not in the name yet: A and B are a group of two.
	waitMembers(t, 2, a, b)
	waitLive(t, 2, a, b)

	// The name gains C's address: everyone picks it up while running, and
	// knows C by its node name, which C says in its health answer.
	resolve(a, b, c)
	waitMembers(t, 3, a, b, c)
	waitLive(t, 3, a, b, c)
	log, err := os.ReadFile(a.LogPath)
	if err != nil {
		t.Fatal(err)
	}
	if want := `members=["node-a","node-b","node-c"]`; !strings.Contains(string(log), want) {
		t.Fatalf("A's log never lists the members by node name (%s)", want)
	}

	// The name loses B's address: A and C drop B though it still runs.
	resolve(a, c)
	waitMembers(t, 2, a, c)
	if !b.running() {
		t.Fatal("B stopped: the change must come from DNS alone")
	}
}
