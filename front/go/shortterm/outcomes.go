package shortterm

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"unicode/utf8"
)

// OutcomesFile is the version's outcome heads (encoder/propensity.py OutcomeHeads.to_json),
// read by encoder/shortterm.py ShortTermHead.read beside the head.
const OutcomesFile = "outcomes.json"

// MaxServed is propensity.MAX_SERVED: the score columns a record carries at most.
const MaxServed = 256

// Outcomes is what serving uses of OutcomeHeads: the served score columns
// (`score_columns()`: outcome-major, "(any)" and "type=..." outcomes at every horizon, at
// most MaxServed), each its weight row (E, float32, the vector temperature folded in), bias
// (float32) and Platt slope and intercept (float64). `calibrated` is not used by
// `scores()` (it calibrates every cell with its a, b).
type Outcomes struct {
	E     int
	cells []cell
}

type cell struct {
	w    []float32
	bias float32
	a, b float64
}

// N is the number of score columns the heads serve.
func (o *Outcomes) N() int { return len(o.cells) }

// Scores sets out (N) to OutcomeHeads.scores of one vector z (E): the float32 logit
// z . w + bias, then a * s + b in float64, the sigmoid as propensity._sigmoid
// (0.5 * (1 + tanh(0.5 x)), float64) and the result cast to float32. The dot is summed as
// OpenBLAS's sgemm kernels sum a float32 matrix product (numpy's `z @ weight.T` of three
// rows or more): one float32 fused multiply-add after another along E, bit for bit
// (testdata/head.json); numpy's product of one or two rows goes through other kernels
// (gemv, small-matrix ones) that sum in other orders: a few float32 ulps of the logit
// apart, as Python's own scores of one vector are from one batch size to another.
func (o *Outcomes) Scores(out, z []float32) {
	z = z[:o.E]
	j := 0
	for ; j+4 <= len(o.cells); j += 4 { // four independent chains: the adds overlap
		w0, w1, w2, w3 := o.cells[j].w[:o.E], o.cells[j+1].w[:o.E], o.cells[j+2].w[:o.E],
			o.cells[j+3].w[:o.E]
		var s0, s1, s2, s3 float32
		for k, x := range z {
			zk := float64(x)
			s0 = float32(float64(w0[k])*zk + float64(s0)) // the product is exact in float64
			s1 = float32(float64(w1[k])*zk + float64(s1))
			s2 = float32(float64(w2[k])*zk + float64(s2))
			s3 = float32(float64(w3[k])*zk + float64(s3))
		}
		out[j], out[j+1], out[j+2], out[j+3] = o.cells[j].score(s0), o.cells[j+1].score(s1),
			o.cells[j+2].score(s2), o.cells[j+3].score(s3)
	}
	for ; j < len(o.cells); j++ {
		w := o.cells[j].w[:o.E]
		var s float32
		for k, x := range z {
			s = float32(float64(w[k])*float64(x) + float64(s))
		}
		out[j] = o.cells[j].score(s)
	}
}

// score: the calibrated probability of a cell's raw dot product.
func (c *cell) score(dot float32) float32 {
	s := float64(dot + c.bias)
	x := float64(c.a*s) + c.b // no fused multiply-add: numpy multiplies, then adds
	return float32(0.5 * (1 + math.Tanh(0.5*x)))
}

