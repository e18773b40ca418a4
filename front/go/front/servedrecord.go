package front

import (
	"strconv"
	"unicode/utf8"

	pb "persona/clients/go/personav1"
	"persona/front/go/kafka"
)

// servedSchema: the record's schema version `v` (services/serving/served_log.py SCHEMA).
const servedSchema = 1

// servedStatus: the `status` of a row, services/serving/embeddings.py STATUSES' names.
func servedStatus(s pb.EmbeddingStatus) string {
	switch s {
	case pb.EmbeddingStatus_EMBEDDING_STATUS_FOUND:
		return "found"
	case pb.EmbeddingStatus_EMBEDDING_STATUS_FALLBACK_PRIOR:
		return "fallback"
	}
	return "not_found"
}

// sample: the kept rows of one answer (one queue item), served_log.py's Sample.
type sample struct {
	servedAtMs int64
	requestID  *string // nil: null (never, within a call)
	version    string
	userIDs    []string
	statuses   []string
	computedAt []int64 // the newest vector's, as the answer's meta column
}

// appendRecords appends the sample's records: key = the user id (UTF-8), value =
// Sample.records()' `json.dumps(value, ensure_ascii=False)`, byte for byte (its default
// separators ", " and ": ", its key order, null computed_at_ms unless found).
func (s *sample) appendRecords(out []kafka.Record) []kafka.Record {
	for i, uid := range s.userIDs {
		found := s.statuses[i] == "found"
		b := make([]byte, 0, 160+len(uid)+len(s.version))
		b = append(b, `{"v": `...)
		b = strconv.AppendInt(b, servedSchema, 10)
		b = append(b, `, "user_id": `...)
		b = appendPyString(b, uid)
		b = append(b, `, "model_version": `...)
		b = appendPyString(b, s.version)
		b = append(b, `, "status": `...)
		b = appendPyString(b, s.statuses[i])
		b = append(b, `, "found": `...)
		b = strconv.AppendBool(b, found)
		b = append(b, `, "computed_at_ms": `...)
		if found {
			b = strconv.AppendInt(b, s.computedAt[i], 10)
		} else {
			b = append(b, "null"...)
		}
		b = append(b, `, "served_at_ms": `...)
		b = strconv.AppendInt(b, s.servedAtMs, 10)
		b = append(b, `, "request_id": `...)
		if s.requestID == nil {
			b = append(b, "null"...)
		} else {
			b = appendPyString(b, *s.requestID)
		}
		b = append(b, '}')
		out = append(out, kafka.Record{Key: []byte(uid), Value: b})
	}
	return out
}

// pyEscapes: the ASCII characters json.dumps escapes by name, and the name.
var pyEscapes = [utf8.RuneSelf]byte{'"': '"', '\\': '\\', '\b': 'b', '\f': 'f', '\n': 'n', '\r': 'r',
	'\t': 't'}

// appendPyString appends s as Python's json.dumps(s, ensure_ascii=False) writes it
// (Lib/json/encoder.py py_encode_basestring, and _json.c's): `"` and `\` escaped, \b \f \n
// \r \t by name, every other character below 0x20 as \u00xx (lowercase hex); everything
// else as is (DEL, non-ASCII, U+2028: unlike Go's encoding/json). Bytes that are not UTF-8
// (never in a user id: protobuf refuses them) are written as U+FFFD.
func appendPyString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c >= utf8.RuneSelf {
			r, n := utf8.DecodeRuneInString(s[i:])
			if r == utf8.RuneError && n == 1 {
				b = utf8.AppendRune(b, utf8.RuneError)
			} else {
				b = append(b, s[i:i+n]...)
			}
			i += n
			continue
		}
		switch e := pyEscapes[c]; {
		case e != 0:
			b = append(b, '\\', e)
		case c < 0x20:
			b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
		default:
			b = append(b, c)
		}
		i++
	}
	return append(b, '"')
}
