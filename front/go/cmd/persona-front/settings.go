package main

import (
	"flag"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// envFlag: a flag whose default is a PERSONA_* variable persona serve reads
// (services/cli/settings.py), so that a pod giving both containers the same environment
// gets the same limits without copying them into flags; a flag given still wins, as it
// does for persona serve.
type envFlag struct {
	flag, env string
	conv      func(string) (string, error) // the variable's value as the flag's text
}

var envFlags = []envFlag{
	{"store", "PERSONA_REDIS", verbatim},
	{"dim", "PERSONA_DIM", verbatim},
	{"max-batch", "PERSONA_MAX_BATCH", verbatim},
	{"max-history", "PERSONA_MAX_HISTORY", verbatim},
	{"max-id-bytes", "PERSONA_SERVE_MAX_ID_BYTES", verbatim},
	{"version-cache", "PERSONA_VERSION_CACHE_S", unit(time.Second)},
	{"deadline-margin", "PERSONA_DEADLINE_MARGIN_MS", unit(time.Millisecond)},
	{"store-timeout", "PERSONA_STORE_TIMEOUT_MS", unit(time.Millisecond)},
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
// (getenv: os.Getenv); an unusable value is an error naming the variable.
func applyEnv(fs *flag.FlagSet, getenv func(string) string) error {
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	for _, e := range envFlags {
		v := strings.TrimSpace(getenv(e.env))
		if v == "" || given[e.flag] {
			continue
		}
		s, err := e.conv(v)
		if err == nil {
			err = fs.Set(e.flag, s)
		}
		if err != nil {
			return fmt.Errorf("%s=%q: %v", e.env, v, err)
		}
	}
	return nil
}
