package store

import (
	"encoding/hex"
	"math"
	"testing"

	"persona/front/go/resp"
)

// the short-term fixtures of testdata/records.json (gen_fixtures.py, short_term)
type shortFixtures struct {
	MetaKeys []struct {
		UID      string `json:"uid"`
		KeyHex   string `json:"key_hex"`
		Slot     int    `json:"slot"`
		FieldHex string `json:"field_hex"`
	} `json:"meta_keys"`
	Deltas []struct {
		Hex       string   `json:"hex"`
		WV        int64    `json:"wv"`
		V         int64    `json:"v"`
		Dim       int      `json:"dim"`
		OK        bool     `json:"ok"`
		Events    int32    `json:"events"`
		Newest    int64    `json:"newest"`
		DeltaBits []uint32 `json:"delta_bits"`
	} `json:"deltas"`
	Sums struct {
		A   []uint32 `json:"a_bits"`
		B   []uint32 `json:"b_bits"`
		Sum []uint32 `json:"sum_bits"`
	} `json:"sums"`
}

func loadShort(t *testing.T) shortFixtures {
	var f shortFixtures
	readFixtures(t, &f)
	if len(f.MetaKeys) == 0 || len(f.Deltas) == 0 || len(f.Sums.Sum) == 0 {
		t.Fatal("no short-term fixtures: run testdata/gen_fixtures.py")
	}
	return f
}

func TestMetaKeysMatchPython(t *testing.T) {
	for _, c := range loadShort(t).MetaKeys {
		k := MetaKey(c.UID)
		if hex.EncodeToString(k) != c.KeyHex || resp.KeySlot(k) != c.Slot {
			t.Errorf("%q: key %x slot %d, want %s %d", c.UID, k, resp.KeySlot(k), c.KeyHex, c.Slot)
		}
		if f := hex.EncodeToString(DeltaField("v1-serve")); f != c.FieldHex {
			t.Errorf("field %s, want %s", f, c.FieldHex)
		}
	}
}

func TestDeltasAsDeltaBatch(t *testing.T) {
	for i, c := range loadShort(t).Deltas {
		b, _ := hex.DecodeString(c.Hex)
		d, read := DecodeDelta(b, c.Dim)
		ok := read && d.Answers(c.WV, c.V, c.Dim)
		if ok != c.OK {
			t.Fatalf("case %d: answers %v, want %v", i, ok, c.OK)
		}
		if !ok {
			continue
		}
		if int32(d.NEvents) != c.Events || d.NewestMs != c.Newest {
			t.Errorf("case %d: events %d newest %d, want %d %d", i, d.NEvents, d.NewestMs,
				c.Events, c.Newest)
		}
		for j, x := range d.Values {
			if math.Float32bits(x) != c.DeltaBits[j] {
				t.Errorf("case %d [%d]: %08x, want %08x", i, j, math.Float32bits(x), c.DeltaBits[j])
			}
		}
	}
}

// combined = nearline + delta: Go's float32 addition is numpy's, bit for bit (signed
// zeros, infinities, NaN, overflow, subnormals included).
func TestFloat32SumsAsNumpy(t *testing.T) {
	s := loadShort(t).Sums
	a, b := make([]float32, len(s.A)), make([]float32, len(s.B))
	for i := range a {
		a[i], b[i] = math.Float32frombits(s.A[i]), math.Float32frombits(s.B[i])
	}
	out := make([]float32, len(a))
	AddFloats(out, a, b)
	for i, x := range out {
		if math.Float32bits(x) != s.Sum[i] {
			t.Errorf("[%d] %08x + %08x = %08x, want %08x", i, s.A[i], s.B[i], math.Float32bits(x), s.Sum[i])
		}
	}
}
