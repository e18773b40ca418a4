package shortterm

import (
	"encoding/binary"
	"math"
)

// StateField is the meta field s<ver> (layout.state_field): the user's short-term state
// under the version (LAYOUT.md "Short-term state").
func StateField(version string) []byte { return append([]byte("s"), version...) }

// stateHead: an entry's ts_ms (i64), window version (i64), events of its APPLY (u32), H
// (u32) (layout.STATE_ENTRY); its row of H float32 follows.
const stateHead = 24

// State is one user's short-term state as recent.state_batch reads it: whether it answers,
// the rows kept (N x H, oldest first; the newest `most`) and the newest kept event's ts_ms
// (0 when none).
type State struct {
	OK       bool
	N        int
	Rows     []float32
	NewestMs int64
}

type entry struct {
	ts, v   int64
	cnt, h  uint32
	rowFrom int
}

// ParseState is state_batch for one user (blob nil: no state): the state answers when its
// entries after the vector (window version in (since, now]: the vector's and meta v) account
// for every window change since (each of those versions' entries all there, as many as the
// APPLY that made it added), every entry has rows of rowDim, and their times strictly
// increase from the marker's (markerTs) on.
func ParseState(blob []byte, since, now, markerTs int64, most, rowDim int) State {
	size := stateHead + 4*rowDim
	if len(blob)%size != 0 {
		return State{} // rows of another length: a head trained again
	}
	var kept []entry
	ok := true
	for at := 0; at < len(blob); at += size {
		e := entry{
			ts:      int64(binary.LittleEndian.Uint64(blob[at:])),
			v:       int64(binary.LittleEndian.Uint64(blob[at+8:])),
			cnt:     binary.LittleEndian.Uint32(blob[at+16:]),
			h:       binary.LittleEndian.Uint32(blob[at+20:]),
			rowFrom: at + stateHead,
		}
		if int64(e.h) != int64(rowDim) {
			ok = false
		}
		if e.v > since && e.v <= now {
			kept = append(kept, e)
		}
	}
	// APPLYs: runs of one window version (entries go in APPLY order); each run's first
	// entry says how many entries its APPLY added
	applies, expected := int64(0), int64(0)
	before := markerTs
	for i, e := range kept {
		if i == 0 || e.v != kept[i-1].v {
			applies++
			expected += int64(e.cnt)
		}
		if e.ts <= before {
			ok = false
		}
		before = e.ts
	}
	if !ok || applies != now-since || expected != int64(len(kept)) {
		return State{}
	}
	if most < 0 {
		most = 0
	}
	if len(kept) > most { // the newest `most`
		kept = kept[len(kept)-most:]
	}
	st := State{OK: true, N: len(kept), Rows: make([]float32, 0, len(kept)*rowDim)}
	for _, e := range kept {
		for j := 0; j < rowDim; j++ {
			st.Rows = append(st.Rows,
				math.Float32frombits(binary.LittleEndian.Uint32(blob[e.rowFrom+4*j:])))
		}
	}
	if len(kept) > 0 {
		st.NewestMs = kept[len(kept)-1].ts
	}
	return st
}
