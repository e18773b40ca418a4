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
	// rediss://: TLS for every node (a mix is refused); URL credentials as for redis://
	addrs, _, creds, err = parseStore("rediss://h1:7000,rediss://u:pw@h2:7001")
	if err != nil || len(addrs) != 2 || creds == nil || creds.TLS == nil || creds.Password != "pw" {
		t.Fatalf("%v %+v %v", addrs, creds, err)
	}
	if _, _, creds, err := parseStore("redis://h:1"); err != nil || creds != nil {
		t.Fatal("TLS without rediss://", creds, err)
	}
	for _, bad := range []string{"rediss://h:1,h:2", "rediss://h:1,redis://h:2", "unix:///tmp/s",
		"redis://h:1/x", "u:p@h:1", ""} {
		if _, _, _, err := parseStore(bad); err == nil {
			t.Fatalf("%q accepted", bad)
		}
	}
}

func TestAuthToken(t *testing.T) {
	os.Unsetenv("PERSONA_FRONT_AUTH_TOKEN")
	os.Unsetenv("PERSONA_AUTH_TOKEN")
	if tok, err := authToken("", os.LookupEnv); tok != "" || err != nil {
		t.Fatal(tok, err)
	}
	t.Setenv("PERSONA_AUTH_TOKEN", "tok")
	if tok, err := authToken("", os.LookupEnv); tok != "tok" || err != nil {
		t.Fatal(tok, err)
	}
	for _, blank := range []string{"", "  "} {
		t.Setenv("PERSONA_AUTH_TOKEN", blank)
		if _, err := authToken("", os.LookupEnv); err == nil {
			t.Fatalf("%q accepted", blank)
		}
	}
	dir := t.TempDir()
	file := filepath.Join(dir, "tok")
	_ = os.WriteFile(file, []byte(" secret\n"), 0o600)
	if tok, err := authToken(file, os.LookupEnv); tok != "secret" || err != nil {
		t.Fatal(tok, err)
	}
	_ = os.WriteFile(file, []byte("\n"), 0o600)
	if _, err := authToken(file, os.LookupEnv); err == nil {
		t.Fatal("empty file accepted")
	}
	t.Setenv("PERSONA_FRONT_AUTH_TOKEN", "x")
	if _, err := authToken("", os.LookupEnv); err == nil {
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
	if err := applyEnv(fs, func(k string) (string, bool) { v, ok := env[k]; return v, ok }); err != nil {
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
		err := applyEnv(fresh, func(n string) (string, bool) { return v, n == k })
		if err == nil || !strings.Contains(err.Error(), k) {
			t.Fatalf("%s=%s: %v", k, v, err)
		}
	}
}

// envOf: a lookup over a fixed environment (nothing of the test process's own).
func envOf(env map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := env[k]; return v, ok }
}

// touch makes empty files in a temporary directory: their paths.
func touch(t *testing.T, names ...string) []string {
	dir := t.TempDir()
	var out []string
	for _, n := range names {
		p := filepath.Join(dir, n)
		if err := os.WriteFile(p, nil, 0o600); err != nil {
			t.Fatal(err)
		}
		out = append(out, p)
	}
	return out
}

