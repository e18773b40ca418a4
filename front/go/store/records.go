// Package store reads what services/store writes: vector keys and records (LAYOUT.md,
// "Vectors and model versions", layouts 1-3) and the {models} keys.
package store

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math"
	"regexp"
	"strconv"
	"unicode/utf8"
)

// Buckets is the bucket count of layout v1.
const Buckets = 1024

// Keys of the {models} slot.
const (
	ActiveKey = "p:{models}:active"
	StatesKey = "p:{models}:states"
	ScoresKey = "p:{models}:scores:"
)

var versionRE = regexp.MustCompile(`^[A-Za-z0-9._-]{1,64}$`)

// IsVersion is contract.versions.is_version.
func IsVersion(v string) bool { return versionRE.MatchString(v) }

// Bucket is crc32(utf8(uid)) mod 1024.
func Bucket(uid string) int { return int(crc32.ChecksumIEEE([]byte(uid)) % Buckets) }

// VectorKey is p:{B}:v:<ver>:<uid>.
func VectorKey(uid, version string) []byte {
	k := make([]byte, 0, 16+len(version)+len(uid))
	k = append(k, "p:{"...)
	k = strconv.AppendInt(k, int64(Bucket(uid)), 10)
	k = append(k, "}:v:"...)
	k = append(k, version...)
	k = append(k, ':')
	return append(k, uid...)
}

// Vector is one decoded record: the vector and scores widened to float32.
type Vector struct {
	Layout        int
	Values        []float32
	ComputedAtMs  int64
	WindowVersion int64
	NEvents       uint32
	Scores        []float32 // nil: the record holds no scores (layout 1; layout 3 with 0)
	HasMarker     bool
	MarkerTsMs    int64
}

// ErrRecord is a record the front does not read (the caller forwards the request so
// Python gives its own answer).
var ErrRecord = errors.New("bad vector record")

const headSize = 24

// Decode reads a vector record as records.unpack_vector does, refusing what it refuses.
func Decode(rec []byte) (Vector, error) {
	var v Vector
	if len(rec) < headSize {
		return v, ErrRecord
	}
	lay, code, dim := int(rec[0]), rec[1], int(binary.LittleEndian.Uint16(rec[2:]))
	if lay < 1 || lay > 3 || (code != 1 && code != 2) {
		return v, fmt.Errorf("%w: layout %d dtype %d", ErrRecord, lay, code)
	}
	v.Layout = lay
	v.ComputedAtMs = int64(binary.LittleEndian.Uint64(rec[4:]))
	v.WindowVersion = int64(binary.LittleEndian.Uint64(rec[12:]))
	v.NEvents = binary.LittleEndian.Uint32(rec[20:])
	size := 4
	if code == 2 {
		size = 2
	}
	end := headSize + dim*size
	if lay == 3 {
		if len(rec) < end+2+10 {
			return v, ErrRecord
		}
		t := len(rec) - 10
		k := int(binary.LittleEndian.Uint16(rec[t:]))
		v.MarkerTsMs = int64(binary.LittleEndian.Uint64(rec[t+2:]))
		start := t - k
		if start < end+2 || !utf8.Valid(rec[start:t]) {
			return v, ErrRecord
		}
		v.HasMarker = true
		rec = rec[:start]
	}
	if lay != 1 {
		if len(rec) < end+2 {
			return v, ErrRecord
		}
		k := int(binary.LittleEndian.Uint16(rec[end:]))
		if len(rec) != end+2+2*k {
			return v, ErrRecord
		}
		if lay == 2 || k > 0 {
			v.Scores = make([]float32, k)
			for i := range v.Scores {
				v.Scores[i] = HalfToFloat(binary.LittleEndian.Uint16(rec[end+2+2*i:]))
			}
		}
	} else if len(rec) != end {
		return v, ErrRecord
	}
	v.Values = make([]float32, dim)
	for i := range v.Values {
		if code == 1 {
			v.Values[i] = math.Float32frombits(binary.LittleEndian.Uint32(rec[headSize+4*i:]))
		} else {
			v.Values[i] = HalfToFloat(binary.LittleEndian.Uint16(rec[headSize+2*i:]))
		}
	}
	return v, nil
}

// HalfToFloat widens an IEEE half (exactly; NaN payloads kept, as numpy does).
func HalfToFloat(h uint16) float32 {
	sign := uint32(h&0x8000) << 16
	exp := uint32(h>>10) & 0x1f
	sig := uint32(h & 0x3ff)
	switch {
	case exp == 0x1f:
		return math.Float32frombits(sign | 0x7f800000 | sig<<13)
	case exp == 0:
		if sig == 0 {
			return math.Float32frombits(sign)
		}
		e := uint32(113)
		for sig&0x400 == 0 {
			sig <<= 1
			e--
		}
		return math.Float32frombits(sign | e<<23 | (sig&0x3ff)<<13)
	}
	return math.Float32frombits(sign | (exp+112)<<23 | sig<<13)
}

// FloatToHalf narrows a float32 to an IEEE half, rounding to nearest even, as numpy's
// astype(float16) does (npy_floatbits_to_halfbits).
func FloatToHalf(x float32) uint16 {
	f := math.Float32bits(x)
	sgn := uint16((f & 0x80000000) >> 16)
	fexp := f & 0x7f800000
	if fexp >= 0x47800000 {
		if fexp == 0x7f800000 {
			if fsig := f & 0x007fffff; fsig != 0 {
				r := uint16(0x7c00 + (fsig >> 13))
				if r == 0x7c00 {
					r++
				}
				return sgn + r
			}
		}
		return sgn + 0x7c00
	}
	if fexp <= 0x38000000 {
		if fexp < 0x33000000 {
			return sgn
		}
		e := fexp >> 23
		fsig := 0x00800000 + (f & 0x007fffff)
		fsig >>= 113 - e
		if fsig&0x3fff != 0x1000 || f&0x7ff != 0 {
			fsig += 0x1000
		}
		return sgn + uint16(fsig>>13)
	}
	hexp := uint16((fexp - 0x38000000) >> 13)
	fsig := f & 0x007fffff
	if fsig&0x3fff != 0x1000 {
		fsig += 0x1000
	}
	return sgn + uint16(fsig>>13) + hexp
}
