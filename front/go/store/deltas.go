package store

import (
	"encoding/binary"
	"math"
	"strconv"
)

// MetaKey is the user's meta hash, p:{B}:m:<uid> (layout.meta_key): the slot of its
// vector keys.
func MetaKey(uid string) []byte {
	k := make([]byte, 0, 16+len(uid))
	k = append(k, "p:{"...)
	k = strconv.AppendInt(k, int64(Bucket(uid)), 10)
	k = append(k, "}:m:"...)
	return append(k, uid...)
}

// DeltaField is the meta field d<ver> (layout.delta_field): the short-term delta ingest
// computed under the version (LAYOUT.md "Short-term delta").
func DeltaField(version string) []byte { return append([]byte("d"), version...) }

// Delta is a decoded d<ver> value (deltas.pack_deltas): the window version of the vector
// it was computed on, the window version it covers, the newest folded event's ts_ms, the
// events folded, and the head's output.
type Delta struct {
	WindowVersion int64
	Covers        int64
	NewestMs      int64
	NEvents       uint32
	Dim           uint32
	Values        []float32
}

const deltaHead = 32

// DecodeDelta reads a d<ver> value of a dim-component vector as deltas.delta_batch does:
// a value of any other size reads as all zeros there (never answers), so ok is false.
func DecodeDelta(b []byte, dim int) (Delta, bool) {
	var d Delta
	if len(b) != deltaHead+4*dim {
		return d, false
	}
	d.WindowVersion = int64(binary.LittleEndian.Uint64(b[0:]))
	d.Covers = int64(binary.LittleEndian.Uint64(b[8:]))
	d.NewestMs = int64(binary.LittleEndian.Uint64(b[16:]))
	d.NEvents = binary.LittleEndian.Uint32(b[24:])
	d.Dim = binary.LittleEndian.Uint32(b[28:])
	d.Values = make([]float32, dim)
	for i := range d.Values {
		d.Values[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[deltaHead+4*i:]))
	}
	return d, true
}

// Answers is delta_batch's rule: the value was computed on the user's newest vector
// (its window_version wv), covers the window as read (meta v) with dim components and at
// least one event.
func (d *Delta) Answers(wv, v int64, dim int) bool {
	return d.Values != nil && d.WindowVersion == wv && d.Covers == v && int(d.Dim) == dim &&
		d.NEvents > 0
}

// AddFloats sets out[i] = a[i] + b[i] in float32 (IEEE round to nearest even), as numpy
// adds two float32 arrays: a combined row is the nearline vector + the delta.
func AddFloats(out, a, b []float32) {
	for i := range out {
		out[i] = a[i] + b[i]
	}
}
