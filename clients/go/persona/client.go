// Package persona is a Go client of Persona's persona.v1.UserEmbeddingService
// (docs/api.md): embeddings decoded into float32 rows, lookalikes, a default deadline,
// retries on UNAVAILABLE and client-side load balancing through the gRPC service config,
// and a bearer token on every call.
//
//	c, err := persona.Dial("dns:///persona-serve:50051", persona.Options{Timeout: 50 * time.Millisecond})
//	emb, err := c.GetEmbeddings(ctx, &personav1.GetEmbeddingsRequest{UserIds: ids})
//	emb.Vectors[i] // []float32 of Dim components, row i answers ids[i]
//
// With IncludeScores set in the request, emb.Scores[i] holds the user's NScores calibrated
// outcome probabilities (NaN where the row has none); column j is ScoreColumns(info,
// emb.ModelVersion)[j] from GetModelInfo.
//
// Part in the request picks the nearline vector, the short-term part (the version's head
// over the user's events since the last refresh) or their sum; unset: the sum when the
// version has a head. emb.Part says which came back; emb.Meta.NewestEventMs[i] and
// emb.Meta.ShortTermEvents[i] what row i is made of.
//
// Retries: grpc-go enables service-config retries by default from v1.40; older releases
// (Debian 12 packages v1.33) need GRPC_GO_RETRY=on in the environment.
package persona

import (
	"context"
	"encoding/binary"
	"fmt"
	"math"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"

	personav1 "persona/clients/go/personav1"
)

// Service is the full gRPC service name (also the health-check name for readiness).
const Service = "persona.v1.UserEmbeddingService"

// Options says how to reach the service. The zero value: plaintext, 1 s deadline,
// 3 attempts on UNAVAILABLE, pick_first.
type Options struct {
	Timeout       time.Duration                    // deadline of a call whose ctx has none (0: 1 s)
	MaxAttempts   int                              // attempts on UNAVAILABLE, 1..5 (0: 3)
	LoadBalancing string                           // "pick_first" (default) or "round_robin"
	Token         string                           // sent as "authorization: Bearer <token>"
	Creds         credentials.TransportCredentials // nil: plaintext
}

// ServiceConfig is the gRPC service config JSON of o: retry policy and load balancing, the
// same policy as the Python and Node clients'. The default deadline is set per call (the
// clients agree on that too: grpcio mis-measures a service-config timeout).
func ServiceConfig(o Options) string {
	attempts, lb := o.MaxAttempts, o.LoadBalancing
	if attempts == 0 {
		attempts = 3
	}
	if lb == "" {
		lb = "pick_first"
	}
	retry := ""
	if attempts > 1 {
		retry = fmt.Sprintf(`, "retryPolicy": {"maxAttempts": %d, "initialBackoff": "0.05s",
			"maxBackoff": "0.5s", "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}`,
			attempts)
	}
	return fmt.Sprintf(`{"loadBalancingConfig": [{%q: {}}],
		"methodConfig": [{"name": [{"service": %q}]%s}],
		"retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1}}`,
		lb, Service, retry)
}

// Client holds one connection (thread-safe; share it) and the generated stub.
type Client struct {
	Conn    *grpc.ClientConn
	Stub    personav1.UserEmbeddingServiceClient
	token   string
	timeout time.Duration
}

// Dial connects lazily (the first call waits for the connection, within its deadline).
func Dial(target string, o Options) (*Client, error) {
	opts := []grpc.DialOption{grpc.WithDefaultServiceConfig(ServiceConfig(o))}
	if o.Creds != nil {
		opts = append(opts, grpc.WithTransportCredentials(o.Creds))
	} else {
		opts = append(opts, grpc.WithInsecure())
	}
	conn, err := grpc.Dial(target, opts...)
	if err != nil {
		return nil, err
	}
	timeout := o.Timeout
	if timeout == 0 {
		timeout = time.Second
	}
	stub := personav1.NewUserEmbeddingServiceClient(conn)
	return &Client{Conn: conn, Stub: stub, token: o.Token, timeout: timeout}, nil
}

