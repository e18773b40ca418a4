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
	if got == nil {
		if len(m.of) >= 16 { // versions seen at most (a version's head never changes)
			m.of = map[string]*modelHead{}
		}
		got = &modelHead{}
		m.of[version] = got
	}
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
