package wire

import (
	"os"
	"path/filepath"
	"testing"
)

func TestNewAuthNeedsCredentials(t *testing.T) {
	if _, err := NewAuth("", "", "", ""); err == nil {
		t.Fatal("no secret and no TLS accepted")
	}
	short := filepath.Join(t.TempDir(), "secret")
	os.WriteFile(short, []byte("short"), 0o600)
	if _, err := NewAuth(short, "", "", ""); err == nil {
		t.Fatal("a 5-byte secret accepted")
	}
}
