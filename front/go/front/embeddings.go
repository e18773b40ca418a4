package front

import (
	"encoding/binary"
	"math"
	"strconv"
	"time"

	pb "persona/clients/go/personav1"
	"persona/front/go/resp"
	"persona/front/go/shortterm"
	"persona/front/go/store"
)

// Limits are services/serving/config.py Limits (the GetEmbeddings ones).
type Limits struct {
	MaxBatch, MaxHistory, MaxIDBytes int
}

// bodyLimit is the largest GetEmbeddings body the front parses: Python's receive limit for
// GetEmbeddings alone (services/serving/server.py receive_limit, which also counts
// max_seeds: twice an id list of MaxBatch ids of MaxIDBytes, 3 bytes of framing each, plus
// 64 KiB, at least 1 MiB). A larger one is forwarded unparsed (16 MiB of one-byte ids took
// 504 MiB to parse) for Python to answer.
func (l Limits) bodyLimit() int {
	n := 2*l.MaxBatch*(l.MaxIDBytes+3) + 64<<10
	if n < 1<<20 {
		return 1 << 20
	}
	return n
}

// valid mirrors the servicer's and validate.py's checks; anything they would refuse is
// forwarded, so the error is Python's own.
func valid(req *pb.GetEmbeddingsRequest, lim Limits) bool {
	if req.Encoding < 0 || req.Encoding > pb.VectorEncoding_VECTOR_ENCODING_FLOAT16 {
		return false
	}
	if _, ok := pb.Fallback_name[int32(req.Fallback)]; !ok {
		return false
	}
	if _, ok := pb.VectorPart_name[int32(req.Part)]; !ok {
		return false
	}
	if len(req.UserIds) == 0 || len(req.UserIds) > lim.MaxBatch {
		return false
	}
	for _, u := range req.UserIds {
		if u == "" || len(u) > lim.MaxIDBytes {
			return false
		}
	}
	return int64(req.HistoryDepth) <= int64(lim.MaxHistory)
}

