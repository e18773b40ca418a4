package front

import (
	"errors"
	"net"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc/codes"

	pb "persona/clients/go/personav1"
	"persona/front/go/metrics"
	"persona/front/go/resp"
)

// forwardError: the front does not answer this GetEmbeddings itself (Python answers it),
// and why (the `reason` label of persona_front_get_embeddings_forwarded_total).
type forwardError struct{ reason string }

func (e *forwardError) Error() string { return "forward: " + e.reason }

// The reasons a GetEmbeddings is forwarded: a fixed set (bounded label values).
var (
	errInvalid    = &forwardError{"invalid"}          // not parsed, or Python would refuse it
	errAuth       = &forwardError{"auth"}             // no / wrong bearer token: Python's words
	errDimUnknown = &forwardError{"dim_unknown"}      // served dimension not known yet
	errVersion    = &forwardError{"version"}          // no active, unknown, malformed, retired
	errPartOrHead = &forwardError{"part_or_head"}     // head not known, SHORT_TERM without one
	errFallback   = &forwardError{"fallback"}         // POPULATION_PRIOR with a user missing
	errRescore    = &forwardError{"scores_rescore"}   // include_scores, moved rows, no heads read
	errShortTerm  = &forwardError{"short_term_state"} // a user needs the state or the window
	// the state is needed and -models has no verified head for the version (states.go)
	errHeadUnverified = &forwardError{"head_unverified"}
	errHeadLoading    = &forwardError{"head_loading"} // another request reads those files now
	errRecord         = &forwardError{"record"}       // a value the front cannot read as Python
	errStoreReply     = &forwardError{"store_error"}  // an error reply (counted kind "error")
	errOther          = &forwardError{"other"}        // e.g. the answer did not marshal
)

// forwardReasons: every reason label, including store_error and redirect (store errors).
var forwardReasons = []string{"invalid", "auth", "dim_unknown", "version", "part_or_head",
	"fallback", "scores_rescore", "short_term_state", "head_unverified", "head_loading", "record",
	"store_error", "redirect", "other"}

// storeErrorKinds: persona_serving_store_errors_total's kinds and the front's redirect.
var storeErrorKinds = []string{"timeout", "unavailable", "error", "redirect"}

// LatencyBuckets of a local GetEmbeddings (seconds): services/serving/metrics.py's
// LATENCY_BUCKETS from 0.1 ms to 1 s.
var LatencyBuckets = []float64{0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075,
	0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1}

// codeNames are grpc.StatusCode names as Python's `code.name` gives them (the `code` label
// of persona_serving_requests_total).
var codeNames = []string{"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED",
	"NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED",
	"FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE",
	"DATA_LOSS", "UNAUTHENTICATED"}

func codeName(c codes.Code) string {
	if int(c) < len(codeNames) {
		return codeNames[c]
	}
	return "UNKNOWN"
}

// frontMetrics are the front's own series (README, "Metrics").
type frontMetrics struct {
	local, forwarded *metrics.Counter
	reasons          map[string]*metrics.Counter
	latency          *metrics.Histogram
	rows             [2][3]*metrics.Counter // [found, not_found][nearline, combined, short_term]
	calls            *metrics.CounterVec    // forwarded calls: service, method, code
	storeErrors      map[string]*metrics.Counter
	relearnOK        *metrics.Counter
	relearnFailed    *metrics.Counter
	// calls refused before they were read: more than -max-concurrent-rpcs in the front
	rejectedConcurrency *metrics.Counter
	methods             map[string][2]string // known full method -> service, method
	served              *metrics.CounterVec  // served-log rows by outcome (series made when on)
}

