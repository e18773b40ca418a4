package main

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
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

func TestApplyEnv(t *testing.T) {
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	batch := fs.Int("max-batch", 1000, "")
	hist := fs.Int("max-history", 3, "")
	cache := fs.Duration("version-cache", time.Second, "")
	margin := fs.Duration("deadline-margin", 2*time.Millisecond, "")
	store := fs.String("store", "", "")
	for _, name := range []string{"dim", "max-id-bytes"} {
		fs.Int(name, 0, "")
	}
	if err := fs.Parse([]string{"-max-history", "2"}); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{"PERSONA_MAX_BATCH": " 500 ", "PERSONA_MAX_HISTORY": "1",
		"PERSONA_VERSION_CACHE_S": "0.25", "PERSONA_DEADLINE_MARGIN_MS": "5",
		"PERSONA_REDIS": "redis://h:1/9"}
	if err := applyEnv(fs, func(k string) string { return env[k] }); err != nil {
		t.Fatal(err)
	}
	// the flag given wins over the variable; the others come from the environment
	if *batch != 500 || *hist != 2 || *cache != 250*time.Millisecond ||
		*margin != 5*time.Millisecond || *store != "redis://h:1/9" {
		t.Fatal(*batch, *hist, *cache, *margin, *store)
	}
	for k, v := range map[string]string{"PERSONA_MAX_BATCH": "many", "PERSONA_VERSION_CACHE_S": "-1"} {
		fresh := flag.NewFlagSet("t", flag.ContinueOnError)
		fresh.Int("max-batch", 1000, "")
		fresh.Duration("version-cache", time.Second, "")
		err := applyEnv(fresh, func(n string) string {
			if n == k {
				return v
			}
			return ""
		})
		if err == nil || !strings.Contains(err.Error(), k) {
			t.Fatalf("%s=%s: %v", k, v, err)
		}
	}
}