// answer is services/serving/embeddings.py get_embeddings + responses.embeddings_response
// for the nearline path and, under a version with a short-term head, for users whose
// rows the ingest's delta, the short-term state (with -models: states.go) or nothing
// answers, with include_scores the moved rows rescored (with -models: rescore.go); else
// a forwardError, or the store's error.
func (f *Front) answer(req *pb.GetEmbeddingsRequest, deadline time.Time) (*pb.GetEmbeddingsResponse, error) {
	dim := int(f.dim.Load())
	if !valid(req, f.limits) {
		return nil, errInvalid
	}
	if dim <= 0 {
		return nil, errDimUnknown
	}
	version, err := f.versions.resolve(req.ModelVersion, deadline)
	if err != nil {
		return nil, err
	}
	m, ok := f.localMode(req, version)
	if !ok {
		return nil, errPartOrHead
	}
	nColumns := 0
	if req.IncludeScores {
		if nColumns, err = f.versions.scoreColumns(version, deadline); err != nil {
			return nil, err
		}
	}
	h := 1 + int(req.HistoryDepth)
	last := strconv.AppendInt(nil, int64(h-1), 10)
	at := map[string]int{}
	var cmds []resp.Cmd
	var uniq []string
	for _, u := range req.UserIds {
		if _, ok := at[u]; !ok {
			at[u] = len(cmds)
			uniq = append(uniq, u)
			key := store.VectorKey(u, version)
			cmds = append(cmds, resp.Cmd{Slot: resp.KeySlot(key),
				Args: [][]byte{[]byte("LRANGE"), key, []byte("0"), last}})
		}
	}
	distinct := len(cmds)
	if m != nearline { // read_recent: each user's meta v and delta in the same round trip
		field := store.DeltaField(version)
		for _, u := range uniq { // in the LRANGEs' order
			cmds = append(cmds, metaCmd(u, field))
		}
	}
	replies, err := f.store.Do(cmds, deadline)
	if err != nil {
		return nil, err
	}
	stored := make([][]store.Vector, distinct)
	for i, r := range replies[:distinct] {
		if r.Err() != "" {
			return nil, errStoreReply // e.g. WRONGTYPE: Python's store error
		}
		if r.Kind != '*' || len(r.Array) > h {
			return nil, errRecord
		}
		for _, rec := range r.Array {
			v, err := store.Decode(rec.Str)
			if err != nil || len(v.Values) != dim || v.NEvents > math.MaxInt32 {
				return nil, errRecord // Python: an error or another dimension
			}
			stored[i] = append(stored[i], v)
		}
	}
	if req.Fallback == pb.Fallback_FALLBACK_POPULATION_PRIOR {
		for _, u := range req.UserIds {
			if len(stored[at[u]]) == 0 {
				return nil, errFallback // the prior is the index's (checked before the
				// deltas and states are read: a forwarded request does not pay for them)
			}
		}
	}
	folds := make([]folded, distinct)
	var oc *shortterm.Outcomes // with include_scores: the heads that rescore moved rows
	if m != nearline {
		var need []int
		var v []int64
		if folds, need, v, err = foldFromDeltas(stored, replies[distinct:], dim); err != nil {
			return nil, err
		}
		if req.IncludeScores && (anyFolded(folds) || len(need) > 0) {
			if oc, err = f.outcomes(version, dim); err != nil {
				return nil, err // no outcome heads the front is sure of: Python rescores
			}
		}
		if len(need) > 0 { // read_recent's second round trip: the short-term state
			if err = f.foldFromStates(folds, need, uniq, stored, v, version, dim, deadline); err != nil {
				return nil, err
			}
		}
	}
	n := len(req.UserIds)
	f16 := req.Encoding == pb.VectorEncoding_VECTOR_ENCODING_FLOAT16
	enc := pb.VectorEncoding_VECTOR_ENCODING_FLOAT32
	if f16 {
		enc = pb.VectorEncoding_VECTOR_ENCODING_FLOAT16
	}
	now := float64(time.Now().UnixNano()) / 1e9
	out := &pb.GetEmbeddingsResponse{
		ModelVersion: version, Dim: int32(dim), Encoding: enc,
		Statuses: make([]pb.EmbeddingStatus, n),
		Meta:     &pb.VectorMetaColumns{},
		Part:     pb.VectorPart_VECTOR_PART_NEARLINE,
	}
	switch m {
	case combined:
		out.Part = pb.VectorPart_VECTOR_PART_COMBINED
	case shortTerm:
		out.Part = pb.VectorPart_VECTOR_PART_SHORT_TERM
	}
	if nColumns > 0 {
		out.NScores = int32(nColumns)
	}
	var vecs, scores, hvecs, hscores []byte
	hist := &pb.VectorMetaColumns{}
	zeros, sum := make([]float32, dim), make([]float32, dim)
	var fresh []float32 // rescored scores (nColumns); `sum` is free again by then
	if oc != nil {
		fresh = make([]float32, oc.N())
	}
	for i, u := range req.UserIds {
		vs, fo := stored[at[u]], &folds[at[u]]
		if len(vs) == 0 {
			out.Statuses[i] = pb.EmbeddingStatus_EMBEDDING_STATUS_NOT_FOUND
			vecs = appendFloats(vecs, fo.row(m, zeros, zeros, sum), f16)
			addMeta(out.Meta, nil, now)
			if nColumns > 0 {
				scores = appendScores(scores, nil, nColumns, f16)
			}
		} else {
			out.Statuses[i] = pb.EmbeddingStatus_EMBEDDING_STATUS_FOUND
			vecs = appendFloats(vecs, fo.row(m, vs[0].Values, zeros, sum), f16)
			addMeta(out.Meta, &vs[0], now)
			if nColumns > 0 {
				scores = appendScores(scores, newestScores(oc, fo, &vs[0], nColumns, fresh, sum),
					nColumns, f16)
			}
		}
		if fo.events > 0 { // folding.fold: the delta's events and newest event
			last := len(out.Meta.NewestEventMs) - 1
			out.Meta.NewestEventMs[last], out.Meta.ShortTermEvents[last] = fo.newest, fo.events
		}
		if h > 1 {
			older := 0
			if len(vs) > 1 {
				older = len(vs) - 1
			}
			out.HistoryCounts = append(out.HistoryCounts, uint32(older))
			for j := 1; j < len(vs); j++ {
				hvecs = appendFloats(hvecs, vs[j].Values, f16)
				addMeta(hist, &vs[j], now)
				if nColumns > 0 {
					hscores = appendScores(hscores, vs[j].Scores, nColumns, f16)
				}
			}
		}
	}
	out.Vectors, out.Scores = vecs, scores
	if h > 1 {
		out.HistoryVectors, out.HistoryScores, out.HistoryMeta = hvecs, hscores, hist
	}
	return out, nil
}

// addMeta appends one row of meta columns (v nil: a user not found, all 0).
func addMeta(m *pb.VectorMetaColumns, v *store.Vector, now float64) {
	var ts, wv, newest int64
	var nev int32
	age := 0.0
	if v != nil {
		ts, wv, nev = v.ComputedAtMs, v.WindowVersion, int32(v.NEvents)
		age = math.Max(0, now-float64(ts)/1000.0)
		if v.HasMarker {
			newest = v.MarkerTsMs
		}
	}
	m.ComputedAtMs = append(m.ComputedAtMs, ts)
	m.AgeSeconds = append(m.AgeSeconds, age)
	m.NEvents = append(m.NEvents, nev)
	m.WindowVersion = append(m.WindowVersion, wv)
	m.NewestEventMs = append(m.NewestEventMs, newest)
	m.ShortTermEvents = append(m.ShortTermEvents, 0)
}

// appendScores appends n score columns: the stored ones, NaN where the record holds none
// (embeddings._scores).
func appendScores(buf []byte, s []float32, n int, f16 bool) []byte {
	nan := math.Float32frombits(0x7fc00000)
	for j := 0; j < n; j++ {
		x := nan
		if j < len(s) {
			x = s[j]
		}
		buf = appendFloat(buf, x, f16)
	}
	return buf
}

func appendFloats(buf []byte, xs []float32, f16 bool) []byte {
	for _, x := range xs {
		buf = appendFloat(buf, x, f16)
	}
	return buf
}

func appendFloat(buf []byte, x float32, f16 bool) []byte {
	if f16 {
		return binary.LittleEndian.AppendUint16(buf, store.FloatToHalf(x))
	}
	return binary.LittleEndian.AppendUint32(buf, math.Float32bits(x))
}
