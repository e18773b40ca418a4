package shortterm

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// fixtures of testdata/head.json (gen_head.py)
type fixtures struct {
	Head struct {
		NpzHex        string   `json:"npz_hex"`
		CompressedHex string   `json:"compressed_hex"`
		NoB2Hex       string   `json:"no_b2_hex"`
		EDim          int      `json:"e"`
		HDim          int      `json:"h"`
		MaxEvents     int      `json:"max_events"`
		WRank         []uint32 `json:"w_rank_bits"`
		W1z           []uint32 `json:"w1z_bits"`
		W2            []uint32 `json:"w2_bits"`
		B2            []uint32 `json:"b2_bits"`
	} `json:"head"`
	Npy []struct {
		Name  string   `json:"name"`
		Hex   string   `json:"hex"`
		OK    bool     `json:"ok"`
		Shape []int    `json:"shape"`
		F32   []uint32 `json:"f32_bits"`
		I64   []int64  `json:"i64"`
	} `json:"npy"`
	Delta struct {
		Lengths []int    `json:"lengths"`
		Z       []uint32 `json:"z_bits"`
		Rows    []uint32 `json:"rows_bits"`
		Delta   []uint32 `json:"delta_bits"`
	} `json:"delta"`
	States []struct {
		Name     string   `json:"name"`
		Hex      *string  `json:"hex"`
		Since    int64    `json:"since"`
		Now      int64    `json:"now"`
		MarkerTs int64    `json:"marker_ts"`
		Most     int      `json:"most"`
		RowDim   int      `json:"row_dim"`
		OK       bool     `json:"ok"`
		N        int      `json:"n"`
		Rows     []uint32 `json:"rows_bits"`
		NewestMs int64    `json:"newest_ms"`
	} `json:"states"`
}

func load(t *testing.T) fixtures {
	t.Helper()
	raw, err := os.ReadFile("../testdata/head.json")
	if err != nil {
		t.Fatal(err)
	}
	var f fixtures
	if err := json.Unmarshal(raw, &f); err != nil {
		t.Fatal(err)
	}
	return f
}

func unhex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func floats(bits []uint32) []float32 {
	out := make([]float32, len(bits))
	for i, b := range bits {
		out[i] = math.Float32frombits(b)
	}
	return out
}

func sameBits(a []float32, bits []uint32) bool {
	if len(a) != len(bits) {
		return false
	}
	for i := range a {
		if math.Float32bits(a[i]) != bits[i] {
			return false
		}
	}
	return true
}

// readAsWanted reports a case read where it should be refused or refused where it should
// be read; true: it was read as wanted, its values are for the caller to check.
func readAsWanted(t *testing.T, name string, ok bool, err error) bool {
	t.Helper()
	switch {
	case !ok && err == nil:
		t.Errorf("%s: read, want refused", name)
	case ok && err != nil:
		t.Errorf("%s: %v", name, err)
	}
	return ok && err == nil
}

func TestNpyAsNumpyWroteIt(t *testing.T) {
	for _, c := range load(t).Npy {
		a, err := ReadNpy(unhex(t, c.Hex))
		if !readAsWanted(t, c.Name, c.OK, err) {
			continue
		}
		if fmt.Sprint(a.Shape) != fmt.Sprint(c.Shape) && !(len(a.Shape) == 0 && len(c.Shape) == 0) {
			t.Errorf("%s: shape %v, want %v", c.Name, a.Shape, c.Shape)
		}
		if c.I64 != nil && fmt.Sprint(a.I64) != fmt.Sprint(c.I64) {
			t.Errorf("%s: %v, want %v", c.Name, a.I64, c.I64)
		}
		if c.F32 != nil && !sameBits(a.F32, c.F32) {
			t.Errorf("%s: values differ", c.Name)
		}
	}
}

func TestHeadFromNpz(t *testing.T) {
	f := load(t)
	for _, which := range []string{f.Head.NpzHex, f.Head.CompressedHex} {
		h, err := Parse(unhex(t, which))
		if err != nil {
			t.Fatal(err)
		}
		if h.E != f.Head.EDim || h.H != f.Head.HDim || h.MaxEvents != f.Head.MaxEvents {
			t.Errorf("E %d H %d max_events %d", h.E, h.H, h.MaxEvents)
		}
		if !sameBits(h.WRank, f.Head.WRank) || !sameBits(h.W1z, f.Head.W1z) ||
			!sameBits(h.W2, f.Head.W2) || !sameBits(h.B2, f.Head.B2) {
			t.Error("weights differ from numpy's")
		}
	}
	if _, err := Parse(unhex(t, f.Head.NoB2Hex)); err == nil || !strings.Contains(err.Error(), "b2") {
		t.Errorf("a head without b2: %v", err)
	}
	if _, err := Parse([]byte("not a zip")); err == nil {
		t.Error("not a zip: parsed")
	}
}

