package front

import (
	"fmt"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	pb "persona/clients/go/personav1"
	"persona/front/go/metrics"
	"persona/front/go/resp"
)

func scrape(t *testing.T, r *metrics.Registry) string {
	t.Helper()
	var b strings.Builder
	if _, err := r.WriteTo(&b); err != nil {
		t.Fatal(err)
	}
	return b.String()
}

func expect(t *testing.T, text string, lines ...string) {
	t.Helper()
	for _, l := range lines {
		if !strings.Contains(text, "\n"+l+"\n") {
			t.Errorf("no line %q in\n%s", l, text)
		}
	}
}

func TestForwardReasonsAndStoreErrors(t *testing.T) {
	reg := &metrics.Registry{}
	f := New(nil, nil, Config{Limits: Limits{MaxBatch: 10, MaxHistory: 3, MaxIDBytes: 256},
		Metrics: reg})
	expect(t, scrape(t, reg), "persona_front_dim_known 0",
		`persona_front_get_embeddings_forwarded_total{reason="other"} 0`,
		`persona_front_store_errors_total{kind="timeout"} 0`,
		`persona_front_embeddings_total{status="not_found",part="short_term"} 0`)
	deadline := time.Now().Add(time.Second)
	_, err := f.answer(&pb.GetEmbeddingsRequest{}, deadline) // no user ids
	if err != errInvalid {
		t.Fatalf("empty request: %v", err)
	}
	if _, err = f.answer(&pb.GetEmbeddingsRequest{UserIds: []string{"u1"}}, deadline); err != errDimUnknown {
		t.Fatalf("dim unknown: %v", err)
	}
	f.dim.Store(8)
	for _, c := range []struct {
		err    error
		reason string
	}{
		{errInvalid, "invalid"}, {errDimUnknown, "dim_unknown"}, {errVersion, "version"},
		{errVersion, "version"}, {errPartOrHead, "part_or_head"}, {errShortTerm, "short_term_state"},
		{errStoreReply, "store_error"}, // kind error
		{resp.ErrRedirect, "redirect"},
		{fmt.Errorf("read: %w", os.ErrDeadlineExceeded), "store_error"}, // timeout
		{io.EOF, "store_error"},                                         // unavailable
		{resp.ErrUncovered, "store_error"},                              // unavailable
		{resp.ErrProtocol, "store_error"},                               // error
		{fmt.Errorf("x: %w", errRescore), "scores_rescore"},
	} {
		got := f.m.forwardReason(c.err)
		if got != c.reason {
			t.Errorf("%v: reason %q, want %q", c.err, got, c.reason)
		}
		f.m.forwardedFor(got)
	}
	f.m.relearnt(nil)
	f.m.relearnt(resp.ErrProtocol)
	f.m.relearnt(nil)
	expect(t, scrape(t, reg), "persona_front_dim_known 1",
		`persona_front_get_embeddings_total{outcome="forwarded"} 13`,
		`persona_front_get_embeddings_total{outcome="local"} 0`,
		`persona_front_get_embeddings_forwarded_total{reason="version"} 2`,
		`persona_front_get_embeddings_forwarded_total{reason="store_error"} 5`,
		`persona_front_get_embeddings_forwarded_total{reason="redirect"} 1`,
		`persona_front_get_embeddings_forwarded_total{reason="scores_rescore"} 1`,
		`persona_front_get_embeddings_forwarded_total{reason="fallback"} 0`,
		`persona_front_store_errors_total{kind="error"} 2`,
		`persona_front_store_errors_total{kind="timeout"} 1`,
		`persona_front_store_errors_total{kind="unavailable"} 2`,
		`persona_front_store_errors_total{kind="redirect"} 1`,
		`persona_front_store_slot_map_relearns_total{outcome="ok"} 2`,
		`persona_front_store_slot_map_relearns_total{outcome="error"} 1`)
}

