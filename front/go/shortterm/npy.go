// Package shortterm is a version's short-term head in Go (encoder/shortterm.py): its weights
// read from the registry's shortterm.npz, checked against the version's rows parity sample
// (shortterm_rows_parity.jsonl), the head's output over stored event rows (delta_rows), and
// the short-term state's parsing (services/store/recent.py state_batch).
package shortterm

import (
	"archive/zip"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
)

// Array is one .npy array: its shape and its data, F32 for '<f4', I64 for '<i8' (C order).
type Array struct {
	Shape []int
	F32   []float32
	I64   []int64
}

// header is a parsed .npy header: dtype, shape and where the data starts.
type header struct {
	descr string
	shape []int
	size  int // elements
	at    int // data offset
}

var magic = []byte("\x93NUMPY")

// parseHeader reads the header at the start of b (format versions 1-3); b may hold the
// header alone (headerLen says how many bytes it needs).
func parseHeader(b []byte) (header, error) {
	var h header
	if len(b) < 10 || !bytes.Equal(b[:6], magic) {
		return h, errors.New("not a .npy array")
	}
	var n, start int
	switch b[6] {
	case 1:
		n, start = int(binary.LittleEndian.Uint16(b[8:])), 10
	case 2, 3:
		if len(b) < 12 {
			return h, errors.New("short .npy header")
		}
		n, start = int(binary.LittleEndian.Uint32(b[8:])), 12
	default:
		return h, fmt.Errorf(".npy format version %d", b[6])
	}
	if n > 1<<16 || len(b) < start+n {
		return h, errors.New("short .npy header")
	}
	fields, err := parseDict(strings.TrimSpace(string(b[start : start+n])))
	if err != nil {
		return h, err
	}
	if len(fields) != 3 || fields["fortran_order"] != "False" {
		return h, fmt.Errorf(".npy header %q: only C-order arrays", b[start:start+n])
	}
	h.descr, h.at = fields["descr"], start+n
	if h.descr != "'<f4'" && h.descr != "'<i8'" {
		return h, fmt.Errorf(".npy dtype %s: only '<f4' and '<i8'", h.descr)
	}
	h.descr = strings.Trim(h.descr, "'")
	shape := fields["shape"]
	if len(shape) < 2 || shape[0] != '(' || shape[len(shape)-1] != ')' {
		return h, fmt.Errorf(".npy shape %q", shape)
	}
	h.size = 1
	// a Python tuple literal, as numpy writes it and reads it back: "()", "(3,)", "(2, 3)"
	// (one trailing comma at most, needed after a single element; no empty element)
	parts := strings.Split(shape[1:len(shape)-1], ",")
	if last := len(parts) - 1; strings.TrimSpace(parts[last]) == "" && last > 0 {
		parts = parts[:last]
	} else if len(parts) == 1 && strings.TrimSpace(parts[0]) != "" {
		return h, fmt.Errorf(".npy shape %q: not a tuple", shape)
	} else if len(parts) == 1 {
		parts = nil
	}
	for _, p := range parts {
		p = strings.TrimSpace(p)
		d, err := strconv.Atoi(p)
		if err != nil || d < 0 || (d > 0 && h.size > math.MaxInt32/d) {
			return h, fmt.Errorf(".npy shape %q", shape)
		}
		h.shape = append(h.shape, d)
		h.size *= d
	}
	return h, nil
}

// parseDict reads the header's Python dict literal: quoted keys; values quoted strings,
// tuples or bare words (True, False). Values come back as written.
func parseDict(s string) (map[string]string, error) {
	bad := fmt.Errorf(".npy header %q", s)
	if len(s) < 2 || s[0] != '{' || s[len(s)-1] != '}' {
		return nil, bad
	}
	s = strings.TrimSpace(s[1 : len(s)-1])
	out := map[string]string{}
	for s != "" {
		if s[0] != '\'' && s[0] != '"' {
			return nil, bad
		}
		end := strings.IndexByte(s[1:], s[0])
		if end < 0 {
			return nil, bad
		}
		key := s[1 : 1+end]
		s = strings.TrimSpace(s[2+end:])
		if s == "" || s[0] != ':' {
			return nil, bad
		}
		s = strings.TrimSpace(s[1:])
		var stop int
		switch {
		case s == "":
			return nil, bad
		case s[0] == '\'' || s[0] == '"':
			stop = strings.IndexByte(s[1:], s[0]) + 2
		case s[0] == '(':
			stop = strings.IndexByte(s, ')') + 1
		default:
			stop = strings.IndexByte(s, ',')
			if stop < 0 {
				stop = len(s)
			}
		}
		if stop <= 0 {
			return nil, bad
		}
		if _, dup := out[key]; dup {
			return nil, bad
		}
		out[key] = strings.TrimSpace(s[:stop])
		s = strings.TrimSpace(s[stop:])
		if s != "" {
			if s[0] != ',' {
				return nil, bad
			}
			s = strings.TrimSpace(s[1:])
		}
	}
	return out, nil
}

