package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"persona/front/go/resp"
)

// settings: the flags, their PERSONA_* defaults, and what they resolve to before anything
// is dialled or read (loadSettings); the secrets and certificates are read by run.
type settings struct {
	listen, upstream, storeFlag, metricsListen, authTokenFile  string
	models                                                     string // -models: the registry
	db, dim, maxBatch, maxHistory, maxIDBytes, pool, maxCalls  int
	upstreamConns                                              int
	versionCache, headTTL, storeTimeout, grace, margin, dialTO time.Duration
	drain                                                      time.Duration
	printSettings                                              bool
	tls                                                        tlsFlags
	served                                                     servedFlags // served log (servedlog.go)

	addrs   []string   // -store's HOST:PORT list
	urlAuth *resp.Auth // credentials of a redis:// URL in -store (nil: none)
	auth    bool       // a bearer token is set (-auth-token-file or PERSONA_AUTH_TOKEN)
	lookup  func(string) (string, bool)
}

// errUsage: the flags did not parse (the flag package has said why).
var errUsage = errors.New("usage")

// loadSettings parses args (without the program's name) and the environment (lookup:
// os.LookupEnv) as the front starts with them and checks them: the errors are the start's
// (exit 2); no file is read, named files must exist.
func loadSettings(args []string, lookup func(string) (string, bool)) (*settings, error) {
	s := &settings{lookup: lookup}
	fs := flag.NewFlagSet("persona-front", flag.ContinueOnError)
	fs.StringVar(&s.listen, "listen", "127.0.0.1:50052", "where the front listens (HOST:PORT)")
	fs.StringVar(&s.upstream, "upstream", "", "the Python persona serve (HOST:PORT)")
	fs.StringVar(&s.storeFlag, "store", "", "Valkey / Redis: one node or cluster seed nodes, "+
		"comma-separated HOST:PORT (a redis://HOST:PORT/DB URL is accepted too)")
	fs.IntVar(&s.db, "db", 0, "database to SELECT on a single node")
	fs.IntVar(&s.maxBatch, "max-batch", 1000, "user ids per GetEmbeddings (as persona serve's)")
	fs.IntVar(&s.maxHistory, "max-history", 3, "history_depth at most (as persona serve's)")
	fs.IntVar(&s.maxIDBytes, "max-id-bytes", 256, "UTF-8 bytes of one user id (as persona serve's)")
	fs.IntVar(&s.dim, "dim", 0, "served dimension (0: learnt from the upstream's answers)")
	fs.DurationVar(&s.versionCache, "version-cache", time.Second,
		"active version and states cached this long (persona serve's version_cache_s)")
	fs.DurationVar(&s.headTTL, "head-ttl", time.Minute,
		"whether a version has a short-term head, as learnt from upstream answers, is believed this long")
	fs.StringVar(&s.models, "models", "", "the model registry folder (read only): versions'"+
		" short-term heads, for the users whose short-term state a request needs (empty: such"+
		" requests are forwarded; default from PERSONA_MODELS)")
	fs.DurationVar(&s.storeTimeout, "store-timeout", time.Second, "longest store read")
	fs.DurationVar(&s.grace, "grace", 5*time.Second,
		"in-flight calls may finish this long on SIGTERM, after -drain (persona serve's grace_s)")
	fs.DurationVar(&s.drain, "drain", 0, "on SIGTERM keep serving this long before stopping, while"+
		" the endpoints drop the pod (persona serve's drain_s)")
	fs.IntVar(&s.upstreamConns, "upstream-conns", 1, "connections to the upstream, calls sent over"+
		" them in turn (default from PERSONA_SERVE_PROCESSES: 8 per process when more than one)")
	fs.StringVar(&s.metricsListen, "metrics-listen", "",
		"serve GET /metrics (Prometheus text format) on HOST:PORT (empty: off)")
	fs.StringVar(&s.authTokenFile, "auth-token-file", "",
		"file holding the bearer token clients must send (or env PERSONA_AUTH_TOKEN), as persona serve's")
	fs.DurationVar(&s.margin, "deadline-margin", 2*time.Millisecond,
		"kept back from a call's deadline for the store read (persona serve's deadline_margin_s)")
	fs.IntVar(&s.pool, "store-pool", 64, "connections to one store node at most")
	fs.DurationVar(&s.dialTO, "store-dial-timeout", 2*time.Second,
		"longest connect + AUTH / SELECT to a store node (a call's deadline cuts it shorter)")
	fs.IntVar(&s.maxCalls, "max-concurrent-rpcs", 64, "beyond this many calls in the front,"+
		" new ones get RESOURCE_EXHAUSTED, as persona serve's (0: no limit; from"+
		" PERSONA_MAX_CONCURRENT_RPCS times PERSONA_SERVE_PROCESSES when not given:"+
		" persona serve's limit is per process); health checks pass it")
	fs.BoolVar(&s.printSettings, "print-settings", false,
		"print the resolved settings as one JSON object and exit (nothing dialled)")
	s.tls.define(fs)
	s.served.define(fs)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, err
		}
		return nil, errUsage
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	limitGiven := false
	fs.Visit(func(f *flag.Flag) { limitGiven = limitGiven || f.Name == "max-concurrent-rpcs" })
	if err := applyEnv(fs, lookup); err != nil {
		return nil, err
	}
	// read even where -upstream-conns is given (applyEnv then skips it): it also scales
	// the limit, and a value persona serve would refuse is an error here too
	procs, _ := lookup("PERSONA_SERVE_PROCESSES")
	n := 1
	if v := strings.TrimSpace(procs); v != "" {
		var err error
		if n, err = serveProcesses(v); err != nil {
			return nil, fmt.Errorf("PERSONA_SERVE_PROCESSES=%q: %v", v, err)
		}
	}
	if !limitGiven { // persona serve applies its limit per process: the pod admits N times it
		s.maxCalls *= n
	}
	if s.upstream == "" || s.storeFlag == "" {
		return nil, errors.New("-upstream and -store (or PERSONA_REDIS) are required")
	}
	if s.upstreamConns < 1 {
		return nil, fmt.Errorf("-upstream-conns %d: give 1 or more", s.upstreamConns)
	}
	if s.maxCalls < 0 {
		return nil, fmt.Errorf("-max-concurrent-rpcs (PERSONA_MAX_CONCURRENT_RPCS) %d: give 0"+
			" (no limit) or more", s.maxCalls)
	}
	var err error
	urlDB := 0
	if s.addrs, urlDB, s.urlAuth, err = parseStore(s.storeFlag); err != nil {
		return nil, fmt.Errorf("-store: %v", err)
	}
	if s.db == 0 {
		s.db = urlDB
	}
	if err := s.tls.check(); err != nil {
		return nil, err
	}
	if err := s.served.check(lookup); err != nil {
		return nil, err
	}
	if path, _ := lookup("PERSONA_REDIS_PASSWORD_FILE"); path != "" {
		if err := exists("PERSONA_REDIS_PASSWORD_FILE", path); err != nil {
			return nil, err
		}
	}
	s.auth, err = checkAuth(s.authTokenFile, lookup)
	return s, err
}