func printed(t *testing.T, args []string, env map[string]string) string {
	t.Helper()
	s, err := loadSettings(args, envOf(env))
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	if err := printSettings(&b, s); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

func TestPrintSettings(t *testing.T) {
	got := printed(t, []string{"-upstream", "127.0.0.1:50051", "-store", "h:1", "-print-settings"}, nil)
	want := `{"listen":"127.0.0.1:50052","upstream":"127.0.0.1:50051","store":["h:1"],"db":0,` +
		`"dim":0,"metrics_listen":"","max_batch":1000,"max_history":3,"max_id_bytes":256,` +
		`"version_cache_s":1,"deadline_margin_ms":2,"store_timeout_ms":1000,` +
		`"max_concurrent_rpcs":64,"tls":"plaintext","upstream_tls":false,"auth":false,` +
		`"upstream_conns":1,"drain_s":0,"grace_s":5,"served_log_rate":0.01,` +
		`"served_topic":"persona.served","kafka":"127.0.0.1:9092","models":""}` + "\n"
	if got != want {
		t.Fatalf("defaults:\n%s\nwant\n%s", got, want)
	}
	// a container's env and args: flags win over the variables; no secret printed
	files := touch(t, "s.pem", "s.key", "ca.pem")
	args := []string{"-listen", "0.0.0.0:50052", "-upstream", "localhost:50051",
		"-metrics-listen", "0.0.0.0:9104", "-max-history", "2", "-tls-cert", files[0],
		"-tls-key", files[1], "-tls-client-ca", files[2], "-upstream-tls-ca", files[2],
		"-print-settings"}
	env := map[string]string{"PERSONA_REDIS": "redis://user:pw@valkey:6379/3,valkey-2:6380",
		"PERSONA_DIM": "64", "PERSONA_MAX_BATCH": "500", "PERSONA_MAX_HISTORY": "1",
		"PERSONA_SERVE_MAX_ID_BYTES": "128", "PERSONA_VERSION_CACHE_S": "0.5",
		"PERSONA_DEADLINE_MARGIN_MS": "3", "PERSONA_STORE_TIMEOUT_MS": "250",
		"PERSONA_MAX_CONCURRENT_RPCS": "", "PERSONA_AUTH_TOKEN": "s3cret",
		"PERSONA_SERVE_PROCESSES": "2", "PERSONA_DRAIN_S": "5", "PERSONA_GRACE_S": "10",
		"PERSONA_SERVED_LOG_RATE": "0", "PERSONA_BOOTSTRAP": "kafka:9092",
		"PERSONA_MODELS": "/models"}
	got = printed(t, args, env)
	want = `{"listen":"0.0.0.0:50052","upstream":"localhost:50051",` +
		`"store":["valkey:6379","valkey-2:6380"],"db":3,"dim":64,"metrics_listen":"0.0.0.0:9104",` +
		`"max_batch":500,"max_history":2,"max_id_bytes":128,"version_cache_s":0.5,` +
		`"deadline_margin_ms":3,"store_timeout_ms":250,"max_concurrent_rpcs":0,"tls":"mTLS",` +
		`"upstream_tls":true,"auth":true,"upstream_conns":16,"drain_s":5,"grace_s":10,` +
		`"served_log_rate":0,"served_topic":"persona.served","kafka":"kafka:9092",` +
		`"models":"/models"}` + "\n"
	if got != want {
		t.Fatalf("container:\n%s\nwant\n%s", got, want)
	}
	// persona serve's limit is per process: 16 x PERSONA_SERVE_PROCESSES 2, unless given
	env["PERSONA_MAX_CONCURRENT_RPCS"] = "16"
	if got := printed(t, args[:len(args)-3], env); !strings.Contains(got,
		`"max_concurrent_rpcs":32,"tls":"mTLS","upstream_tls":false`) {
		t.Fatal(got)
	}
	given := append([]string{"-max-concurrent-rpcs", "16"}, args[:len(args)-3]...)
	if got := printed(t, given, env); !strings.Contains(got, `"max_concurrent_rpcs":16,`) {
		t.Fatal(got)
	}
	if got := printed(t, args[:len(args)-5], env); !strings.Contains(got, `"tls":"TLS",`) {
		t.Fatal(got)
	}
	// "0" is no limit too; the flag wins
	env["PERSONA_MAX_CONCURRENT_RPCS"] = "0"
	if got := printed(t, []string{"-upstream", "u:1"}, env); !strings.Contains(got, `"max_concurrent_rpcs":0,`) {
		t.Fatal(got)
	}
	got = printed(t, []string{"-upstream", "u:1", "-max-concurrent-rpcs", "8"}, env)
	if !strings.Contains(got, `"max_concurrent_rpcs":8,`) {
		t.Fatal(got)
	}
}

func TestSettingsRefused(t *testing.T) {
	f := touch(t, "c.pem", "k.pem", "ca.pem", "tok")
	base := []string{"-upstream", "u:1", "-store", "h:1"}
	for _, c := range []struct {
		args []string
		env  map[string]string
		want string
	}{
		{[]string{"-store", "h:1"}, nil, "-upstream and -store"},
		{[]string{"-tls-cert", f[0]}, nil, "-tls-cert and -tls-key go together"},
		{[]string{"-tls-key", f[1]}, nil, "-tls-cert and -tls-key go together"},
		{[]string{"-tls-client-ca", f[2]}, nil, "-tls-client-ca needs -tls-cert and -tls-key"},
		{[]string{"-upstream-tls-cert", f[0], "-upstream-tls-ca", f[2]}, nil,
			"-upstream-tls-cert and -upstream-tls-key go together"},
		{[]string{"-upstream-tls-cert", f[0], "-upstream-tls-key", f[1]}, nil,
			"-upstream-tls-cert and -upstream-tls-key need -upstream-tls-ca"},
		{[]string{"-upstream-tls-server-name", "x"}, nil, "-upstream-tls-server-name needs -upstream-tls-ca"},
		{[]string{"-tls-cert", f[0], "-tls-key", f[1] + ".gone"}, nil, "-tls-key: stat "},
		{[]string{"-upstream-tls-ca", filepath.Dir(f[2])}, nil, "-upstream-tls-ca: " + filepath.Dir(f[2]) + " is a directory"},
		{[]string{"-auth-token-file", f[3] + ".gone"}, nil, "-auth-token-file: stat "},
		{nil, map[string]string{"PERSONA_AUTH_TOKEN": " "}, "PERSONA_AUTH_TOKEN is set but empty"},
		{nil, map[string]string{"PERSONA_FRONT_AUTH_TOKEN": "x"}, "no longer read"},
		{nil, map[string]string{"PERSONA_REDIS_PASSWORD_FILE": "/nonexistent"}, "PERSONA_REDIS_PASSWORD_FILE: stat "},
		{[]string{"-max-concurrent-rpcs", "-1"}, nil, "-max-concurrent-rpcs"},
		{nil, map[string]string{"PERSONA_MAX_CONCURRENT_RPCS": "many"}, "PERSONA_MAX_CONCURRENT_RPCS"},
		{[]string{"-store", "rediss://h:1,redis://h:2"}, nil, "rediss:// (TLS) for some nodes only"},
		{[]string{"-upstream-conns", "0"}, nil, "-upstream-conns 0"},
		{nil, map[string]string{"PERSONA_SERVE_PROCESSES": "0"}, "PERSONA_SERVE_PROCESSES"},
		{[]string{"-upstream-conns", "4"}, map[string]string{"PERSONA_SERVE_PROCESSES": "two"}, "PERSONA_SERVE_PROCESSES"},
		{nil, map[string]string{"PERSONA_DRAIN_S": "-1"}, "PERSONA_DRAIN_S"},
		{[]string{"stray"}, nil, "unexpected argument"},
	} {
		args := c.args
		if c.want != "-upstream and -store" {
			args = append(append([]string{}, base...), c.args...)
		}
		_, err := loadSettings(args, envOf(c.env))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v %v: %v, want %q", c.args, c.env, err, c.want)
		}
	}
}
