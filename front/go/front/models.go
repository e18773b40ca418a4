package front

import (
	"log"
	"sync"
	"sync/atomic"
	"time"

	"persona/front/go/shortterm"
)

// headRetry: a head that did not load (or verify) is tried again after this long, as
// services/common/heads.py RegistryHeads retries (the files may arrive later).
const headRetry = time.Minute

// modelHeads are the versions' short-term heads read from the registry folder (-models),
// each checked against its rows parity sample before any of it is served; a head that
// fails (no head file, no rows parity file, a version trained before it, a mismatch) is
// not used: requests needing the short-term state go up (reason head_unverified; while
// another request reads the files, head_loading), said once per version in the log.
type modelHeads struct {
	dir string
	mu  sync.Mutex // the map's; a file is read under its own entry's lock, not this one
	of  map[string]*modelHead
}

type modelHead struct {
	h   loaded[*shortterm.Head]     // verified against its rows parity sample
	out loaded[*shortterm.Outcomes] // outcomes.json, apart from the head's verification:
	// the delta path rescores without it (nil and known: absent beside the head file)
}

// loaded is one of a version's files as the cache holds it: known (read, or known
// absent) and kept, or failed and tried again from retry on, the failure logged once.
// One request reads the file (single flight, under mu, no other version's lock held):
// the rest find it being read and go up meanwhile instead of waiting for the disk.
type loaded[T any] struct {
	ready  atomic.Pointer[T] // the value once known: the request path reads only this
	mu     sync.Mutex        // held by the one request reading the file
	retry  time.Time
	logged bool
}

// fileState is what get found of a file.
type fileState int

const (
	fileKnown  fileState = iota // read, or known absent: the value
	fileBusy                    // another request is reading it now (head_loading)
	fileFailed                  // not read: failed, tried again from retry on
)

// get: the value when known, else read it (once a headRetry at most, by one request at
// a time): on failure, or while another request reads it, the zero value, `failed`
// logging the error the first time.
func (l *loaded[T]) get(read func() (T, error), failed func(error)) (T, fileState) {
	if p := l.ready.Load(); p != nil {
		return *p, fileKnown
	}
	var zero T
	if !l.mu.TryLock() {
		return zero, fileBusy
	}
	defer l.mu.Unlock()
	if p := l.ready.Load(); p != nil { // read by the request that held mu
		return *p, fileKnown
	}
	if time.Now().Before(l.retry) {
		return zero, fileFailed
	}
	v, err := read()
	if err != nil {
		l.retry = time.Now().Add(headRetry)
		if !l.logged {
			l.logged = true
			failed(err)
		}
		return zero, fileFailed
	}
	l.ready.Store(&v)
	return v, fileKnown
}

func newModelHeads(dir string) *modelHeads {
	if dir == "" {
		return nil
	}
	return &modelHeads{dir: dir, of: map[string]*modelHead{}}
}

// head is the version's verified head (nil unless fileKnown).
func (m *modelHeads) head(version string) (*shortterm.Head, fileState) {
	return m.entry(version).h.get(func() (*shortterm.Head, error) {
		h, lines, err := shortterm.Load(m.dir, version)
		if err == nil {
			log.Printf("persona-front: model %s: short-term head loaded from %s (%d events at"+
				" most; %d rows parity lines reproduced)", version, m.dir, h.MaxEvents, lines)
		}
		return h, err
	}, func(err error) {
		log.Printf("persona-front: model %s: short-term head not used, requests that need"+
			" its short-term state are forwarded (tried again every %s): %v", version,
			headRetry, err)
	})
}

// entry is the version's cache entry, made when missing.
func (m *modelHeads) entry(version string) *modelHead {
	m.mu.Lock()
	defer m.mu.Unlock()
	got := m.of[version]
	if got == nil {
		if len(m.of) >= 16 { // versions kept at most (a version's files never change)
			for v := range m.of { // one out (any: the active versions come back at once)
				delete(m.of, v)
				break
			}
		}
		got = &modelHead{}
		m.of[version] = got
	}
	return got
}

// outcomes are the version's outcome heads as Python's head holds them
// (ShortTermHead.read: outcomes.json beside shortterm.npz, read once with the head and
// kept): fileKnown and nil where the head file is there and outcomes.json is not (Python
// does not rescore); fileFailed where the front cannot be sure of Python's (no head file
// yet, a file that does not read or parse as the front reads it): tried again every
// minute, said once per version in the log.
func (m *modelHeads) outcomes(version string) (*shortterm.Outcomes, fileState) {
	return m.entry(version).out.get(func() (*shortterm.Outcomes, error) {
		o, err := shortterm.LoadOutcomes(m.dir, version)
		switch {
		case err != nil:
		case o == nil:
			log.Printf("persona-front: model %s: no %s: rows the head moves keep their stored"+
				" scores, as Python's", version, shortterm.OutcomesFile)
		default:
			log.Printf("persona-front: model %s: outcome heads loaded (%d score columns)",
				version, o.N())
		}
		return o, err
	}, func(err error) {
		log.Printf("persona-front: model %s: outcome heads not read, include_scores requests"+
			" with rows the head moved are forwarded (tried again every %s): %v", version,
			headRetry, err)
	})
}