// printSettings writes the resolved settings as one JSON line (no secret: whether a token
// is set, not the token; the store's HOST:PORT, not a URL's credentials).
func printSettings(w io.Writer, s *settings) error {
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	b, err := json.Marshal(struct {
		Listen        string   `json:"listen"`
		Upstream      string   `json:"upstream"`
		Store         []string `json:"store"`
		DB            int      `json:"db"`
		Dim           int      `json:"dim"`
		MetricsListen string   `json:"metrics_listen"`
		MaxBatch      int      `json:"max_batch"`
		MaxHistory    int      `json:"max_history"`
		MaxIDBytes    int      `json:"max_id_bytes"`
		VersionCacheS float64  `json:"version_cache_s"`
		MarginMS      float64  `json:"deadline_margin_ms"`
		StoreTimeout  float64  `json:"store_timeout_ms"`
		MaxCalls      int      `json:"max_concurrent_rpcs"`
		TLS           string   `json:"tls"`
		UpstreamTLS   bool     `json:"upstream_tls"`
		Auth          bool     `json:"auth"`
		UpstreamConns int      `json:"upstream_conns"`
		DrainS        float64  `json:"drain_s"`
		GraceS        float64  `json:"grace_s"`
		ServedRate    float64  `json:"served_log_rate"`
		ServedTopic   string   `json:"served_topic"`
		Kafka         string   `json:"kafka"`
		Models        string   `json:"models"`
	}{s.listen, s.upstream, s.addrs, s.db, s.dim, s.metricsListen, s.maxBatch, s.maxHistory,
		s.maxIDBytes, s.versionCache.Seconds(), ms(s.margin), ms(s.storeTimeout), s.maxCalls,
		s.tls.mode(), s.tls.upstream(), s.auth, s.upstreamConns, s.drain.Seconds(),
		s.grace.Seconds(), s.served.rate, s.served.topic, s.served.bootstrap, s.models})
	if err == nil {
		_, err = fmt.Fprintf(w, "%s\n", b)
	}
	return err
}

