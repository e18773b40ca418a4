// Command persona-front is a gRPC front for persona serve: it answers GetEmbeddings on the
// nearline path by reading the Valkey / Redis store itself, and forwards every other call
// (and every GetEmbeddings it cannot answer exactly as Python would) to the upstream.
//
//	persona-front -listen 127.0.0.1:50052 -upstream 127.0.0.1:50051 -store 127.0.0.1:6379 -db 9
//	persona-front -upstream ... -store 10.0.0.1:7000,10.0.0.2:7000   # cluster seed nodes
//	persona-front ... -metrics-listen 0.0.0.0:9104                  # GET /metrics (Prometheus)
//	persona-front ... -tls-cert s.pem -tls-key s.key [-tls-client-ca ca.pem]  # TLS / mTLS
//	persona-front ... -print-settings   # the resolved settings as JSON; nothing dialled
package main

import (
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	_ "google.golang.org/grpc/encoding/gzip" // gzip-compressed calls, as Python accepts them

	"persona/front/go/front"
	"persona/front/go/metrics"
	"persona/front/go/resp"
)

func main() {
	s, err := loadSettings(os.Args[1:], os.LookupEnv)
	switch {
	case errors.Is(err, flag.ErrHelp):
		os.Exit(0)
	case errors.Is(err, errUsage): // the flag package said why
		os.Exit(2)
	case err != nil:
		fmt.Fprintf(os.Stderr, "persona-front: %v\n", err)
		os.Exit(2)
	}
	if s.printSettings {
		if err := printSettings(os.Stdout, s); err != nil {
			log.Fatalf("persona-front: %v", err)
		}
		return
	}
	run(s)
}

// refuse a setting at start (exit 2, as a bad flag).
func refuse(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "persona-front: "+format+"\n", args...)
	os.Exit(2)
}

// run reads the secrets and certificates the settings name, opens the store, dials the
// upstream and serves until SIGTERM / SIGINT.
func run(s *settings) {
	token, err := authToken(s.authTokenFile, s.lookup)
	if err != nil {
		refuse("%v", err)
	}
	auth, err := storeAuth(s)
	if err != nil {
		refuse("%v", err)
	}
	serverCreds, err := s.tls.serverCreds()
	if err != nil {
		refuse("%v", err)
	}
	upstreamCreds, err := s.tls.upstreamCreds()
	if err != nil {
		refuse("%v", err)
	}
	// a store that does not answer yet: every GetEmbeddings is forwarded (store_error) until
	// it does, rather than the pod's gRPC port staying down with the store
	var lastSaid time.Time
	st := resp.OpenLater(s.addrs, auth, s.dialTO, s.pool, func(err error) {
		if err == nil {
			log.Printf("persona-front: store reachable: GetEmbeddings answered here again")
			return
		}
		if time.Since(lastSaid) >= 30*time.Second {
			lastSaid = time.Now()
			log.Printf("persona-front: store not reachable yet (forwarding every call): %v", err)
		}
	})
	defer st.Close()
	conns := make([]*grpc.ClientConn, s.upstreamConns)
	for i := range conns {
		if conns[i], err = grpc.Dial(s.upstream, front.DialOptions(upstreamCreds)...); err != nil {
			log.Fatalf("persona-front: upstream: %v", err)
		}
	}
	upstream := front.NewConns(conns)
	defer upstream.Close()
	reg := &metrics.Registry{}
	f := front.New(upstream, st, front.Config{
		Limits:            front.Limits{MaxBatch: s.maxBatch, MaxHistory: s.maxHistory, MaxIDBytes: s.maxIDBytes},
		Dim:               s.dim,
		VersionTTL:        s.versionCache,
		HeadTTL:           s.headTTL,
		ModelsDir:         s.models,
		StoreBudget:       s.storeTimeout,
		AuthToken:         token,
		Margin:            s.margin,
		Metrics:           reg,
		MaxConcurrentRPCs: s.maxCalls,
		ServedLog:         s.served.config(),
	})
	lis, err := net.Listen("tcp", s.listen)
	if err != nil {
		log.Fatalf("persona-front: listen: %v", err)
	}
	metricsAddr := ""
	if s.metricsListen != "" {
		mlis, err := net.Listen("tcp", s.metricsListen)
		if err != nil {
			log.Fatalf("persona-front: metrics listen: %v", err)
		}
		metricsAddr = mlis.Addr().String()
		mux := http.NewServeMux()
		mux.Handle("/metrics", reg)
		hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go func() {
			if err := hs.Serve(mlis); err != nil && err != http.ErrServerClosed {
				log.Printf("persona-front: metrics: %v", err)
			}
		}()
		defer hs.Close()
	}
	opts := f.ServerOptions()
	if serverCreds != nil {
		opts = append(opts, grpc.Creds(serverCreds))
	}
	srv := grpc.NewServer(opts...)
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-stop
		f.Drain()        // health checks say NOT_SERVING from now on
		if s.drain > 0 { // keep answering while the endpoints drop the pod; a second signal ends it
			log.Printf("persona-front: draining for %v", s.drain)
			select {
			case <-time.After(s.drain):
			case <-stop:
			}
		}
		done := make(chan struct{})
		go func() { srv.GracefulStop(); close(done) }()
		select {
		case <-done:
		case <-time.After(s.grace):
			srv.Stop()
		}
	}()
	// the line tests and scripts wait for: the bound addresses, the listener's TLS mode
	line := fmt.Sprintf("{\"listen\": %q, \"cluster\": %v, \"store_open\": %v, \"tls\": %q",
		lis.Addr().String(), st.Cluster(), st.Open(), s.tls.mode())
	if metricsAddr != "" {
		line += fmt.Sprintf(", \"metrics\": %q", metricsAddr)
	}
	fmt.Println(line + "}")
	if err := srv.Serve(lis); err != nil {
		log.Fatalf("persona-front: %v", err)
	}
	log.Printf("persona-front: stopped (GetEmbeddings local %d, forwarded %d)",
		f.Local.Load(), f.Forwarded.Load())
	closeServedLog(f, s.served.rate > 0) // what it holds sent within a bound
}