func newFrontMetrics(r *metrics.Registry, f *Front) *frontMetrics {
	m := &frontMetrics{reasons: map[string]*metrics.Counter{},
		storeErrors: map[string]*metrics.Counter{}, methods: knownMethods()}
	calls := r.NewCounter("persona_front_get_embeddings_total",
		"GetEmbeddings calls by outcome: answered by the front (local) or sent to persona serve"+
			" (forwarded).", "outcome")
	m.local, m.forwarded = calls.With("local"), calls.With("forwarded")
	reasons := r.NewCounter("persona_front_get_embeddings_forwarded_total",
		"GetEmbeddings calls the front forwarded, by the first reason it met.", "reason")
	for _, why := range forwardReasons {
		m.reasons[why] = reasons.With(why)
	}
	m.latency = r.NewHistogram("persona_front_local_request_seconds",
		"Latency of the GetEmbeddings calls the front answered itself, in the front.",
		LatencyBuckets).With()
	rows := r.NewCounter("persona_front_embeddings_total",
		"Per-user GetEmbeddings results the front answered itself, by status and part"+
			" (persona_serving_embeddings_total counts the forwarded ones).", "status", "part")
	for i, s := range []string{"found", "not_found"} {
		for j, p := range []string{"nearline", "combined", "short_term"} {
			m.rows[i][j] = rows.With(s, p)
		}
	}
	m.calls = r.NewCounter("persona_front_forwarded_requests_total",
		"Calls forwarded to persona serve, by service, method and status code (methods"+
			" outside the service's protos as service=\"other\", method=\"other\").",
		"service", "method", "code")
	se := r.NewCounter("persona_front_store_errors_total",
		"Store reads of the front that failed or ran past their time budget, by kind (the"+
			" call is forwarded).", "kind")
	for _, k := range storeErrorKinds {
		m.storeErrors[k] = se.With(k)
	}
	rl := r.NewCounter("persona_front_store_slot_map_relearns_total",
		"Cluster slot maps read again after start (MOVED, connection error, uncovered slot, 10 s refresh), by outcome.", "outcome")
	m.relearnOK, m.relearnFailed = rl.With("ok"), rl.With("error")
	m.served = r.NewCounter("persona_front_served_log_records_total",
		"Sampled rows of the GetEmbeddings the front answered itself, in the served log, by"+
			" outcome: sent (acknowledged by Kafka), dropped (its queue was full), failed (not"+
			" acknowledged).", "outcome")
	m.rejectedConcurrency = r.NewCounter("persona_front_rejected_total",
		"Calls the front refused before reading them, by reason: concurrency (-max-concurrent-rpcs"+
			" calls already in the front; RESOURCE_EXHAUSTED, as persona serve refuses them).",
		"reason").With("concurrency")
	r.NewGaugeFunc("persona_front_in_flight_calls",
		"Calls in the front now (answered here or forwarded, streams included): what"+
			" -max-concurrent-rpcs bounds.",
		func() float64 { return float64(f.calls.inFlight()) })
	r.NewGaugeFunc("persona_front_dim_known",
		"1 once the front knows the served dimension (-dim, or learnt from an upstream"+
			" answer), else 0: every GetEmbeddings is forwarded until then.",
		func() float64 {
			if f.dim.Load() > 0 {
				return 1
			}
			return 0
		})
	return m
}

// knownMethods: every method of the persona.v1 services, health and reflection.
func knownMethods() map[string][2]string {
	out := map[string][2]string{}
	svcs := pb.File_persona_v1_service_proto.Services()
	for i := 0; i < svcs.Len(); i++ {
		s := svcs.Get(i)
		for j := 0; j < s.Methods().Len(); j++ {
			name := string(s.Methods().Get(j).Name())
			out["/"+string(s.FullName())+"/"+name] = [2]string{string(s.FullName()), name}
		}
	}
	for _, sm := range []string{"grpc.health.v1.Health/Check", "grpc.health.v1.Health/Watch",
		"grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
		"grpc.reflection.v1.ServerReflection/ServerReflectionInfo"} {
		i := strings.Index(sm, "/")
		out["/"+sm] = [2]string{sm[:i], sm[i+1:]}
	}
	return out
}

// forwardedCall counts a forwarded call by method and the status it ended with.
func (m *frontMetrics) forwardedCall(fullMethod string, code codes.Code) {
	sm, ok := m.methods[fullMethod]
	if !ok {
		sm = [2]string{"other", "other"}
	}
	m.calls.With(sm[0], sm[1], codeName(code)).Inc()
}

// forwardReason of an error of answer: its forwardError, or a store error (counted by kind).
func (m *frontMetrics) forwardReason(err error) string {
	var fe *forwardError
	if errors.As(err, &fe) {
		if fe == errStoreReply {
			m.storeErrors["error"].Inc()
		}
		return fe.reason
	}
	kind := storeErrorKind(err)
	m.storeErrors[kind].Inc()
	if kind == "redirect" {
		return "redirect"
	}
	return "store_error"
}

func (m *frontMetrics) forwardedFor(reason string) {
	m.forwarded.Inc()
	m.reasons[reason].Inc()
}

// storeErrorKind: redirect (MOVED / ASK / TRYAGAIN / CLUSTERDOWN), timeout, error (bytes
// that are not RESP), else unavailable (connection refused or lost, a slot no node serves).
func storeErrorKind(err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, resp.ErrRedirect):
		return "redirect"
	case errors.Is(err, os.ErrDeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case errors.Is(err, resp.ErrProtocol):
		return "error"
	}
	return "unavailable"
}

// localAnswer counts a GetEmbeddings the front answered: its rows and its latency.
func (m *frontMetrics) localAnswer(out *pb.GetEmbeddingsResponse, took time.Duration) {
	m.local.Inc()
	m.latency.Observe(took.Seconds())
	p := 0
	switch out.Part {
	case pb.VectorPart_VECTOR_PART_COMBINED:
		p = 1
	case pb.VectorPart_VECTOR_PART_SHORT_TERM:
		p = 2
	}
	var found uint64
	for _, s := range out.Statuses {
		if s == pb.EmbeddingStatus_EMBEDDING_STATUS_FOUND {
			found++
		}
	}
	if found > 0 {
		m.rows[0][p].Add(found)
	}
	if n := uint64(len(out.Statuses)) - found; n > 0 {
		m.rows[1][p].Add(n)
	}
}

func (m *frontMetrics) relearnt(err error) {
	if err != nil {
		m.relearnFailed.Inc()
	} else {
		m.relearnOK.Inc()
	}
}
