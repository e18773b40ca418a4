package front

import (
	"encoding/binary"
	"math"
	"testing"

	"persona/front/go/resp"
	"persona/front/go/store"
)

// deltaBytes packs a d<ver> value as deltas.pack_deltas does.
func deltaBytes(wv, v, newest int64, n uint32, vals []float32) []byte {
	b := binary.LittleEndian.AppendUint64(nil, uint64(wv))
	b = binary.LittleEndian.AppendUint64(b, uint64(v))
	b = binary.LittleEndian.AppendUint64(b, uint64(newest))
	b = binary.LittleEndian.AppendUint32(b, n)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(vals)))
	for _, x := range vals {
		b = binary.LittleEndian.AppendUint32(b, math.Float32bits(x))
	}
	return b
}

func meta(v string, d []byte) resp.Reply {
	r := resp.Reply{Kind: '*', Array: []resp.Reply{{Kind: '$', Nil: true}, {Kind: '$', Nil: true}}}
	if v != "" {
		r.Array[0] = resp.Reply{Kind: '$', Str: []byte(v)}
	}
	if d != nil {
		r.Array[1] = resp.Reply{Kind: '$', Str: d}
	}
	return r
}

func marked(wv, ts int64) []store.Vector {
	return []store.Vector{{Layout: 3, Values: []float32{1, 2}, WindowVersion: wv, HasMarker: true, MarkerTsMs: ts}}
}

// read_recent's rules, user by user: who has nothing to fold, whose delta answers, who
// needs the state or the window (`need`), and what forwards the whole request.
func TestFoldFromDeltas(t *testing.T) {
	good := deltaBytes(5, 7, 99, 2, []float32{0.5, -1})
	cases := []struct {
		name   string
		vs     []store.Vector
		meta   resp.Reply
		events int32
		fwd    bool // forwarded (an error)
		state  bool // needs the state or the window
	}{
		{"not found", nil, meta("", nil), 0, false, false},
		{"no marker", []store.Vector{{Layout: 2, Values: []float32{1, 2}, WindowVersion: 5}}, meta("7", nil), 0, false, false},
		{"marker ts 0", marked(5, 0), meta("7", nil), 0, false, false},
		{"nothing new", marked(5, 10), meta("5", nil), 0, false, false},
		{"no meta v", marked(0, 10), meta("", nil), 0, false, false},
		{"delta answers", marked(5, 10), meta("7", good), 2, false, false},
		{"no delta", marked(5, 10), meta("7", nil), 0, false, true},
		{"an APPLY since", marked(5, 10), meta("8", good), 0, false, true},
		{"another vector", marked(4, 10), meta("7", good), 0, false, true},
		{"no events", marked(5, 10), meta("7", deltaBytes(5, 7, 99, 0, []float32{0.5, -1})), 0, false, true},
		{"events beyond int32", marked(5, 10), meta("7", deltaBytes(5, 7, 99, 1<<31, []float32{0.5, -1})), 0, true, false},
		{"another size", marked(5, 10), meta("7", good[:len(good)-1]), 0, false, true},
		{"v not an integer", nil, meta("x", nil), 0, true, false},
		{"an error reply", nil, resp.Reply{Kind: '-', Str: []byte("WRONGTYPE")}, 0, true, false},
	}
	for _, c := range cases {
		got, need, _, err := foldFromDeltas([][]store.Vector{c.vs}, []resp.Reply{c.meta}, 2)
		if (err != nil) != c.fwd || (len(need) == 1) != c.state {
			t.Fatalf("%s: err %v need %v, want forward %v state %v", c.name, err, need, c.fwd, c.state)
		}
		if err == nil && got[0].events != c.events {
			t.Fatalf("%s: events %d, want %d", c.name, got[0].events, c.events)
		}
	}
	got, _, _, _ := foldFromDeltas([][]store.Vector{marked(5, 10)}, []resp.Reply{meta("7", good)}, 2)
	z, zeros, buf := []float32{float32(math.Copysign(0, -1)), 3}, make([]float32, 2), make([]float32, 2)
	if r := got[0].row(combined, z, zeros, buf); r[0] != 0.5 || r[1] != 2 {
		t.Fatalf("combined %v", r)
	}
	if r := got[0].row(shortTerm, z, zeros, buf); r[0] != 0.5 || r[1] != -1 {
		t.Fatalf("short term %v", r)
	}
	var none folded
	if r := none.row(combined, z, zeros, buf); math.Signbit(float64(r[0])) || r[1] != 3 {
		t.Fatalf("nothing new: %v, want +0 (z + 0.0)", r)
	}
	if r := none.row(nearline, z, zeros, buf); !math.Signbit(float64(r[0])) {
		t.Fatalf("nearline: %v, want z", r)
	}
}
