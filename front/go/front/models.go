package front

import (
	"log"
	"sync"
	"time"

	"persona/front/go/shortterm"
)

// headRetry: a head that did not load (or verify) is tried again after this long, as
// services/common/heads.py RegistryHeads retries (the files may arrive later).
const headRetry = time.Minute

// modelHeads are the versions' short-term heads read from the registry folder (-models),
// each checked against its rows parity sample before any of it is served; a head that
// fails (no head file, no rows parity file, a version trained before it, a mismatch) is
// not used: requests needing the short-term state go up (reason head_unverified), said
// once per version in the log.
type modelHeads struct {
	dir string
	mu  sync.Mutex
	of  map[string]*modelHead
}

type modelHead struct {
	h      *shortterm.Head
	retry  time.Time // a failed load is tried again from then on
	logged bool      // the failure was logged
	// the version's outcome heads (outcomes.json; outKnown: loaded, or known absent),
	// loaded apart from the head's verification: the delta path rescores without it
	out       *shortterm.Outcomes
	outKnown  bool
	outRetry  time.Time
	outLogged bool
}

func newModelHeads(dir string) *modelHeads {
	if dir == "" {
		return nil
	}
	return &modelHeads{dir: dir, of: map[string]*modelHead{}}
}

// head is the version's verified head, or nil.
func (m *modelHeads) head(version string) *shortterm.Head {
	m.mu.Lock()
	defer m.mu.Unlock()
	got := m.of[version]
	if got != nil && (got.h != nil || time.Now().Before(got.retry)) {
		return got.h
	}
	h, lines, err := shortterm.Load(m.dir, version)
	got = m.entry(version)
	got.h = h
	if err != nil {
		got.retry = time.Now().Add(headRetry)
		if !got.logged {
			got.logged = true
			log.Printf("persona-front: model %s: short-term head not used, requests that need"+
				" its short-term state are forwarded (tried again every %s): %v", version,
				headRetry, err)
		}
		return nil
	}
	log.Printf("persona-front: model %s: short-term head loaded from %s (%d events at most;"+
		" %d rows parity lines reproduced)", version, m.dir, h.MaxEvents, lines)
	return h
}

// entry is the version's cache entry, made when missing (callers hold mu).
func (m *modelHeads) entry(version string) *modelHead {
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
// kept): ok and nil where the head file is there and outcomes.json is not (Python does
// not rescore); not ok where the front cannot be sure of Python's (no head file yet, a
// file that does not read or parse as the front reads it): tried again every minute,
// said once per version in the log.
func (m *modelHeads) outcomes(version string) (o *shortterm.Outcomes, ok bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	got := m.of[version]
	if got != nil && (got.outKnown || time.Now().Before(got.outRetry)) {
		return got.out, got.outKnown
	}
	o, err := shortterm.LoadOutcomes(m.dir, version)
	got = m.entry(version)
	if err != nil {
		got.outRetry = time.Now().Add(headRetry)
		if !got.outLogged {
			got.outLogged = true
			log.Printf("persona-front: model %s: outcome heads not read, include_scores requests"+
				" with rows the head moved are forwarded (tried again every %s): %v", version,
				headRetry, err)
		}
		return nil, false
	}
	got.out, got.outKnown = o, true
	if o == nil {
		log.Printf("persona-front: model %s: no %s: rows the head moves keep their stored"+
			" scores, as Python's", version, shortterm.OutcomesFile)
	} else {
		log.Printf("persona-front: model %s: outcome heads loaded (%d score columns)", version,
			o.N())
	}
	return o, true
}