// Close releases the connection.
func (c *Client) Close() error { return c.Conn.Close() }

// ctx adds the token, and the default deadline when ctx has none; call cancel when done.
func (c *Client) ctx(ctx context.Context) (context.Context, context.CancelFunc) {
	cancel := context.CancelFunc(func() {})
	if _, ok := ctx.Deadline(); !ok {
		ctx, cancel = context.WithTimeout(ctx, c.timeout)
	}
	if c.token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+c.token)
	}
	return ctx, cancel
}

// Embeddings is a decoded GetEmbeddingsResponse; index i of every slice answers the i-th
// requested id. History rows of user i are HistoryVectors[HistoryStart(i):][:HistoryCounts[i]].
// Scores and HistoryScores have a row of NScores values per vector row when the request set
// IncludeScores and the version stores scores (NaN where a row has none); else NScores is 0
// and every row is empty.
type Embeddings struct {
	ModelVersion   string
	Dim            int
	Status         []personav1.EmbeddingStatus
	Vectors        [][]float32 // rows of Dim components (float16 responses are widened)
	Meta           *personav1.VectorMetaColumns
	HistoryCounts  []uint32 // empty when no history was asked for
	HistoryVectors [][]float32
	HistoryMeta    *personav1.VectorMetaColumns
	NScores        int
	Scores         [][]float32 // len(Status) rows of NScores outcome probabilities
	HistoryScores  [][]float32 // len(HistoryVectors) rows of NScores
	// What Vectors hold: NEARLINE, SHORT_TERM or COMBINED (history rows are nearline);
	// UNSPECIFIED from a server older than the parts (nearline).
	Part personav1.VectorPart
}

// GetEmbeddings calls GetEmbeddings and decodes the packed vectors.
func (c *Client) GetEmbeddings(ctx context.Context, req *personav1.GetEmbeddingsRequest) (*Embeddings, error) {
	ctx, cancel := c.ctx(ctx)
	defer cancel()
	resp, err := c.Stub.GetEmbeddings(ctx, req)
	if err != nil {
		return nil, err
	}
	return DecodeEmbeddings(resp)
}

// DecodeEmbeddings turns the response's packed blocks into rows.
func DecodeEmbeddings(resp *personav1.GetEmbeddingsResponse) (*Embeddings, error) {
	dim := int(resp.GetDim())
	rows, err := DecodeVectors(resp.GetVectors(), resp.GetEncoding(), dim)
	if err != nil {
		return nil, err
	}
	if len(rows) != len(resp.GetStatuses()) {
		return nil, fmt.Errorf("%d vector rows for %d statuses", len(rows), len(resp.GetStatuses()))
	}
	hist, err := DecodeVectors(resp.GetHistoryVectors(), resp.GetEncoding(), dim)
	if err != nil {
		return nil, err
	}
	nScores := int(resp.GetNScores())
	scores, err := decodeScores(resp.GetScores(), resp.GetEncoding(), len(rows), nScores)
	if err != nil {
		return nil, fmt.Errorf("scores: %w", err)
	}
	histScores, err := decodeScores(resp.GetHistoryScores(), resp.GetEncoding(), len(hist), nScores)
	if err != nil {
		return nil, fmt.Errorf("history_scores: %w", err)
	}
	return &Embeddings{
		ModelVersion: resp.GetModelVersion(), Dim: dim, Status: resp.GetStatuses(), Vectors: rows,
		Meta: resp.GetMeta(), HistoryCounts: resp.GetHistoryCounts(), HistoryVectors: hist,
		HistoryMeta: resp.GetHistoryMeta(), NScores: nScores, Scores: scores, HistoryScores: histScores,
		Part: resp.GetPart(),
	}, nil
}

// decodeScores is DecodeVectors for a block of n rows of nScores (0: no scores, an empty
// row per vector row).
func decodeScores(raw []byte, enc personav1.VectorEncoding, n, nScores int) ([][]float32, error) {
	if nScores < 0 {
		return nil, fmt.Errorf("n_scores %d", nScores)
	}
	if nScores == 0 {
		if len(raw) != 0 {
			return nil, fmt.Errorf("%d bytes of scores with n_scores 0", len(raw))
		}
		return make([][]float32, n), nil
	}
	rows, err := DecodeVectors(raw, enc, nScores)
	if err != nil {
		return nil, err
	}
	if len(rows) != n {
		return nil, fmt.Errorf("%d score rows for %d vector rows", len(rows), n)
	}
	return rows, nil
}

