package front

import (
	"math"
	"strconv"
	"sync"
	"time"

	pb "persona/clients/go/personav1"
	"persona/front/go/resp"
	"persona/front/go/store"
)

// heads remembers, per version, whether the upstream serves it with a short-term head,
// learnt from the `part` of the GetEmbeddings answers it forwarded: a default or combined
// request answered NEARLINE (no head), COMBINED (a head, of the served dimension, or
// Python would have refused the request), a SHORT_TERM one answered SHORT_TERM (a head).
// Until known, or after ttl, such requests go up.
type heads struct {
	ttl time.Duration
	mu  sync.Mutex
	of  map[string]headSeen
}

type headSeen struct {
	has bool
	at  time.Time
}

func (h *heads) learn(version string, has bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.of) > 256 {
		h.of = map[string]headSeen{}
	}
	h.of[version] = headSeen{has, time.Now()}
}

// known: whether the version has a head, and whether that is known (within ttl).
func (h *heads) known(version string) (has, ok bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	s, ok := h.of[version]
	if !ok || time.Since(s.at) >= h.ttl {
		return false, false
	}
	return s.has, true
}

// mode of a local answer: what its rows hold (embeddings.py's `part` of the result).
type mode int

const (
	nearline  mode = iota // the stored vectors (no head, or part NEARLINE)
	combined              // nearline + the head's delta
	shortTerm             // the head's delta alone
)

// localMode: how the front answers the request's part under the version, or false
// (forward: the version's head is not known, or SHORT_TERM without a head: Python's error).
func (f *Front) localMode(req *pb.GetEmbeddingsRequest, version string) (mode, bool) {
	switch req.Part {
	case pb.VectorPart_VECTOR_PART_NEARLINE:
		return nearline, true
	case pb.VectorPart_VECTOR_PART_UNSPECIFIED, pb.VectorPart_VECTOR_PART_COMBINED:
		has, ok := f.heads.known(version)
		if has {
			return combined, ok
		}
		return nearline, ok
	case pb.VectorPart_VECTOR_PART_SHORT_TERM:
		has, ok := f.heads.known(version)
		return shortTerm, ok && has
	}
	return nearline, false
}

// metaCmd is read_recent's `HMGET p:{B}:m:<uid> v d<ver>` (recent.packed_metas, with the
// head's row_dim), sent with the user's LRANGE in the same pipelined round trip.
func metaCmd(uid string, field []byte) resp.Cmd {
	key := store.MetaKey(uid)
	return resp.Cmd{Slot: resp.KeySlot(key), Args: [][]byte{[]byte("HMGET"), key, []byte("v"), field}}
}

// folded is the head's part of one user's row (folding.Folded): the delta ingest stored,
// its events and its newest event's ts_ms; events 0: nothing folded (zeros).
type folded struct {
	events int32
	newest int64
	delta  []float32
}

// foldFromDeltas is recent.read_recent's first source and folding.fold for each distinct
// user (`vs` its stored values, newest first; `meta` its HMGET reply): a user not found,
// whose newest value has no marker (or a marker ts_ms <= 0), or whose meta v equals that
// value's window_version has nothing to fold; one whose delta answers (deltas.delta_batch)
// folds it. The others need the short-term state or read_recent.lua: `need` lists them,
// `v` holds every user's meta v as read. A meta reply Python would fail on (not an array
// of two, a v that is not an integer) is errRecord, an error reply errStoreReply.
func foldFromDeltas(stored [][]store.Vector, metas []resp.Reply, dim int) (out []folded, need []int, v []int64, err error) {
	out, v = make([]folded, len(stored)), make([]int64, len(stored))
	for i, vs := range stored {
		m := metas[i]
		if m.Err() != "" {
			return nil, nil, nil, errStoreReply
		}
		if m.Kind != '*' || m.Nil || len(m.Array) != 2 {
			return nil, nil, nil, errRecord
		}
		if raw := m.Array[0]; !raw.Nil && len(raw.Str) > 0 {
			if raw.Kind != '$' {
				return nil, nil, nil, errRecord
			}
			n, err := strconv.ParseInt(string(raw.Str), 10, 64)
			if err != nil {
				return nil, nil, nil, errRecord // int() may take it, or fail: Python's answer
			}
			v[i] = n
		}
		if len(vs) == 0 || !vs[0].HasMarker || vs[0].MarkerTsMs <= 0 || v[i] == vs[0].WindowVersion {
			continue
		}
		if m.Array[1].Nil || m.Array[1].Kind != '$' {
			need = append(need, i) // no delta: the state or the window
			continue
		}
		d, ok := store.DecodeDelta(m.Array[1].Str, dim)
		if !ok || !d.Answers(vs[0].WindowVersion, v[i], dim) {
			need = append(need, i) // a stale delta, or one of another size
			continue
		}
		if d.NEvents > math.MaxInt32 {
			return nil, nil, nil, errShortTerm // Python's int32 count wraps
		}
		out[i] = folded{events: int32(d.NEvents), newest: d.NewestMs, delta: d.Values}
	}
	return out, need, v, nil
}

// anyFolded: some user's row moves (include_scores then rescores it with the version's
// outcome heads: rescore.go).
func anyFolded(fs []folded) bool {
	for _, f := range fs {
		if f.events > 0 {
			return true
		}
	}
	return false
}

// row is the user's returned row under m (embeddings.py: rows + folded.short, or
// folded.short): z the nearline row (zeros when not found), the sum in float32.
func (fo *folded) row(m mode, z, zeros, buf []float32) []float32 {
	short := zeros
	if fo.events > 0 {
		short = fo.delta
	}
	switch m {
	case combined:
		store.AddFloats(buf, z, short)
		return buf
	case shortTerm:
		return short
	}
	return z
}
