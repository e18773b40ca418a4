// Command persona-fetch asks a persona serve for embeddings and lookalikes and prints what
// it got as one JSON object (tests/clients/test_go_client.py checks it against the store).
//
//	persona-fetch -target 127.0.0.1:50051 -ids u1,u2,nobody -history 2 -lookalike u1 -k 5
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	persona "persona/clients/go/persona"
	personav1 "persona/clients/go/personav1"
)

type output struct {
	ModelVersion   string      `json:"model_version"`
	Statuses       []string    `json:"statuses"`
	Vectors        [][]float32 `json:"vectors"`
	NEvents        []int32     `json:"n_events"`
	AgeSeconds     []float64   `json:"age_seconds"`
	HistoryCounts  []uint32    `json:"history_counts"`
	HistoryVectors [][]float32 `json:"history_vectors"`
	Neighbors      []string    `json:"neighbors"`
	Scores         []float32   `json:"scores"`
}

func main() {
	target := flag.String("target", "127.0.0.1:50051", "gRPC target")
	ids := flag.String("ids", "", "comma-separated user ids")
	history := flag.Uint("history", 0, "history depth")
	f16 := flag.Bool("float16", false, "ask for float16 vectors")
	lookalike := flag.String("lookalike", "", "user id to find lookalikes of")
	k := flag.Int("k", 5, "neighbours")
	timeout := flag.Duration("timeout", 5*time.Second, "deadline per call")
	flag.Parse()
	if err := run(*target, strings.Split(*ids, ","), uint32(*history), *f16, *lookalike, *k, *timeout); err != nil {
		fmt.Fprintln(os.Stderr, "persona-fetch:", err)
		os.Exit(1)
	}
}

func run(target string, ids []string, history uint32, f16 bool, lookalike string, k int, timeout time.Duration) error {
	c, err := persona.Dial(target, persona.Options{Timeout: timeout, Token: os.Getenv("PERSONA_TOKEN")})
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	enc := personav1.VectorEncoding_VECTOR_ENCODING_FLOAT32
	if f16 {
		enc = personav1.VectorEncoding_VECTOR_ENCODING_FLOAT16
	}
	emb, err := c.GetEmbeddings(ctx, &personav1.GetEmbeddingsRequest{UserIds: ids, HistoryDepth: history, Encoding: enc})
	if err != nil {
		return fmt.Errorf("GetEmbeddings: %w", err)
	}
	out := output{
		ModelVersion: emb.ModelVersion, Vectors: emb.Vectors, NEvents: emb.Meta.GetNEvents(),
		AgeSeconds: emb.Meta.GetAgeSeconds(), HistoryCounts: emb.HistoryCounts, HistoryVectors: emb.HistoryVectors,
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
