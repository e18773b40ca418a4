package front

import (
	"time"

	"persona/front/go/resp"
	"persona/front/go/shortterm"
	"persona/front/go/store"
)

// foldFromStates is read_recent's second source and folding.fold for the distinct users
// `need` whose delta does not answer: one more pipelined round trip (`HGET p:{B}:m:<uid>
// s<ver>` each, all nodes written before any reply is read), each state parsed by
// state_batch's rules against the user's newest vector (its window_version and marker)
// and meta v as read (`v`), then the version's head over the rows it keeps. A user whose
// state does not answer needs read_recent.lua: the whole request is forwarded
// (errShortTerm); so is every such request without -models (errShortTerm) or without a
// verified head for the version (errHeadUnverified; errHeadLoading while another request
// reads its files).
func (f *Front) foldFromStates(folds []folded, need []int, uids []string, stored [][]store.Vector,
	v []int64, version string, dim int, deadline time.Time) error {
	if f.models == nil {
		return errShortTerm
	}
	h, st := f.models.head(version)
	if st == fileBusy {
		return errHeadLoading
	}
	if h == nil || h.E != dim {
		return errHeadUnverified
	}
	field := shortterm.StateField(version)
	cmds := make([]resp.Cmd, len(need))
	for k, i := range need {
		key := store.MetaKey(uids[i])
		cmds[k] = resp.Cmd{Slot: resp.KeySlot(key), Args: [][]byte{[]byte("HGET"), key, field}}
	}
	replies, err := f.store.Do(cmds, deadline)
	if err != nil {
		return err
	}
	for k, i := range need {
		r := replies[k]
		if r.Err() != "" {
			return errStoreReply
		}
		if !r.Nil && r.Kind != '$' {
			return errRecord
		}
		newest := stored[i][0]
		st := shortterm.ParseState(r.Str, newest.WindowVersion, v[i], newest.MarkerTsMs,
			h.MaxEvents, h.H)
		if !st.OK {
			return errShortTerm // the window (read_recent.lua) is Python's
		}
		if st.N == 0 {
			continue // nothing folded (max_events 0): the marker's newest_event_ms
		}
		delta := make([]float32, dim)
		h.Delta(delta, newest.Values, st.Rows, st.N)
		folds[i] = folded{events: int32(st.N), newest: st.NewestMs, delta: delta}
	}
	return nil
}
