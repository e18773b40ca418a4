package main

import (
	"os"
	"path/filepath"
	"testing"
)

func TestParseStore(t *testing.T) {
	addrs, db, creds, err := parseStore("redis://user:p%40ss@h1:7000/9, h2:7001")
	if err != nil || len(addrs) != 2 || addrs[0] != "h1:7000" || addrs[1] != "h2:7001" || db != 9 ||
		creds == nil || creds.Username != "user" || creds.Password != "p@ss" {
		t.Fatalf("%v %d %+v %v", addrs, db, creds, err)
	}
	if _, _, creds, err := parseStore("redis://:pw@h:1"); err != nil || creds.Password != "pw" || creds.Username != "" {
		t.Fatal(creds, err)
	}
	if _, _, creds, err := parseStore("h:1,h:2"); err != nil || creds != nil {
		t.Fatal(creds, err)
	}
	for _, bad := range []string{"rediss://h:1", "unix:///tmp/s", "redis://h:1/x", "u:p@h:1", ""} {
		if _, _, _, err := parseStore(bad); err == nil {
			t.Fatalf("%q accepted", bad)
		}
	}
}

func TestAuthToken(t *testing.T) {
	os.Unsetenv("PERSONA_FRONT_AUTH_TOKEN")
	os.Unsetenv("PERSONA_AUTH_TOKEN")
	if tok, err := authToken(""); tok != "" || err != nil {
		t.Fatal(tok, err)
	}
	t.Setenv("PERSONA_AUTH_TOKEN", "tok")
	if tok, err := authToken(""); tok != "tok" || err != nil {
		t.Fatal(tok, err)
	}
	for _, blank := range []string{"", "  "} {
		t.Setenv("PERSONA_AUTH_TOKEN", blank)
		if _, err := authToken(""); err == nil {
			t.Fatalf("%q accepted", blank)
		}
	}
	dir := t.TempDir()
	file := filepath.Join(dir, "tok")
	_ = os.WriteFile(file, []byte(" secret\n"), 0o600)
	if tok, err := authToken(file); tok != "secret" || err != nil {
		t.Fatal(tok, err)
	}
	_ = os.WriteFile(file, []byte("\n"), 0o600)
	if _, err := authToken(file); err == nil {
		t.Fatal("empty file accepted")
	}
	t.Setenv("PERSONA_FRONT_AUTH_TOKEN", "x")
	if _, err := authToken(""); err == nil {
		t.Fatal("the old variable accepted")
	}
}
