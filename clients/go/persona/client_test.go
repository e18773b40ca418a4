package persona

import (
	"encoding/binary"
	"encoding/json"
	"math"
	"testing"

	personav1 "persona/clients/go/personav1"
)

func TestHalfToFloat32(t *testing.T) {
	cases := map[uint16]float32{
		0x0000: 0, 0x3c00: 1, 0xc000: -2, 0x3555: 0.33325195, 0x7bff: 65504,
		0x0001: float32(math.Ldexp(1, -24)), 0x8001: -float32(math.Ldexp(1, -24)),
	}
	for h, want := range cases {
		if got := HalfToFloat32(h); got != want {
			t.Errorf("HalfToFloat32(%#04x) = %v, want %v", h, got, want)
		}
	}
	if !math.IsInf(float64(HalfToFloat32(0x7c00)), 1) || !math.IsNaN(float64(HalfToFloat32(0x7e00))) {
		t.Error("inf / NaN")
	}
}

func TestDecodeVectors(t *testing.T) {
	raw := make([]byte, 2*3*4)
	for i := 0; i < 6; i++ {
		binary.LittleEndian.PutUint32(raw[4*i:], math.Float32bits(float32(i)+0.5))
	}
	rows, err := DecodeVectors(raw, personav1.VectorEncoding_VECTOR_ENCODING_FLOAT32, 3)
	if err != nil || len(rows) != 2 || rows[1][2] != 5.5 || len(rows[0]) != 3 {
		t.Fatalf("rows %v, err %v", rows, err)
	}
	if _, err := DecodeVectors(raw[:5], personav1.VectorEncoding_VECTOR_ENCODING_FLOAT32, 3); err == nil {
		t.Error("a cut block must be refused")
	}
}

func TestServiceConfigIsJSON(t *testing.T) {
	var cfg map[string]interface{}
	if err := json.Unmarshal([]byte(ServiceConfig(Options{})), &cfg); err != nil {
		t.Fatal(err, ServiceConfig(Options{}))
	}
	if err := json.Unmarshal([]byte(ServiceConfig(Options{MaxAttempts: 1, LoadBalancing: "round_robin"})), &cfg); err != nil {
		t.Fatal(err)
	}
}
