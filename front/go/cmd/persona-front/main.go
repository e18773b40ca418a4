// Command persona-front is a gRPC front for persona serve: it answers GetEmbeddings on the
// nearline path by reading the Valkey / Redis store itself, and forwards every other call
// (and every GetEmbeddings it cannot answer exactly as Python would) to the upstream.
//
//	persona-front -listen 127.0.0.1:50052 -upstream 127.0.0.1:50051 -store 127.0.0.1:6379 -db 9
//	persona-front -upstream ... -store 10.0.0.1:7000,10.0.0.2:7000   # cluster seed nodes
//	persona-front ... -metrics-listen 0.0.0.0:9104                  # GET /metrics (Prometheus)
package main

import (
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
	listen := flag.String("listen", "127.0.0.1:50052", "where the front listens (HOST:PORT)")
	upstream := flag.String("upstream", "", "the Python persona serve (HOST:PORT)")
	storeAddrs := flag.String("store", "", "Valkey / Redis: one node or cluster seed nodes, "+
		"comma-separated HOST:PORT (a redis://HOST:PORT/DB URL is accepted too)")
	db := flag.Int("db", 0, "database to SELECT on a single node")
	maxBatch := flag.Int("max-batch", 1000, "user ids per GetEmbeddings (as persona serve's)")
	maxHistory := flag.Int("max-history", 3, "history_depth at most (as persona serve's)")
	maxIDBytes := flag.Int("max-id-bytes", 256, "UTF-8 bytes of one user id (as persona serve's)")
	dim := flag.Int("dim", 0, "served dimension (0: learnt from the upstream's answers)")
	versionCache := flag.Duration("version-cache", time.Second,
		"active version and states cached this long (persona serve's version_cache_s)")
	headTTL := flag.Duration("head-ttl", time.Minute,
		"whether a version has a short-term head, as learnt from upstream answers, is believed this long")
	storeTimeout := flag.Duration("store-timeout", time.Second, "longest store read")
	grace := flag.Duration("grace", 5*time.Second, "in-flight calls may finish this long on SIGTERM")
	metricsListen := flag.String("metrics-listen", "",
		"serve GET /metrics (Prometheus text format) on HOST:PORT (empty: off)")
	authTokenFile := flag.String("auth-token-file", "",
		"file holding the bearer token clients must send (or env PERSONA_AUTH_TOKEN), as persona serve's")
	margin := flag.Duration("deadline-margin", 2*time.Millisecond,
		"kept back from a call's deadline for the store read (persona serve's deadline_margin_s)")
	poolSize := flag.Int("store-pool", 64, "connections to one store node at most")
	dialTimeout := flag.Duration("store-dial-timeout", 2*time.Second,
		"longest connect + AUTH / SELECT to a store node (a call's deadline cuts it shorter)")
	flag.Parse()
	if err := applyEnv(flag.CommandLine, os.Getenv); err != nil {
		fmt.Fprintf(os.Stderr, "persona-front: %v\n", err)
		os.Exit(2)
	}
	if *upstream == "" || *storeAddrs == "" {
		fmt.Fprintln(os.Stderr, "persona-front: -upstream and -store (or PERSONA_REDIS) are required")
		os.Exit(2)
	}
	token, err := authToken(*authTokenFile)
	if err != nil {
		log.Fatalf("persona-front: %v", err)
	}
	addrs, urlDB, urlAuth, err := parseStore(*storeAddrs)
	if err != nil {
		log.Fatalf("persona-front: -store: %v", err)
	}
	if *db == 0 {
		*db = urlDB
	}
	auth := resp.Auth{Username: os.Getenv("PERSONA_REDIS_USERNAME"),
		Password: os.Getenv("PERSONA_REDIS_PASSWORD"), DB: *db}
	if path := os.Getenv("PERSONA_REDIS_PASSWORD_FILE"); path != "" {
		b, err := os.ReadFile(path)
		if err != nil || strings.TrimSpace(string(b)) == "" {
			log.Fatalf("persona-front: PERSONA_REDIS_PASSWORD_FILE %s unreadable or empty", path)
		}
		auth.Password = strings.TrimSpace(string(b))
	}
	if urlAuth != nil { // as services/store/client.py: credentials in the URL win
		auth.Username, auth.Password = urlAuth.Username, urlAuth.Password
	}
	st, err := resp.Open(addrs, auth, *dialTimeout, *poolSize)
	if err != nil {
		log.Fatalf("persona-front: store: %v", err)
	}
	defer st.Close()
	conn, err := grpc.Dial(*upstream, front.DialOptions()...)
	if err != nil {
		log.Fatalf("persona-front: upstream: %v", err)
	}
	defer conn.Close()
	reg := &metrics.Registry{}
	f := front.New(conn, st, front.Config{
		Limits:      front.Limits{MaxBatch: *maxBatch, MaxHistory: *maxHistory, MaxIDBytes: *maxIDBytes},
		Dim:         *dim,
		VersionTTL:  *versionCache,
		HeadTTL:     *headTTL,
		StoreBudget: *storeTimeout,
		AuthToken:   token,
		Margin:      *margin,
		Metrics:     reg,
	})
	lis, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatalf("persona-front: listen: %v", err)
	}
	metricsAddr := ""
	if *metricsListen != "" {
		mlis, err := net.Listen("tcp", *metricsListen)
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
	srv := grpc.NewServer(f.ServerOptions()...)
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-stop
		done := make(chan struct{})
		go func() { srv.GracefulStop(); close(done) }()
		select {
		case <-done:
		case <-time.After(*grace):
			srv.Stop()
		}
	}()
	// the line tests and scripts wait for: the bound addresses
	line := fmt.Sprintf("{\"listen\": %q, \"cluster\": %v", lis.Addr().String(), st.Cluster())
	if metricsAddr != "" {
		line += fmt.Sprintf(", \"metrics\": %q", metricsAddr)
	}
	fmt.Println(line + "}")
	if err := srv.Serve(lis); err != nil {
		log.Fatalf("persona-front: %v", err)
	}
	log.Printf("persona-front: stopped (GetEmbeddings local %d, forwarded %d)",
		f.Local.Load(), f.Forwarded.Load())
}