// storeAuth: the store's credentials, as every persona command reads them
// (PERSONA_REDIS_USERNAME, PERSONA_REDIS_PASSWORD_FILE / PERSONA_REDIS_PASSWORD; those of
// a redis:// URL win, as services/store/client.py), and the database.
func storeAuth(s *settings) (resp.Auth, error) {
	user, _ := s.lookup("PERSONA_REDIS_USERNAME")
	password, _ := s.lookup("PERSONA_REDIS_PASSWORD")
	auth := resp.Auth{Username: user, Password: password, DB: s.db}
	if path, _ := s.lookup("PERSONA_REDIS_PASSWORD_FILE"); path != "" {
		b, err := os.ReadFile(path)
		if err != nil || strings.TrimSpace(string(b)) == "" {
			return auth, fmt.Errorf("PERSONA_REDIS_PASSWORD_FILE %s unreadable or empty", path)
		}
		auth.Password = strings.TrimSpace(string(b))
	}
	if s.urlAuth != nil {
		if s.urlAuth.Username != "" || s.urlAuth.Password != "" {
			auth.Username, auth.Password = s.urlAuth.Username, s.urlAuth.Password
		}
		auth.TLS = s.urlAuth.TLS
	}
	return auth, nil
}

// checkAuth: authToken's checks that read no file (the file must exist); whether a token
// is set. PERSONA_FRONT_AUTH_TOKEN, read by earlier fronts, is refused so that a deployment
// relying on it does not silently run without a token.
func checkAuth(file string, lookup func(string) (string, bool)) (bool, error) {
	if _, ok := lookup("PERSONA_FRONT_AUTH_TOKEN"); ok {
		return false, fmt.Errorf("PERSONA_FRONT_AUTH_TOKEN is no longer read: set PERSONA_AUTH_TOKEN" +
			" or -auth-token-file, as for persona serve")
	}
	if file != "" {
		return true, exists("-auth-token-file", file)
	}
	v, ok := lookup("PERSONA_AUTH_TOKEN")
	if ok && strings.TrimSpace(v) == "" {
		return false, fmt.Errorf("PERSONA_AUTH_TOKEN is set but empty: set the token, or unset the" +
			" variable to serve without one")
	}
	return ok, nil
}

// authToken is persona serve's bearer token, read from the same places
// (services/cli/serve_cmds.py _token): the file's (stripped; an empty file is refused),
// else PERSONA_AUTH_TOKEN's (set but blank is refused: it reads as "auth on" to whoever
// set it); "" when neither is given.
func authToken(file string, lookup func(string) (string, bool)) (string, error) {
	if _, err := checkAuth(file, lookup); err != nil {
		return "", err
	}
	if file != "" {
		b, err := os.ReadFile(file)
		if err != nil {
			return "", fmt.Errorf("-auth-token-file: %v", err)
		}
		t := strings.TrimSpace(string(b))
		if t == "" {
			return "", fmt.Errorf("%s is empty", file)
		}
		return t, nil
	}
	v, _ := lookup("PERSONA_AUTH_TOKEN")
	return v, nil
}

// parseStore splits "a:1,b:2" or "redis://[user:password@]a:1/9" into addresses, a
// database and the URL's credentials (nil when no URL carries any); creds.TLS is set for
// rediss:// (TLS: every address then, a mix is refused). Other schemes are refused.
func parseStore(s string) ([]string, int, *resp.Auth, error) {
	db := 0
	var out []string
	var creds *resp.Auth
	tlsNodes := 0
	for _, a := range strings.Split(s, ",") {
		a = strings.TrimSpace(a)
		if a == "" {
			continue
		}
		if !strings.Contains(a, "://") {
			if strings.ContainsAny(a, "@/") {
				return nil, 0, nil, fmt.Errorf("%q: give HOST:PORT or a redis:// URL", a)
			}
			out = append(out, a)
			continue
		}
		u, err := url.Parse(a)
		if err != nil {
			return nil, 0, nil, fmt.Errorf("%q: %v", a, err)
		}
		switch u.Scheme {
		case "rediss":
			tlsNodes++
		case "redis":
		default:
			return nil, 0, nil, fmt.Errorf("%q: scheme %q is not supported (redis://)", a, u.Scheme)
		}
		if u.User != nil {
			p, _ := u.User.Password()
			creds = &resp.Auth{Username: u.User.Username(), Password: p}
		}
		if path := strings.Trim(u.Path, "/"); path != "" {
			n, err := strconv.Atoi(path)
			if err != nil || n < 0 {
				return nil, 0, nil, fmt.Errorf("%q: database %q is not a number", a, path)
			}
			db = n
		}
		if u.Host == "" {
			return nil, 0, nil, fmt.Errorf("%q: no HOST:PORT", a)
		}
		out = append(out, u.Host)
	}
	if len(out) == 0 {
		return nil, 0, nil, fmt.Errorf("no address in %q", s)
	}
	if tlsNodes > 0 {
		if tlsNodes < len(out) {
			return nil, 0, nil, fmt.Errorf("%q: rediss:// (TLS) for some nodes only", s)
		}
		if creds == nil {
			creds = &resp.Auth{}
		}
		creds.TLS = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	return out, db, creds, nil
}