// delta_rows' outputs within 1e-5 (the matrix products' sums are taken in another order).
func TestDeltaAsDeltaRows(t *testing.T) {
	f := load(t)
	h, err := Parse(unhex(t, f.Head.NpzHex))
	if err != nil {
		t.Fatal(err)
	}
	z, rows, want := floats(f.Delta.Z), floats(f.Delta.Rows), floats(f.Delta.Delta)
	out := make([]float32, h.E)
	at := 0
	for i, n := range f.Delta.Lengths {
		h.Delta(out, z[i*h.E:(i+1)*h.E], rows[at*h.H:(at+n)*h.H], n)
		at += n
		for e, x := range out {
			w := want[i*h.E+e]
			if d := math.Abs(float64(x - w)); !(d <= 1e-5) {
				t.Errorf("user %d (%d rows) [%d]: %g, want %g", i, n, e, x, w)
			}
			if n == 0 && math.Float32bits(x) != 0 {
				t.Errorf("user %d without rows: %g, want +0", i, x)
			}
		}
	}
}

func TestStatesAsStateBatch(t *testing.T) {
	for _, c := range load(t).States {
		var blob []byte
		if c.Hex != nil {
			blob = unhex(t, *c.Hex)
		}
		st := ParseState(blob, c.Since, c.Now, c.MarkerTs, c.Most, c.RowDim)
		if st.OK != c.OK || st.N != c.N || st.NewestMs != c.NewestMs || !sameBits(st.Rows, c.Rows) {
			t.Errorf("%s: ok %v n %d newest %d, want %v %d %d (rows equal %v)", c.Name, st.OK,
				st.N, st.NewestMs, c.OK, c.N, c.NewestMs, sameBits(st.Rows, c.Rows))
		}
	}
}

