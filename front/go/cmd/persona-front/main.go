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
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"

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
	flag.Parse()
	if *upstream == "" || *storeAddrs == "" {
		fmt.Fprintln(os.Stderr, "persona-front: -upstream and -store are required")
		os.Exit(2)
	}
	addrs, urlDB := parseStore(*storeAddrs)
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
	st, err := resp.Open(addrs, auth, 2*time.Second, 64)
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
		AuthToken:   os.Getenv("PERSONA_FRONT_AUTH_TOKEN"),
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

// parseStore splits "a:1,b:2" or "redis://a:1/9" into addresses and a database.
func parseStore(s string) ([]string, int) {
	db := 0
	var out []string
	for _, a := range strings.Split(s, ",") {
		a = strings.TrimSpace(a)
		if i := strings.Index(a, "://"); i >= 0 {
			a = a[i+3:]
		}
		if i := strings.LastIndex(a, "@"); i >= 0 {
			a = a[i+1:]
		}
		if i := strings.Index(a, "/"); i >= 0 {
			if n, err := strconv.Atoi(a[i+1:]); err == nil {
				db = n
			}
			a = a[:i]
		}
		if a != "" {
			out = append(out, a)
		}
	}
	return out, db
}
