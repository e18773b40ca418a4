// Command persona-fetch asks a persona serve for embeddings and lookalikes and prints what
// it got as one JSON object (tests/clients/test_go_client.py checks it against the store).
//
//	persona-fetch -target 127.0.0.1:50051 -ids u1,u2,nobody -history 2 -lookalike u1 -k 5
//	persona-fetch -ids u1 -scores -version v2   # also the users' outcome scores
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"os"
	"strings"
	"time"

	persona "persona/clients/go/persona"
	personav1 "persona/clients/go/personav1"
)

type output struct {
	ModelVersion   string       `json:"model_version"`
	Statuses       []string     `json:"statuses"`
	Vectors        [][]float32  `json:"vectors"`
	NEvents        []int32      `json:"n_events"`
	AgeSeconds     []float64    `json:"age_seconds"`
	HistoryCounts  []uint32     `json:"history_counts"`
	HistoryVectors [][]float32  `json:"history_vectors"`
	NScores        int          `json:"n_scores"`
	OutcomeScores  [][]*float32 `json:"outcome_scores"` // null where NaN (no score)
	Neighbors      []string     `json:"neighbors"`
	Scores         []float32    `json:"scores"`
}

func main() {
	target := flag.String("target", "127.0.0.1:50051", "gRPC target")
	ids := flag.String("ids", "", "comma-separated user ids")
	history := flag.Uint("history", 0, "history depth")
	f16 := flag.Bool("float16", false, "ask for float16 vectors")
	lookalike := flag.String("lookalike", "", "user id to find lookalikes of")
	k := flag.Int("k", 5, "neighbours")
	timeout := flag.Duration("timeout", 5*time.Second, "deadline per call")
	scores := flag.Bool("scores", false, "ask for the users' outcome scores too")
	version := flag.String("version", "", "model version (empty: the active one)")
	flag.Parse()
	req := &personav1.GetEmbeddingsRequest{UserIds: strings.Split(*ids, ","), HistoryDepth: uint32(*history),
		IncludeScores: *scores, ModelVersion: *version}
	if *f16 {
		req.Encoding = personav1.VectorEncoding_VECTOR_ENCODING_FLOAT16
	}
	if err := run(*target, req, *lookalike, *k, *timeout); err != nil {
		fmt.Fprintln(os.Stderr, "persona-fetch:", err)
		os.Exit(1)
	}
}

func run(target string, req *personav1.GetEmbeddingsRequest, lookalike string, k int, timeout time.Duration) error {
	c, err := persona.Dial(target, persona.Options{Timeout: timeout, Token: os.Getenv("PERSONA_TOKEN")})
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	emb, err := c.GetEmbeddings(ctx, req)
	if err != nil {
		return fmt.Errorf("GetEmbeddings: %w", err)
	}
	out := output{
		ModelVersion: emb.ModelVersion, Vectors: emb.Vectors, NEvents: emb.Meta.GetNEvents(),
		AgeSeconds: emb.Meta.GetAgeSeconds(), HistoryCounts: emb.HistoryCounts, HistoryVectors: emb.HistoryVectors,
		NScores: emb.NScores,
	}
	for _, row := range emb.Scores { // encoding/json refuses NaN
		vals := make([]*float32, len(row))
		for j := range row {
			if !math.IsNaN(float64(row[j])) {
				vals[j] = &row[j]
			}
		}
		out.OutcomeScores = append(out.OutcomeScores, vals)
	}
	for _, s := range emb.Status {
		out.Statuses = append(out.Statuses, s.String())
	}
	if lookalike != "" {
		resp, err := c.FindLookalikes(ctx, &personav1.FindLookalikesRequest{
			Query: &personav1.FindLookalikesRequest_UserId{UserId: lookalike}, K: int32(k),
		})
		if err != nil {
			return fmt.Errorf("FindLookalikes: %w", err)
		}
		for _, n := range resp.GetNeighbors() {
			out.Neighbors = append(out.Neighbors, n.GetUserId())
			out.Scores = append(out.Scores, n.GetScore())
		}
	}
	return json.NewEncoder(os.Stdout).Encode(out)
}
