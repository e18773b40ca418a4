package front

import (
	"encoding/json"
	"sync"
	"time"

	"persona/front/go/resp"
	"persona/front/go/store"
)

var modelsSlot = resp.KeySlot([]byte(store.ActiveKey))

// versions mirrors services/serving/versions.py VersionResolver: the active pointer and
// the version states cached for ttl (0: read every time), a pinned version unknown to the
// cached states read again at once, score columns kept for good once a version has some.
type versions struct {
	st  *resp.Store
	ttl time.Duration

	mu       sync.Mutex
	active   string
	activeAt time.Time
	states   map[string]string
	statesAt time.Time
	columns  map[string]columnsEntry
}

type columnsEntry struct {
	n  int
	at time.Time
}

func newVersions(st *resp.Store, ttl time.Duration) *versions {
	return &versions{st: st, ttl: ttl, columns: map[string]columnsEntry{}}
}

func (v *versions) fresh(at time.Time) bool {
	return !at.IsZero() && v.ttl > 0 && time.Since(at) < v.ttl
}

func (v *versions) get(deadline time.Time, args ...string) (resp.Reply, error) {
	bs := make([][]byte, len(args))
	for i, a := range args {
		bs[i] = []byte(a)
	}
	rs, err := v.st.Do([]resp.Cmd{{Slot: modelsSlot, Args: bs}}, deadline)
	if err != nil {
		return resp.Reply{}, err
	}
	if rs[0].Err() != "" {
		return resp.Reply{}, errStoreReply
	}
	return rs[0], nil
}

// resolve is VersionResolver.resolve; no active version, a malformed, unknown or retired
// version is errVersion, a store error is returned as it is.
func (v *versions) resolve(pinned string, deadline time.Time) (string, error) {
	if pinned == "" {
		v.mu.Lock()
		if v.fresh(v.activeAt) {
			a := v.active
			v.mu.Unlock()
			return nonEmpty(a)
		}
		v.mu.Unlock()
		r, err := v.get(deadline, "GET", store.ActiveKey)
		if err != nil {
			return "", err
		}
		v.mu.Lock()
		v.active, v.activeAt = string(r.Str), time.Now()
		v.mu.Unlock()
		return nonEmpty(string(r.Str))
	}
	if !store.IsVersion(pinned) {
		return "", errVersion
	}
	states, err := v.statesOf(deadline, false)
	if err != nil {
		return "", err
	}
	if _, ok := states[pinned]; !ok {
		if states, err = v.statesOf(deadline, true); err != nil {
			return "", err
		}
	}
	s, ok := states[pinned]
	if !ok || s == "retired" {
		return "", errVersion
	}
	return pinned, nil
}

func nonEmpty(s string) (string, error) {
	if s == "" {
		return "", errVersion
	}
	return s, nil
}

func (v *versions) statesOf(deadline time.Time, fresh bool) (map[string]string, error) {
	v.mu.Lock()
	if !fresh && v.fresh(v.statesAt) {
		s := v.states
		v.mu.Unlock()
		return s, nil
	}
	v.mu.Unlock()
	r, err := v.get(deadline, "HGETALL", store.StatesKey)
	if err != nil {
		return nil, err
	}
	states := map[string]string{}
	for i := 0; i+1 < len(r.Array); i += 2 {
		states[string(r.Array[i].Str)] = string(r.Array[i+1].Str)
	}
	v.mu.Lock()
	v.states, v.statesAt = states, time.Now()
	v.mu.Unlock()
	return states, nil
}

type scoreColumn struct {
	Outcome    *json.RawMessage `json:"outcome"`
	HorizonMs  *json.Number     `json:"horizon_ms"`
	Calibrated *json.RawMessage `json:"calibrated"`
}

// scoreColumns is the number of the version's score columns (VersionResolver.score_columns
// and parse_columns; a value parse_columns would fail on is errRecord).
func (v *versions) scoreColumns(version string, deadline time.Time) (int, error) {
	v.mu.Lock()
	if e, ok := v.columns[version]; ok && (e.n > 0 || v.fresh(e.at)) {
		v.mu.Unlock()
		return e.n, nil
	}
	v.mu.Unlock()
	r, err := v.get(deadline, "GET", store.ScoresKey+version)
	if err != nil {
		return 0, err
	}
	n := 0
	if len(r.Str) > 0 {
		var doc struct {
			Columns *[]scoreColumn `json:"columns"`
		}
		if err := json.Unmarshal(r.Str, &doc); err != nil || doc.Columns == nil {
			return 0, errRecord
		}
		for _, c := range *doc.Columns {
			if c.Outcome == nil || c.HorizonMs == nil || c.Calibrated == nil {
				return 0, errRecord
			}
		}
		n = len(*doc.Columns)
	}
	v.mu.Lock()
	if len(v.columns) > 256 {
		v.columns = map[string]columnsEntry{}
	}
	v.columns[version] = columnsEntry{n, time.Now()}
	v.mu.Unlock()
	return n, nil
}
