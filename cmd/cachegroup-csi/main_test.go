package main

import (
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