// envFlag: a flag whose default is a PERSONA_* variable persona serve reads
// (services/cli/settings.py), so that a pod giving both containers the same environment
// gets the same limits without copying them into flags; a flag given still wins, as it
// does for persona serve.
type envFlag struct {
	flag, env string
	conv      func(string) (string, error) // the variable's value as the flag's text
	blank     string                       // the flag's text for a set but blank variable ("": ignored)
}

var envFlags = []envFlag{
	{"store", "PERSONA_REDIS", verbatim, ""},
	{"dim", "PERSONA_DIM", verbatim, ""},
	{"max-batch", "PERSONA_MAX_BATCH", verbatim, ""},
	{"max-history", "PERSONA_MAX_HISTORY", verbatim, ""},
	{"max-id-bytes", "PERSONA_SERVE_MAX_ID_BYTES", verbatim, ""},
	{"version-cache", "PERSONA_VERSION_CACHE_S", unit(time.Second), ""},
	{"deadline-margin", "PERSONA_DEADLINE_MARGIN_MS", unit(time.Millisecond), ""},
	{"store-timeout", "PERSONA_STORE_TIMEOUT_MS", unit(time.Millisecond), ""},
	// "" and "0" are no limit (settings.py none_if=_MANY)
	{"max-concurrent-rpcs", "PERSONA_MAX_CONCURRENT_RPCS", verbatim, "0"},
	{"served-log-rate", "PERSONA_SERVED_LOG_RATE", verbatim, ""},
	{"served-topic", "PERSONA_SERVED_TOPIC", verbatim, ""},
	{"served-log-queue", "PERSONA_SERVED_LOG_QUEUE", verbatim, ""},
	{"kafka", "PERSONA_BOOTSTRAP", verbatim, ""},
	{"drain", "PERSONA_DRAIN_S", unit(time.Second), ""},
	{"grace", "PERSONA_GRACE_S", unit(time.Second), ""},
	{"upstream-conns", "PERSONA_SERVE_PROCESSES", connsPerProcesses, ""},
	{"models", "PERSONA_MODELS", verbatim, ""},
}

// connsPerProcesses: upstream connections for persona serve --processes N: one for a
// single process, else 8 per process, so that the kernel's hash of each connection leaves
// no process without one (with 2 processes, 16 connections miss one with probability
// 2^-15) and the calls spread about evenly.
func connsPerProcesses(v string) (string, error) {
	n, err := serveProcesses(v)
	if err != nil {
		return "", err
	}
	if n == 1 {
		return "1", nil
	}
	return strconv.Itoa(8 * n), nil
}

// serveProcesses reads PERSONA_SERVE_PROCESSES as persona serve does: 1 or more.
func serveProcesses(v string) (int, error) {
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		return 0, fmt.Errorf("not a whole number of processes, 1 or more")
	}
	return n, nil
}

func verbatim(v string) (string, error) { return v, nil }

// unit reads a number of seconds / milliseconds (persona's float settings) as a duration.
func unit(u time.Duration) func(string) (string, error) {
	return func(v string) (string, error) {
		x, err := strconv.ParseFloat(v, 64)
		if err != nil || x < 0 {
			return "", fmt.Errorf("not a non-negative number")
		}
		return time.Duration(x * float64(u)).String(), nil
	}
}

// applyEnv sets every flag of envFlags not given on the command line from its variable
// (lookup: os.LookupEnv); an unusable value is an error naming the variable.
func applyEnv(fs *flag.FlagSet, lookup func(string) (string, bool)) error {
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	for _, e := range envFlags {
		raw, set := lookup(e.env)
		v := strings.TrimSpace(raw)
		if !set || given[e.flag] || (v == "" && e.blank == "") {
			continue
		}
		s, err := e.blank, error(nil)
		if v != "" {
			s, err = e.conv(v)
		}
		if err == nil {
			err = fs.Set(e.flag, s)
		}
		if err != nil {
			return fmt.Errorf("%s=%q: %v", e.env, v, err)
		}
	}
	return nil
}
