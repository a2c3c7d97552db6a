package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// build builds the driver binary with its version set as the Makefile sets it.
func build(t *testing.T, version string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "cachegroup-csi")
	out, err := exec.Command("go", "build", "-o", bin,
		"-ldflags", "-X github.com/cachegroup/cachegroup/pkg/driver.Version="+version, ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

// TestVersionAndSizeFlags runs the binary: --version prints the version set at
// build time and exits before starting anything; size flags take Kubernetes
// quantities (1.5Gi) and refuse what is not a whole number of bytes.
func TestVersionAndSizeFlags(t *testing.T) {
	bin := build(t, "v9.8.7-test")
	out, err := exec.Command(bin, "--version").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "cachegroup-csi v9.8.7-test" {
		t.Errorf("--version: %q, %v", out, err)
	}
	if out, err := exec.Command(bin, "--cache-size=1.5Gi", "--free-floor=512Mi", "--version").CombinedOutput(); err != nil {
		t.Errorf("--cache-size=1.5Gi: %v\n%s", err, out)
	}
	out, err = exec.Command(bin, "--cache-size=1.5", "--version").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "whole number of bytes") {
		t.Errorf("--cache-size=1.5: %v\n%s", err, out)
	}
}

// The container's memory limit is found on cgroup v2 and v1, at the
// cgroup's own path or at the top of the mount; no limit is none.
func TestContainerMemory(t *testing.T) {
	root := t.TempDir()
	write := func(path, text string) {
		t.Helper()
		p := filepath.Join(root, path)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(text+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("kubepods/pod1/c1/memory.max", "268435456")
	write("memory/kubepods/pod2/memory.limit_in_bytes", "536870912")
	write("memory/unlimited/memory.limit_in_bytes", "9223372036854771712")
	write("nolimit/memory.max", "max")
	for _, c := range []struct {
		cgroups string
		want    int64
	}{
		{"0::/kubepods/pod1/c1\n", 256 << 20},
		{"12:pids:/x\n4:memory:/kubepods/pod2\n0::/\n", 512 << 20},
		{"4:memory:/unlimited\n", 0},
		{"0::/nolimit\n", 0},
		{"", 0},
	} {
		got, ok := containerMemory(root, []byte(c.cgroups))
		if got != c.want || ok != (c.want > 0) {
			t.Errorf("cgroups %q: %d, %v; want %d", c.cgroups, got, ok, c.want)
		}
	}
	// A container that sees its own cgroup at the top of the mount.
	write("memory.max", "1073741824")
	if got, ok := containerMemory(root, []byte("0::/\n")); !ok || got != 1<<30 {
		t.Errorf("at the top: %d, %v; want 1 GiB", got, ok)
	}
}
