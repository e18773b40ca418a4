package front

import (
	"bytes"
	"encoding/json"
	"regexp"
	"sync"
	"time"
	"unicode/utf8"

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
	if states == nil { // a field or value Python would not decode
		return "", errVersion
	}
	s, ok := states[pinned]
	if !ok || s == "retired" {
		return "", errVersion
	}
	return pinned, nil
}

// nonEmpty: the active pointer as the front serves it; none, or one that is not a
// version id (Python fails on it), is errVersion (forwarded).
func nonEmpty(s string) (string, error) {
	if s == "" || !store.IsVersion(s) {
		return "", errVersion
	}
	return s, nil
}

// activeSeen: an upstream answer to an unpinned request named version; when it is not
// the cached active one (a cutover), the active pointer is read again on the next call.
func (v *versions) activeSeen(version string) {
	v.mu.Lock()
	if version != v.active {
		v.activeAt = time.Time{}
	}
	v.mu.Unlock()
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
	states := parseStates(r)
	v.mu.Lock()
	v.states, v.statesAt = states, time.Now()
	v.mu.Unlock()
	return states, nil
}

// parseStates is the HGETALL reply of the states hash as a map; nil when a field or a
// value is not UTF-8 (Python's decoding fails: such a request is forwarded).
func parseStates(r resp.Reply) map[string]string {
	states := map[string]string{}
	for i := 0; i+1 < len(r.Array); i += 2 {
		k, val := r.Array[i].Str, r.Array[i+1].Str
		if !utf8.Valid(k) || !utf8.Valid(val) {
			return nil
		}
		states[string(k)] = string(val)
	}
	return states
}

// pyIntString: the strings Python's int() takes that the front accepts: ASCII
// whitespace, a sign, ASCII digits with single underscores between them (Python takes
// other Unicode digits and spaces too: those are forwarded).
var pyIntString = regexp.MustCompile(`^[ \t\n\v\f\r]*[+-]?[0-9](_?[0-9])*[ \t\n\v\f\r]*$`)

// pyInt says whether Python's int() certainly accepts a JSON value as json.loads gives
// it: an integer number (no fraction or exponent: floats are forwarded, though int()
// truncates finite ones) or a string pyIntString matches. Booleans, null, lists,
// objects are refused here (True is forwarded too).
func pyInt(raw json.RawMessage) bool {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 {
		return false
	}
	switch c := raw[0]; {
	case c == '-' || (c >= '0' && c <= '9'):
		return !bytes.ContainsAny(raw, ".eE")
	case c == '"':
		var s string
		return json.Unmarshal(raw, &s) == nil && pyIntString.MatchString(s)
	}
	return false
}

// parseColumns is the number of columns services/serving/versions.py parse_columns finds
// in a score-columns value (0 when empty); errRecord where Python could fail, or where the
// front is not sure it would not: keys are matched exactly (Go's own JSON decoding is
// case-insensitive), horizon_ms must be what int() takes.
func parseColumns(b []byte) (int, error) {
	if len(b) == 0 {
		return 0, nil
	}
	if !utf8.Valid(b) {
		return 0, errRecord
	}
	var doc map[string]json.RawMessage
	if err := json.Unmarshal(b, &doc); err != nil {
		return 0, errRecord
	}
	var cols []map[string]json.RawMessage
	raw, ok := doc["columns"]
	if !ok || json.Unmarshal(raw, &cols) != nil || cols == nil {
		return 0, errRecord
	}
	for _, c := range cols {
		if c == nil { // null: None["outcome"]
			return 0, errRecord
		}
		if _, ok := c["outcome"]; !ok {
			return 0, errRecord
		}
		if _, ok := c["calibrated"]; !ok {
			return 0, errRecord
		}
		if h, ok := c["horizon_ms"]; !ok || !pyInt(h) {
			return 0, errRecord
		}
	}
	return len(cols), nil
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
	n, err := parseColumns(r.Str)
	if err != nil {
		return 0, err
	}
	v.mu.Lock()
	if len(v.columns) > 256 {
		v.columns = map[string]columnsEntry{}
	}
	v.columns[version] = columnsEntry{n, time.Now()}
	v.mu.Unlock()
	return n, nil
}