func TestLocalAnswersAndForwardedCalls(t *testing.T) {
	reg := &metrics.Registry{}
	f := New(nil, nil, Config{Dim: 4, Metrics: reg})
	found, missing := pb.EmbeddingStatus_EMBEDDING_STATUS_FOUND, pb.EmbeddingStatus_EMBEDDING_STATUS_NOT_FOUND
	f.m.localAnswer(&pb.GetEmbeddingsResponse{Part: pb.VectorPart_VECTOR_PART_NEARLINE,
		Statuses: []pb.EmbeddingStatus{found, missing, found}}, 300*time.Microsecond)
	f.m.localAnswer(&pb.GetEmbeddingsResponse{Part: pb.VectorPart_VECTOR_PART_COMBINED,
		Statuses: []pb.EmbeddingStatus{found}}, 2*time.Millisecond)
	f.m.localAnswer(&pb.GetEmbeddingsResponse{Part: pb.VectorPart_VECTOR_PART_SHORT_TERM,
		Statuses: []pb.EmbeddingStatus{missing, missing}}, 2*time.Second)
	f.m.forwardedCall("/persona.v1.UserEmbeddingService/FindLookalikes", codes.OK)
	f.m.forwardedCall("/persona.v1.UserEmbeddingService/FindLookalikes", codes.OK)
	f.m.forwardedCall("/persona.v1.AdminService/ForgetUsers", codes.PermissionDenied)
	f.m.forwardedCall(GetEmbeddingsMethod, codes.InvalidArgument)
	f.m.forwardedCall("/grpc.health.v1.Health/Check", codes.OK)
	f.m.forwardedCall("/persona.v1.Nothing/Here", codes.Unimplemented)
	f.m.forwardedCall("/persona.v1.UserEmbeddingService/Nope", codes.Code(99))
	text := scrape(t, reg)
	expect(t, text, "persona_front_dim_known 1",
		`persona_front_get_embeddings_total{outcome="local"} 3`,
		`persona_front_embeddings_total{status="found",part="nearline"} 2`,
		`persona_front_embeddings_total{status="not_found",part="nearline"} 1`,
		`persona_front_embeddings_total{status="found",part="combined"} 1`,
		`persona_front_embeddings_total{status="not_found",part="combined"} 0`,
		`persona_front_embeddings_total{status="not_found",part="short_term"} 2`,
		`persona_front_local_request_seconds_bucket{le="0.0002"} 0`,
		`persona_front_local_request_seconds_bucket{le="0.0005"} 1`,
		`persona_front_local_request_seconds_bucket{le="0.002"} 2`,
		`persona_front_local_request_seconds_bucket{le="1"} 2`,
		`persona_front_local_request_seconds_bucket{le="+Inf"} 3`,
		`persona_front_local_request_seconds_sum 2.0023`,
		`persona_front_local_request_seconds_count 3`,
		`persona_front_forwarded_requests_total{service="persona.v1.UserEmbeddingService",method="FindLookalikes",code="OK"} 2`,
		`persona_front_forwarded_requests_total{service="persona.v1.UserEmbeddingService",method="GetEmbeddings",code="INVALID_ARGUMENT"} 1`,
		`persona_front_forwarded_requests_total{service="grpc.health.v1.Health",method="Check",code="OK"} 1`,
		`persona_front_forwarded_requests_total{service="other",method="other",code="UNIMPLEMENTED"} 1`,
		`persona_front_forwarded_requests_total{service="other",method="other",code="UNKNOWN"} 1`)
	expect(t, text, `persona_front_forwarded_requests_total{service="persona.v1.AdminService",method="ForgetUsers",code="PERMISSION_DENIED"} 1`)
	if len(f.m.methods) != 9 { // 4 + 1 persona.v1, health Check and Watch, 2 reflections
		t.Fatalf("known methods: %v", f.m.methods)
	}
}

func TestCodeNames(t *testing.T) {
	for c, want := range map[codes.Code]string{codes.OK: "OK", codes.DeadlineExceeded: "DEADLINE_EXCEEDED",
		codes.Unauthenticated: "UNAUTHENTICATED", codes.DataLoss: "DATA_LOSS", codes.Code(17): "UNKNOWN"} {
		if got := codeName(c); got != want {
			t.Errorf("%d: %s, want %s", c, got, want)
		}
	}
}
