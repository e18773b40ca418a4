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

func packF32(vals ...float32) []byte {
	raw := make([]byte, 4*len(vals))
	for i, v := range vals {
		binary.LittleEndian.PutUint32(raw[4*i:], math.Float32bits(v))
	}
	return raw
}

func TestDecodeEmbeddingsScores(t *testing.T) {
	nan := float32(math.NaN())
	f32 := personav1.VectorEncoding_VECTOR_ENCODING_FLOAT32
	ok, notFound := personav1.EmbeddingStatus_EMBEDDING_STATUS_FOUND, personav1.EmbeddingStatus_EMBEDDING_STATUS_NOT_FOUND
	resp := &personav1.GetEmbeddingsResponse{
		ModelVersion: "v1", Dim: 2, Encoding: f32,
		Statuses:       []personav1.EmbeddingStatus{ok, notFound},
		Vectors:        packF32(1, 2, 0, 0),
		HistoryCounts:  []uint32{1, 0},
		HistoryVectors: packF32(3, 4),
		NScores:        3,
		Scores:         packF32(0.25, 0.5, 0.75, nan, nan, nan),
		HistoryScores:  packF32(0.125, 0.5, 1),
		Part:           personav1.VectorPart_VECTOR_PART_COMBINED,
	}
	emb, err := DecodeEmbeddings(resp)
	if err != nil {
		t.Fatal(err)
	}
	if emb.Part != personav1.VectorPart_VECTOR_PART_COMBINED {
		t.Fatalf("part %v", emb.Part)
	}
	if emb.NScores != 3 || len(emb.Scores) != 2 || emb.Scores[0][2] != 0.75 || len(emb.HistoryScores) != 1 || emb.HistoryScores[0][0] != 0.125 {
		t.Fatalf("scores %v, history %v", emb.Scores, emb.HistoryScores)
	}
	if !math.IsNaN(float64(emb.Scores[1][0])) {
		t.Error("a NOT_FOUND row's scores are NaN")
	}
	half := make([]byte, 6) // float16: 1, 0.5, NaN
	for i, h := range []uint16{0x3c00, 0x3800, 0x7e00} {
		binary.LittleEndian.PutUint16(half[2*i:], h)
	}
	resp16 := &personav1.GetEmbeddingsResponse{Dim: 1, Encoding: personav1.VectorEncoding_VECTOR_ENCODING_FLOAT16,
		Statuses: []personav1.EmbeddingStatus{ok}, Vectors: half[:2], NScores: 2, Scores: half[2:]}
	if emb, err = DecodeEmbeddings(resp16); err != nil || emb.Scores[0][0] != 0.5 || !math.IsNaN(float64(emb.Scores[0][1])) {
		t.Fatalf("float16 scores %v, err %v", emb, err)
	}

	resp.Scores = resp.Scores[:12] // a cut block
	if _, err := DecodeEmbeddings(resp); err == nil {
		t.Error("scores for fewer rows than statuses must be refused")
	}
	resp.NScores, resp.Scores, resp.HistoryScores = 0, nil, nil
	if emb, err = DecodeEmbeddings(resp); err != nil || len(emb.Scores) != 2 || len(emb.Scores[0]) != 0 || len(emb.HistoryScores) != 1 {
		t.Fatalf("no scores: %v, err %v", emb, err)
	}
}

func TestScoreColumns(t *testing.T) {
	info := &personav1.GetModelInfoResponse{Versions: []*personav1.ModelVersion{
		{Version: "a"},
		{Version: "b", ScoreColumns: []*personav1.ScoreColumn{{Outcome: "(any)", HorizonMs: 3600000, Calibrated: true}}},
	}}
	if cols, ok := ScoreColumns(info, "b"); !ok || len(cols) != 1 || cols[0] != (ScoreColumn{"(any)", 3600000, true}) {
		t.Errorf("b: %v %v", cols, ok)
	}
	if cols, ok := ScoreColumns(info, "a"); !ok || cols != nil {
		t.Errorf("a: %v %v", cols, ok)
	}
	if _, ok := ScoreColumns(info, "c"); ok {
		t.Error("an unlisted version")
	}
}
