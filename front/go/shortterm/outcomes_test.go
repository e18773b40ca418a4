package shortterm

import (
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"testing"
)

// outcomeFixtures: testdata/head.json's "outcomes" (gen_head.py outcome_cases).
type outcomeFixtures struct {
	Outcomes struct {
		E     int      `json:"e"`
		Z     []uint32 `json:"z_bits"`
		Cases []struct {
			Name   string   `json:"name"`
			JSON   string   `json:"json"`
			OK     bool     `json:"ok"`
			N      int      `json:"n"`
			Scores []uint32 `json:"scores_bits"`
		} `json:"cases"`
	} `json:"outcomes"`
}

// The scores of outcomes.json texts as OutcomeHeads.from_json(...).scores gave them: within
// 1e-6 (numpy's float32 matmul sums in its own order); texts it might read otherwise refused.
func TestOutcomeScoresAsNumpy(t *testing.T) {
	raw, err := os.ReadFile("../testdata/head.json")
	if err != nil {
		t.Fatal(err)
	}
	var f outcomeFixtures
	if err := json.Unmarshal(raw, &f); err != nil {
		t.Fatal(err)
	}
	o := f.Outcomes
	z := floats(o.Z)
	rows := len(z) / o.E
	if len(o.Cases) < 10 || rows < 2 {
		t.Fatalf("%d cases, %d vectors", len(o.Cases), rows)
	}
	for _, c := range o.Cases {
		heads, err := ParseOutcomes([]byte(c.JSON))
		if !readAsWanted(t, c.Name, c.OK, err) {
			continue
		}
		if heads.N() != c.N || heads.E != o.E || len(c.Scores) != rows*c.N {
			t.Errorf("%s: %d columns of dimension %d, want %d of %d", c.Name, heads.N(), heads.E,
				c.N, o.E)
			continue
		}
		got := make([]float32, heads.N())
		worst, same := 0.0, 0
		for r := 0; r < rows; r++ {
			heads.Scores(got, z[r*o.E:(r+1)*o.E])
			for j, x := range got {
				want := math.Float32frombits(c.Scores[r*c.N+j])
				d := math.Abs(float64(x) - float64(want))
				if !(d <= worst) {
					worst = d
				}
				if x == want {
					same++
				}
			}
		}
		if !(worst <= 1e-6) {
			t.Errorf("%s: max |score - numpy's| %g > 1e-6", c.Name, worst)
		}
		t.Logf("%s: %d columns, max |diff| %.3g, %d of %d bit for bit", c.Name, c.N, worst, same,
			rows*c.N)
	}
}

// LoadOutcomes: absent (nil, no error) only beside a head file; no head file, an unreadable
// or unparsable file, or a name that is no version: an error.
func TestLoadOutcomes(t *testing.T) {
	dir := t.TempDir()
	folder := filepath.Join(dir, "v1")
	if err := os.Mkdir(folder, 0o755); err != nil {
		t.Fatal(err)
	}
	write := func(name, text string) {
		if err := os.WriteFile(filepath.Join(folder, name), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := LoadOutcomes(dir, "v1"); err == nil {
		t.Error("no head file: want an error")
	}
	if _, err := LoadOutcomes(dir, "../v1"); err == nil {
		t.Error("not a version name: want an error")
	}
	write(File, "npz")
	if o, err := LoadOutcomes(dir, "v1"); o != nil || err != nil {
		t.Errorf("no outcomes.json: %v %v, want nil, nil", o, err)
	}
	write(OutcomesFile, `{"names": ["(any)"]}`)
	if _, err := LoadOutcomes(dir, "v1"); err == nil {
		t.Error("a partial outcomes.json: want an error")
	}
	write(OutcomesFile, `{"names": ["(any)", "type=a", "p"], "horizons_ms": [1], "weight":`+
		` [[1, 2], [3, 4], [5, 6]], "bias": [0, 0.5, 1], "a": [[1, 1, 1]], "b": [[0, 0, 0]],`+
		` "calibrated": [[true, false, true]]}`)
	o, err := LoadOutcomes(dir, "v1")
	if err != nil || o.N() != 2 || o.E != 2 {
		t.Fatalf("%v %v", o, err)
	}
	got := make([]float32, 2)
	o.Scores(got, []float32{1, -1})
	want := []float32{float32(1 / (1 + math.Exp(1))), float32(1 / (1 + math.Exp(0.5)))}
	for j := range got {
		if math.Abs(float64(got[j]-want[j])) > 1e-7 {
			t.Errorf("score %d: %v, want %v", j, got[j], want[j])
		}
	}
	if err := os.Remove(filepath.Join(folder, OutcomesFile)); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(folder, OutcomesFile), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadOutcomes(dir, "v1"); err == nil {
		t.Error("outcomes.json a folder: want an error")
	}
}