// authToken is persona serve's bearer token, read from the same places
// (services/cli/serve_cmds.py _token): the file's (stripped; an empty file is refused),
// else PERSONA_AUTH_TOKEN's (set but blank is refused: it reads as "auth on" to whoever
// set it); "" when neither is given. PERSONA_FRONT_AUTH_TOKEN, read by earlier fronts, is
// refused so that a deployment relying on it does not silently run without a token.
func authToken(file string) (string, error) {
	if _, ok := os.LookupEnv("PERSONA_FRONT_AUTH_TOKEN"); ok {
		return "", fmt.Errorf("PERSONA_FRONT_AUTH_TOKEN is no longer read: set PERSONA_AUTH_TOKEN" +
			" or -auth-token-file, as for persona serve")
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
	v, ok := os.LookupEnv("PERSONA_AUTH_TOKEN")
	if ok && strings.TrimSpace(v) == "" {
		return "", fmt.Errorf("PERSONA_AUTH_TOKEN is set but empty: set the token, or unset the" +
			" variable to serve without one")
	}
	return v, nil
}

// parseStore splits "a:1,b:2" or "redis://[user:password@]a:1/9" into addresses, a
// database and the URL's credentials (nil when no URL carries any). rediss:// (TLS) and
// other schemes are refused.
func parseStore(s string) ([]string, int, *resp.Auth, error) {
	db := 0
	var out []string
	var creds *resp.Auth
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
		case "redis":
		case "rediss":
			return nil, 0, nil, fmt.Errorf("%q: rediss:// (TLS) is not supported by persona-front", a)
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
	return out, db, creds, nil
}