// ParseOutcomes reads an outcomes.json as OutcomeHeads.from_json would, more strictly:
// anything from_json or scores() might read otherwise than here (a missing key, null or
// non-number values that numpy would convert, ragged or mis-shaped arrays, NaN / Infinity,
// integers beyond 2^53, invalid UTF-8) is an error, and the front then leaves rescoring to
// Python.
func ParseOutcomes(text []byte) (*Outcomes, error) {
	if !utf8.Valid(text) {
		return nil, errors.New("not UTF-8")
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(text, &top); err != nil {
		return nil, err
	}
	get := func(key string) (interface{}, error) {
		raw, ok := top[key]
		if !ok {
			return nil, fmt.Errorf("no %q", key)
		}
		d := json.NewDecoder(bytes.NewReader(raw))
		d.UseNumber()
		var v interface{}
		if err := d.Decode(&v); err != nil {
			return nil, fmt.Errorf("%q: %v", key, err)
		}
		return v, nil
	}
	var v [7]interface{}
	for i, key := range []string{"names", "horizons_ms", "weight", "bias", "a", "b", "calibrated"} {
		var err error
		if v[i], err = get(key); err != nil {
			return nil, err
		}
	}
	names, ok := v[0].([]interface{})
	if !ok || len(names) == 0 {
		return nil, errors.New(`"names": want a non-empty list of strings`)
	}
	ny := len(names)
	horizons, err := numbers(v[1])
	if err != nil || len(horizons) == 0 {
		return nil, errors.New(`"horizons_ms": want a non-empty list of numbers`)
	}
	k := len(horizons)
	w, err := matrix(v[2], k*ny, -1)
	if err != nil || len(w[0]) == 0 {
		return nil, fmt.Errorf(`"weight": want (%d, E) numbers, E >= 1`, k*ny)
	}
	bias, err := numbers(v[3])
	if err != nil || len(bias) != k*ny {
		return nil, fmt.Errorf(`"bias": want %d numbers`, k*ny)
	}
	a, errA := matrix(v[4], k, ny)
	b, errB := matrix(v[5], k, ny)
	if errA != nil || errB != nil {
		return nil, fmt.Errorf(`"a", "b": want (%d, %d) numbers each`, k, ny)
	}
	if !bools(v[6], k, ny) {
		return nil, fmt.Errorf(`"calibrated": want (%d, %d) booleans`, k, ny)
	}
	o := &Outcomes{E: len(w[0])}
	for j, n := range names { // score_columns(): outcome-major
		s, ok := n.(string)
		if !ok {
			return nil, errors.New(`"names": want a non-empty list of strings`)
		}
		if s != "(any)" && !strings.HasPrefix(s, "type=") {
			continue
		}
		for kk := 0; kk < k && len(o.cells) < MaxServed; kk++ {
			row := kk*ny + j // logits reshaped (B, K, Y)
			o.cells = append(o.cells, cell{w: f32s(w[row]), bias: float32(bias[row]),
				a: a[kk][j], b: b[kk][j]})
		}
	}
	return o, nil
}

// matrix: v as a list of rows of JSON numbers, rows x cols (cols -1: any, rows alike).
func matrix(v interface{}, rows, cols int) ([][]float64, error) {
	list, ok := v.([]interface{})
	if !ok || len(list) != rows {
		return nil, errors.New("shape")
	}
	out := make([][]float64, rows)
	for i, r := range list {
		row, err := numbers(r)
		if err != nil {
			return nil, err
		}
		if (cols >= 0 && len(row) != cols) || (i > 0 && len(row) != len(out[0])) {
			return nil, errors.New("shape")
		}
		out[i] = row
	}
	return out, nil
}

// numbers: a flat list of JSON numbers (integers exact in float64 only; "-0" as Python's
// int 0, positive).
func numbers(v interface{}) ([]float64, error) {
	list, ok := v.([]interface{})
	if !ok {
		return nil, errors.New("not a list")
	}
	out := make([]float64, len(list))
	for i, x := range list {
		n, ok := x.(json.Number)
		if !ok {
			return nil, errors.New("not a number")
		}
		f, err := n.Float64()
		if err != nil || math.IsInf(f, 0) || math.IsNaN(f) {
			return nil, errors.New("not a finite float64")
		}
		if !strings.ContainsAny(string(n), ".eE") { // a Python int
			if math.Abs(f) > 1<<53 {
				return nil, errors.New("an integer beyond 2^53")
			}
			if f == 0 {
				f = 0 // -0 -> +0
			}
		}
		out[i] = f
	}
	return out, nil
}

// bools: v is rows x cols JSON booleans.
func bools(v interface{}, rows, cols int) bool {
	list, ok := v.([]interface{})
	if !ok || len(list) != rows {
		return false
	}
	for _, r := range list {
		row, ok := r.([]interface{})
		if !ok || len(row) != cols {
			return false
		}
		for _, x := range row {
			if _, ok := x.(bool); !ok {
				return false
			}
		}
	}
	return true
}

// LoadOutcomes reads DIR/<version>/outcomes.json as ShortTermHead.read does: nil, nil when
// the version's head (shortterm.npz) is there and outcomes.json is not (Python's head then
// has no outcome heads: no rescoring); an error when the head file is not there (Python
// has no head yet, or none: nothing to be sure of) or the file does not read or parse.
func LoadOutcomes(dir, version string) (*Outcomes, error) {
	if !ValidName(version) {
		return nil, fmt.Errorf("%q is not a model version name", version)
	}
	folder := filepath.Join(dir, version)
	if _, err := os.Stat(filepath.Join(folder, File)); err != nil {
		return nil, err
	}
	text, err := os.ReadFile(filepath.Join(folder, OutcomesFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	o, err := ParseOutcomes(text)
	if err != nil {
		return nil, fmt.Errorf("%s: %v", OutcomesFile, err)
	}
	return o, nil
}
