package shortterm

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"regexp"
)

// Files of a version's folder in the registry (encoder/shortterm.py FILE, ROWS_PARITY_FILE).
const (
	File           = "shortterm.npz"
	RowsParityFile = "shortterm_rows_parity.jsonl"
	// ParityTol is shortterm.PARITY_TOL: the largest |delta - expected| a head may give
	// its rows parity sample, relative to the sample's largest component (Verify).
	ParityTol = 1e-4
)

// Head is what the front uses of encoder.shortterm.HeadArrays: rank weights (R), W1z
// (H x E, row-major), w1n, b1 (H), W2 (E x H), b2 (E), max_events; H is also the row length
// of the short-term state's entries (`row_dim`, q's second dimension).
type Head struct {
	E, H, MaxEvents int
	WRank           []float32
	W1z, W1n, B1    []float32
	W2, B2          []float32
}

// name is encoder.registry.check_name's pattern: a version folder of the registry.
var name = regexp.MustCompile(`^v[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// ValidName: whether version names one folder of a registry (check_name).
func ValidName(version string) bool { return name.MatchString(version) }

// Parse reads a shortterm.npz (HeadArrays.to_bytes); q and offsets are not kept, q's
// header only gives H.
func Parse(npz []byte) (*Head, error) {
	z, err := OpenNpz(npz)
	if err != nil {
		return nil, err
	}
	get := func(name string, shape ...int) ([]float32, error) {
		a, err := z.Array(name)
		if err != nil {
			return nil, err
		}
		if a.F32 == nil || !sameShape(a.Shape, shape) {
			return nil, fmt.Errorf("array %q: shape %v, want %v float32", name, a.Shape, shape)
		}
		return a.F32, nil
	}
	w2, err := z.Array("w2")
	if err != nil {
		return nil, err
	}
	if len(w2.Shape) != 2 || w2.F32 == nil || w2.Shape[0] < 1 || w2.Shape[1] < 1 {
		return nil, fmt.Errorf("array \"w2\": shape %v, want (E, H) float32", w2.Shape)
	}
	h := &Head{E: w2.Shape[0], H: w2.Shape[1], W2: w2.F32}
	q, err := z.Shape("q")
	if err != nil {
		return nil, err
	}
	if len(q) != 2 || q[1] != h.H {
		return nil, fmt.Errorf("array \"q\": shape %v, want (K, %d)", q, h.H)
	}
	if h.W1z, err = get("w1z", h.H, h.E); err != nil {
		return nil, err
	}
	if h.W1n, err = get("w1n", h.H); err != nil {
		return nil, err
	}
	if h.B1, err = get("b1", h.H); err != nil {
		return nil, err
	}
	if h.B2, err = get("b2", h.E); err != nil {
		return nil, err
	}
	wr, err := z.Array("w_rank")
	if err != nil {
		return nil, err
	}
	if wr.F32 == nil || len(wr.Shape) != 1 || wr.Shape[0] < 1 {
		return nil, fmt.Errorf("array \"w_rank\": shape %v, want (R,) float32, R >= 1", wr.Shape)
	}
	h.WRank = wr.F32
	me, err := z.Array("max_events")
	if err != nil {
		return nil, err
	}
	if me.I64 == nil || len(me.I64) != 1 || len(me.Shape) != 0 || me.I64[0] < 1 ||
		me.I64[0] > 1<<20 {
		return nil, fmt.Errorf("array \"max_events\": want one int64 in 1..2^20")
	}
	h.MaxEvents = int(me.I64[0])
	return h, nil
}

func sameShape(a []int, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// Delta sets out (E) to ShortTermHead.delta_rows of one user: z (E) the nearline vector,
// rows (n x H, oldest first) the rows of its n new events; zeros when n is 0. Float32 as
// numpy computes it, operation by operation; the matrix products' sums over eight float32
// partial sums (dot; OpenBLAS sums in its own order: the results differ in the last bits).
func (h *Head) Delta(out, z, rows []float32, n int) {
	if n <= 0 {
		for i := range out {
			out[i] = 0
		}
		return
	}
	r := len(h.WRank)
	s := make([]float32, h.H) // the rank-weighted sum of the rows (einsum "bl,blh->bh")
	for l := 0; l < n; l++ {
		rank := n - 1 - l
		if rank > r-1 {
			rank = r - 1
		}
		w, row := h.WRank[rank], rows[l*h.H:(l+1)*h.H]
		for j := range s {
			s[j] += float32(w * row[j])
		}
	}
	nLog := float32(math.Log1p(float64(float32(n))))
	hidden := s
	for j := range hidden {
		x := s[j] + dot(h.W1z[j*h.E:(j+1)*h.E], z)
		x += float32(nLog * h.W1n[j])
		x += h.B1[j]
		if x < 0 {
			x = 0
		}
		hidden[j] = x
	}
	for e := range out {
		out[e] = dot(h.W2[e*h.H:(e+1)*h.H], hidden) + h.B2[e]
	}
}

// dot of two float32 vectors of one length in float32 over eight independent partial sums,
// as a SIMD float32 matmul (numpy's) accumulates: one running sum waits on each add, and
// float64 sums cost a conversion per element.
func dot(a, b []float32) float32 {
	b = b[:len(a)]
	var s0, s1, s2, s3, s4, s5, s6, s7 float32
	i := 0
	for ; i+8 <= len(a); i += 8 {
		s0 += a[i] * b[i]
		s1 += a[i+1] * b[i+1]
		s2 += a[i+2] * b[i+2]
		s3 += a[i+3] * b[i+3]
		s4 += a[i+4] * b[i+4]
		s5 += a[i+5] * b[i+5]
		s6 += a[i+6] * b[i+6]
		s7 += a[i+7] * b[i+7]
	}
	for ; i < len(a); i++ {
		s0 += a[i] * b[i]
	}
	return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))
}

// parityCase is one line of shortterm_rows_parity.jsonl.
type parityCase struct {
	Nearline []float64   `json:"nearline"`
	Rows     [][]float64 `json:"rows"`
	Delta    []float64   `json:"delta"`
}

// Verify computes the head's delta of every line of a rows parity sample (its nearline
// vector and new events' rows -> the delta the numpy head gave); it returns the lines and
// the largest |difference| relative to the sample's largest component (at least 1:
// shortterm.parity_error's measure), or an error for a file that is missing, empty, or
// that does not parse or fit the head.
func (h *Head) Verify(text []byte) (lines int, worst float64, err error) {
	sc := bufio.NewScanner(bytes.NewReader(text))
	sc.Buffer(nil, 64<<20)
	out := make([]float32, h.E)
	scale := 1.0
	for sc.Scan() {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		var c parityCase
		if err := json.Unmarshal(line, &c); err != nil {
			return lines, 0, fmt.Errorf("line %d: %v", lines+1, err)
		}
		if len(c.Nearline) != h.E || len(c.Delta) != h.E {
			return lines, 0, fmt.Errorf("line %d: vectors of another size than %d", lines+1, h.E)
		}
		rows := make([]float32, 0, len(c.Rows)*h.H)
		for _, r := range c.Rows {
			if len(r) != h.H {
				return lines, 0, fmt.Errorf("line %d: a row of another size than %d", lines+1, h.H)
			}
			rows = append(rows, f32s(r)...)
		}
		h.Delta(out, f32s(c.Nearline), rows, len(c.Rows))
		for e, want := range c.Delta {
			scale = math.Max(scale, math.Max(math.Abs(float64(float32(want))),
				math.Abs(float64(float32(c.Nearline[e])))))
			d := math.Abs(float64(out[e]) - float64(float32(want)))
			if math.IsNaN(d) { // a later match must not hide it
				return lines, 0, fmt.Errorf("line %d: the head gave NaN (or the sample holds one)",
					lines+1)
			}
			if d > worst {
				worst = d
			}
		}
		lines++
	}
	if err := sc.Err(); err != nil {
		return lines, 0, err
	}
	if lines == 0 {
		return 0, 0, errors.New("no parity lines")
	}
	return lines, worst / scale, nil
}

func f32s(xs []float64) []float32 {
	out := make([]float32, len(xs))
	for i, x := range xs {
		out[i] = float32(x)
	}
	return out
}

// Load reads DIR/<version>/shortterm.npz and checks it against the version's rows parity
// sample: a head that does not reproduce every line within ParityTol, or a version
// without the sample, is an error (nothing of it may be served).
func Load(dir, version string) (*Head, int, error) {
	if !ValidName(version) {
		return nil, 0, fmt.Errorf("%q is not a model version name", version)
	}
	folder := filepath.Join(dir, version)
	// the parity file first: without it (a version trained before it) the head, whose npz
	// holds the input tables too (MBs), is not read at all
	if _, err := os.Stat(filepath.Join(folder, RowsParityFile)); err != nil {
		return nil, 0, err
	}
	raw, err := os.ReadFile(filepath.Join(folder, File))
	if err != nil {
		return nil, 0, err
	}
	h, err := Parse(raw)
	if err != nil {
		return nil, 0, fmt.Errorf("%s: %v", File, err)
	}
	text, err := os.ReadFile(filepath.Join(folder, RowsParityFile))
	if err != nil {
		return nil, 0, err
	}
	lines, worst, err := h.Verify(text)
	if err != nil {
		return nil, 0, fmt.Errorf("%s: %v", RowsParityFile, err)
	}
	if !(worst <= ParityTol) {
		return nil, lines, fmt.Errorf("%s: parity failed (max relative |diff| %.3g > %g)",
			RowsParityFile, worst, ParityTol)
	}
	return h, lines, nil
}
