package front

import (
	"persona/front/go/shortterm"
	"persona/front/go/store"
)

// outcomes are the version's outcome heads for rescoring the rows the head moved
// (embeddings._rescore): nil where the version has none (Python keeps the stored scores);
// errRescore, the request then forwarded, where the front cannot be sure of Python's
// (no -models, outcomes.json not read or parsed as the front reads it, or heads of another
// dimension than the served one: Python's matmul would fail).
func (f *Front) outcomes(version string, dim int) (*shortterm.Outcomes, error) {
	if f.models == nil {
		return nil, errRescore
	}
	o, st := f.models.outcomes(version)
	if st == fileBusy {
		return nil, errHeadLoading
	}
	if st != fileKnown || (o != nil && o.E != dim) {
		return nil, errRescore
	}
	return o, nil
}

// newestScores are the scores of a found user's newest row (embeddings._scores, then
// _rescore): the stored ones, or where the head moved the row (events > 0) and the heads
// serve as many columns as the version stores (nColumns), the outcome heads over the
// combined vector nearline + delta (float32 sum, as `got.vectors[:, 0] + folded.short`,
// for SHORT_TERM rows too). buf (nColumns) and sum (dim) are scratch.
func newestScores(oc *shortterm.Outcomes, fo *folded, v *store.Vector, nColumns int,
	buf, sum []float32) []float32 {
	if oc == nil || fo.events == 0 || oc.N() != nColumns {
		return v.Scores
	}
	store.AddFloats(sum, v.Values, fo.delta)
	oc.Scores(buf, sum)
	return buf
}