// ScoreColumn names column j of Embeddings.Scores: P(Outcome within HorizonMs).
type ScoreColumn struct {
	Outcome    string // "(any)" or "type=<event type>"
	HorizonMs  int64
	Calibrated bool
}

// ScoreColumns are the score columns of version in a GetModelInfo answer (nil when the
// version stores no scores); ok is false when info does not list the version.
func ScoreColumns(info *personav1.GetModelInfoResponse, version string) (cols []ScoreColumn, ok bool) {
	for _, v := range info.GetVersions() {
		if v.GetVersion() != version {
			continue
		}
		for _, c := range v.GetScoreColumns() {
			cols = append(cols, ScoreColumn{c.GetOutcome(), c.GetHorizonMs(), c.GetCalibrated()})
		}
		return cols, true
	}
	return nil, false
}

// HistoryStart is the index of user i's first history row in HistoryVectors.
func (e *Embeddings) HistoryStart(i int) int {
	start := 0
	for _, n := range e.HistoryCounts[:i] {
		start += int(n)
	}
	return start
}

// DecodeVectors splits packed little-endian float32 or float16 components into rows of dim.
func DecodeVectors(raw []byte, enc personav1.VectorEncoding, dim int) ([][]float32, error) {
	width := 4
	if enc == personav1.VectorEncoding_VECTOR_ENCODING_FLOAT16 {
		width = 2
	} else if enc != personav1.VectorEncoding_VECTOR_ENCODING_FLOAT32 {
		return nil, fmt.Errorf("unknown vector encoding %v", enc)
	}
	if dim <= 0 || len(raw)%(dim*width) != 0 {
		return nil, fmt.Errorf("%d bytes are not rows of %d x %d bytes", len(raw), dim, width)
	}
	flat := make([]float32, len(raw)/width)
	for i := range flat {
		if width == 4 {
			flat[i] = math.Float32frombits(binary.LittleEndian.Uint32(raw[4*i:]))
		} else {
			flat[i] = HalfToFloat32(binary.LittleEndian.Uint16(raw[2*i:]))
		}
	}
	rows := make([][]float32, len(flat)/dim)
	for i := range rows {
		rows[i] = flat[i*dim : (i+1)*dim : (i+1)*dim]
	}
	return rows, nil
}

// HalfToFloat32 widens an IEEE 754 binary16 value.
func HalfToFloat32(h uint16) float32 {
	sign := uint32(h>>15) << 31
	exp := uint32(h>>10) & 0x1f
	frac := uint32(h) & 0x3ff
	switch {
	case exp == 0x1f: // inf, NaN
		return math.Float32frombits(sign | 0x7f800000 | frac<<13)
	case exp == 0 && frac == 0: // +-0
		return math.Float32frombits(sign)
	case exp == 0: // subnormal: frac * 2^-24
		f := float32(frac) * float32(math.Ldexp(1, -24))
		if sign != 0 {
			return -f
		}
		return f
	}
	return math.Float32frombits(sign | (exp+127-15)<<23 | frac<<13)
}

// FindLookalikes calls FindLookalikes (one of UserId, Vector, Seeds set in req).
func (c *Client) FindLookalikes(ctx context.Context, req *personav1.FindLookalikesRequest) (*personav1.FindLookalikesResponse, error) {
	ctx, cancel := c.ctx(ctx)
	defer cancel()
	return c.Stub.FindLookalikes(ctx, req)
}

// GetModelInfo calls GetModelInfo.
func (c *Client) GetModelInfo(ctx context.Context) (*personav1.GetModelInfoResponse, error) {
	ctx, cancel := c.ctx(ctx)
	defer cancel()
	return c.Stub.GetModelInfo(ctx, &personav1.GetModelInfoRequest{})
}