// ReadNpy decodes a whole .npy file; the data must be exactly the shape's size.
func ReadNpy(b []byte) (Array, error) {
	h, err := parseHeader(b)
	if err != nil {
		return Array{}, err
	}
	data := b[h.at:]
	a := Array{Shape: h.shape}
	item := 8
	if h.descr == "<f4" {
		item = 4
	}
	if len(data) != item*h.size {
		return a, fmt.Errorf(".npy data of %d bytes for shape %v %s", len(data), h.shape, h.descr)
	}
	if h.descr == "<f4" {
		a.F32 = make([]float32, h.size)
		for i := range a.F32 {
			a.F32[i] = math.Float32frombits(binary.LittleEndian.Uint32(data[4*i:]))
		}
		return a, nil
	}
	a.I64 = make([]int64, h.size)
	for i := range a.I64 {
		a.I64[i] = int64(binary.LittleEndian.Uint64(data[8*i:]))
	}
	return a, nil
}

// Npz is an opened .npz (np.savez / savez_compressed: a zip of NAME.npy).
type Npz struct {
	files map[string]*zip.File
}

// OpenNpz reads the zip directory of an .npz held in memory.
func OpenNpz(data []byte) (*Npz, error) {
	zr, err := zip.NewReader(bytes.NewReader(data), int64(len(data)))
	if err != nil {
		return nil, err
	}
	z := &Npz{files: map[string]*zip.File{}}
	for _, f := range zr.File {
		z.files[strings.TrimSuffix(f.Name, ".npy")] = f
	}
	return z, nil
}

// Array reads the named array whole.
func (z *Npz) Array(name string) (Array, error) {
	f, ok := z.files[name]
	if !ok {
		return Array{}, fmt.Errorf("no array %q", name)
	}
	if f.UncompressedSize64 > 1<<31 {
		return Array{}, fmt.Errorf("array %q: too large", name)
	}
	r, err := f.Open()
	if err != nil {
		return Array{}, err
	}
	defer r.Close()
	b, err := io.ReadAll(r)
	if err != nil {
		return Array{}, fmt.Errorf("array %q: %v", name, err)
	}
	a, err := ReadNpy(b)
	if err != nil {
		return a, fmt.Errorf("array %q: %v", name, err)
	}
	return a, nil
}

// Shape reads the named array's header only (its dtype must still be one ReadNpy takes).
func (z *Npz) Shape(name string) ([]int, error) {
	f, ok := z.files[name]
	if !ok {
		return nil, fmt.Errorf("no array %q", name)
	}
	r, err := f.Open()
	if err != nil {
		return nil, err
	}
	defer r.Close()
	b := make([]byte, 12)
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, fmt.Errorf("array %q: %v", name, err)
	}
	n := int(binary.LittleEndian.Uint16(b[8:])) + 10
	if b[6] != 1 {
		n = int(binary.LittleEndian.Uint32(b[8:])) + 12
	}
	if n < 12 || n > 1<<16+12 {
		return nil, fmt.Errorf("array %q: short .npy header", name)
	}
	rest := make([]byte, n-12)
	if _, err := io.ReadFull(r, rest); err != nil {
		return nil, fmt.Errorf("array %q: %v", name, err)
	}
	h, err := parseHeader(append(b, rest...))
	if err != nil {
		return nil, fmt.Errorf("array %q: %v", name, err)
	}
	return h.shape, nil
}