// Load: the version name checked, the rows parity sample required and reproduced.
func TestLoadChecksTheRowsParity(t *testing.T) {
	f := load(t)
	h, err := Parse(unhex(t, f.Head.NpzHex))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	ver := filepath.Join(dir, "v1-x")
	if err := os.MkdirAll(ver, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(ver, File), unhex(t, f.Head.NpzHex), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := Load(dir, "v1-x"); err == nil || !os.IsNotExist(err) {
		t.Errorf("no rows parity file: %v", err)
	}
	z, rows, want := floats(f.Delta.Z), floats(f.Delta.Rows), floats(f.Delta.Delta)
	var lines []string
	at := 0
	for i, n := range f.Delta.Lengths {
		rs := make([][]float32, n)
		for l := range rs {
			rs[l] = rows[(at+l)*h.H : (at+l+1)*h.H]
		}
		at += n
		b, _ := json.Marshal(map[string]interface{}{"nearline": z[i*h.E : (i+1)*h.E],
			"rows": rs, "delta": want[i*h.E : (i+1)*h.E]})
		lines = append(lines, string(b))
	}
	write := func(text string) {
		if err := os.WriteFile(filepath.Join(ver, RowsParityFile), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(strings.Join(lines, "\n") + "\n")
	got, n, err := Load(dir, "v1-x")
	if err != nil || got == nil || n != len(lines) {
		t.Fatalf("good head: %v (%d lines)", err, n)
	}
	for _, bad := range []string{"v1/../x", "../v1-x", "x1", ""} {
		if _, _, err := Load(dir, bad); err == nil || !strings.Contains(err.Error(), "version name") {
			t.Errorf("%q: %v", bad, err)
		}
	}
	off := strings.Replace(lines[1], `"delta":[`, `"delta":[1000,`, 1)
	var c parityCase
	_ = json.Unmarshal([]byte(lines[1]), &c)
	big := 1.0 // the tolerance is relative to the sample's largest component
	for _, l := range lines[1:] {
		var o parityCase
		_ = json.Unmarshal([]byte(l), &o)
		for _, x := range append(append([]float64{}, o.Delta...), o.Nearline...) {
			big = math.Max(big, math.Abs(x))
		}
	}
	c.Delta[0] += 2e-4 * big
	moved, _ := json.Marshal(c)
	for name, text := range map[string]string{
		"moved":      strings.Join(append([]string{string(moved)}, lines[2:]...), "\n"),
		"empty":      "\n",
		"not json":   lines[0] + "\n{",
		"row size":   strings.Replace(lines[1], `"rows":[[`, `"rows":[[1,`, 1),
		"delta size": off,
	} {
		write(text)
		if _, _, err := Load(dir, "v1-x"); err == nil {
			t.Errorf("%s: loaded", name)
		}
	}
}

// A head that gives NaN fails its parity check even when a later element matches (a NaN
// difference is never "at most" the tolerance, and must not be forgotten).
func TestVerifyRefusesNaN(t *testing.T) {
	h := &Head{E: 2, H: 2, WRank: []float32{1}, W1z: make([]float32, 4), W1n: make([]float32, 2),
		B1: make([]float32, 2), W2: make([]float32, 4), B2: []float32{float32(math.NaN()), 2}}
	line := []byte(`{"nearline": [0, 0], "rows": [[0, 0]], "delta": [0, 2]}` + "\n")
	if _, _, err := h.Verify(line); err == nil || !strings.Contains(err.Error(), "NaN") {
		t.Fatalf("a NaN delta verified: %v", err)
	}
	h.B2[0] = 0
	if n, worst, err := h.Verify(line); err != nil || n != 1 || worst != 0 {
		t.Fatalf("the same head without NaN: %d %v %v", n, worst, err)
	}
}

// The parity measure is shortterm.parity_error's: the largest |difference| over the
// sample's largest component (at least 1), so float32 sums in another order pass at any
// scale and a wrong head fails at any scale.
func TestVerifyIsRelative(t *testing.T) {
	h := &Head{E: 2, H: 2, WRank: []float32{1}, W1z: make([]float32, 4), W1n: make([]float32, 2),
		B1: make([]float32, 2), W2: make([]float32, 4), B2: []float32{100, 0.5}}
	for _, c := range []struct {
		want string
		ok   bool
	}{
		{"[100.005, 0.5]", true}, // |diff| 5e-3, relative 5e-5
		{"[100.02, 0.5]", false}, // relative 2e-4
		{"[100, 0.5002]", true},  // |diff| 2e-4 beside a component of 100: 2e-6 relative
	} {
		line := []byte(`{"nearline": [0, 0], "rows": [[0, 0]], "delta": ` + c.want + "}\n")
		_, worst, err := h.Verify(line)
		if err != nil {
			t.Fatal(err)
		}
		if got := worst <= ParityTol; got != c.ok {
			t.Errorf("%s: relative |diff| %g, passes %v", c.want, worst, got)
		}
	}
}

// The header's shape is a Python tuple literal (np.lib.format reads it with
// ast.literal_eval and refuses anything else): "(2)" is an int, "(,2)" no literal.
func TestNpyShapeIsATuple(t *testing.T) {
	npy := func(shape string, n int) []byte {
		head := fmt.Sprintf("{'descr': '<f4', 'fortran_order': False, 'shape': %s, }\n", shape)
		b := append([]byte("\x93NUMPY\x01\x00"), byte(len(head)), byte(len(head)>>8))
		return append(append(b, head...), make([]byte, 4*n)...)
	}
	for _, c := range []struct {
		shape string
		n     int
		want  string // "" refused
	}{
		{"()", 1, "[]"}, {"( )", 1, "[]"}, {"(2,)", 2, "[2]"}, {"(1, 2)", 2, "[1 2]"},
		{"(1, 2,)", 2, "[1 2]"}, {"(2)", 2, ""}, {"(,2)", 2, ""}, {"(2,,)", 2, ""},
		{"(1,,2)", 2, ""}, {"(,)", 0, ""},
	} {
		a, err := ReadNpy(npy(c.shape, c.n))
		switch {
		case c.want == "" && err == nil:
			t.Errorf("%s: read as %v, want refused", c.shape, a.Shape)
		case c.want != "" && err != nil:
			t.Errorf("%s: %v", c.shape, err)
		case c.want != "" && fmt.Sprint(a.Shape) != c.want:
			t.Errorf("%s: shape %v, want %s", c.shape, a.Shape, c.want)
		}
	}
}
