package store

import (
	"encoding/hex"
	"encoding/json"
	"math"
	"os"
	"testing"

	"persona/front/go/resp"
)

// testdata/records.json: written by testdata/gen_fixtures.py from the Python store code.
type fixtures struct {
	Records []struct {
		Name          string   `json:"name"`
		Hex           string   `json:"hex"`
		ValuesBits    []uint32 `json:"values_bits"`
		ComputedAtMs  int64    `json:"computed_at_ms"`
		WindowVersion int64    `json:"window_version"`
		NEvents       uint32   `json:"n_events"`
		ScoresBits    []uint32 `json:"scores_bits"`
		MarkerTsMs    *int64   `json:"marker_ts_ms"`
	} `json:"records"`
	BadRecords []string `json:"bad_records"`
	Halves     struct {
		FloatBits []uint32 `json:"float_bits"`
		HalfBits  []uint16 `json:"half_bits"`
	} `json:"halves"`
	Keys []struct {
		UID, Version string
		KeyHex       string `json:"key_hex"`
		Slot         int
	} `json:"keys"`
}

// readFixtures decodes testdata/records.json (written by testdata/gen_fixtures.py) into v.
func readFixtures(t *testing.T, v interface{}) {
	raw, err := os.ReadFile("../testdata/records.json")
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, v); err != nil {
		t.Fatal(err)
	}
}

func load(t *testing.T) fixtures {
	var f fixtures
	readFixtures(t, &f)
	return f
}

func TestDecodeMatchesPython(t *testing.T) {
	f := load(t)
	if len(f.Records) == 0 {
		t.Fatal("no fixtures")
	}
	for _, c := range f.Records {
		rec, _ := hex.DecodeString(c.Hex)
		v, err := Decode(rec)
		if err != nil {
			t.Fatalf("%s: %v", c.Name, err)
		}
		if v.ComputedAtMs != c.ComputedAtMs || v.WindowVersion != c.WindowVersion || v.NEvents != c.NEvents {
			t.Fatalf("%s: header %+v", c.Name, v)
		}
		if len(v.Values) != len(c.ValuesBits) {
			t.Fatalf("%s: dim %d", c.Name, len(v.Values))
		}
		for i, b := range c.ValuesBits {
			if math.Float32bits(v.Values[i]) != b {
				t.Fatalf("%s: value %d", c.Name, i)
			}
		}
		if (c.ScoresBits == nil) != (v.Scores == nil) || len(c.ScoresBits) != len(v.Scores) {
			t.Fatalf("%s: scores %v", c.Name, v.Scores)
		}
		for i, b := range c.ScoresBits {
			if math.Float32bits(v.Scores[i]) != b {
				t.Fatalf("%s: score %d", c.Name, i)
			}
		}
		if (c.MarkerTsMs != nil) != v.HasMarker || (v.HasMarker && *c.MarkerTsMs != v.MarkerTsMs) {
			t.Fatalf("%s: marker %v %d", c.Name, v.HasMarker, v.MarkerTsMs)
		}
	}
	for _, h := range f.BadRecords {
		rec, _ := hex.DecodeString(h)
		if _, err := Decode(rec); err == nil {
			t.Fatalf("bad record %s decoded", h)
		}
	}
}

func TestHalvesMatchNumpy(t *testing.T) {
	f := load(t)
	for i, b := range f.Halves.FloatBits {
		got := FloatToHalf(math.Float32frombits(b))
		if got != f.Halves.HalfBits[i] {
			t.Fatalf("float %08x: half %04x, numpy %04x", b, got, f.Halves.HalfBits[i])
		}
		back := HalfToFloat(got)
		if FloatToHalf(back) != got {
			t.Fatalf("half %04x does not round-trip", got)
		}
	}
	for h := 0; h < 1<<16; h++ { // every half widens and narrows back to itself
		if FloatToHalf(HalfToFloat(uint16(h))) != uint16(h) {
			t.Fatalf("half %04x", h)
		}
	}
}

func TestKeysMatchPython(t *testing.T) {
	for _, k := range load(t).Keys {
		key := VectorKey(k.UID, k.Version)
		if hex.EncodeToString(key) != k.KeyHex {
			t.Fatalf("%q: key %q", k.UID, key)
		}
		if resp.KeySlot(key) != k.Slot {
			t.Fatalf("%q: slot %d, want %d", k.UID, resp.KeySlot(key), k.Slot)
		}
	}
}
