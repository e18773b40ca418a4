// Package kafka is a minimal Kafka producer written from the protocol (no library):
// ApiVersions, Metadata of one topic, Produce of RecordBatch v2 (magic 2, CRC-32C, no
// compression) with acks=-1, plaintext only, one connection per broker. It is what the
// front's served log needs (front/servedlog.go), nothing more: no consumer, no
// idempotence, no transactions, no compression, no TLS / SASL.
package kafka

import (
	"encoding/binary"
	"hash/crc32"
)

// Record is one keyed record (nil Key: no key).
type Record struct {
	Key, Value []byte
}

// castagnoli: the CRC-32C a RecordBatch v2 carries (KIP-98).
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// CRC32C of b, as a RecordBatch's crc field holds it.
func CRC32C(b []byte) uint32 { return crc32.Checksum(b, castagnoli) }

// AppendVarint appends v zigzag-encoded as a base-128 varint (the protocol's varint and
// varlong: protobuf's sint32 / sint64 encoding).
func AppendVarint(b []byte, v int64) []byte { return binary.AppendVarint(b, v) }

// ReadVarint reads a zigzag varint from b: its value and length (n <= 0: malformed).
func ReadVarint(b []byte) (int64, int) { return binary.Varint(b) }

// batch header sizes: baseOffset (8) + batchLength (4), then partitionLeaderEpoch (4) +
// magic (1) + crc (4); the CRC covers attributes .. the end.
const (
	batchLengthEnd = 12
	crcAt          = 17
	crcFrom        = 21
)

// AppendBatch appends one RecordBatch v2 of recs (at least one), every record with the
// timestamp tsMs (CreateTime), no producer id (-1: not idempotent), no compression.
func AppendBatch(b []byte, recs []Record, tsMs int64) []byte {
	start := len(b)
	b = binary.BigEndian.AppendUint64(b, 0)                   // baseOffset (the broker assigns)
	b = binary.BigEndian.AppendUint32(b, 0)                   // batchLength, set below
	b = binary.BigEndian.AppendUint32(b, 0xffffffff)          // partitionLeaderEpoch -1
	b = append(b, 2)                                          // magic
	b = binary.BigEndian.AppendUint32(b, 0)                   // crc, set below
	b = binary.BigEndian.AppendUint16(b, 0)                   // attributes: no compression, CreateTime
	b = binary.BigEndian.AppendUint32(b, uint32(len(recs)-1)) // lastOffsetDelta
	b = binary.BigEndian.AppendUint64(b, uint64(tsMs))        // baseTimestamp
	b = binary.BigEndian.AppendUint64(b, uint64(tsMs))        // maxTimestamp
	b = binary.BigEndian.AppendUint64(b, ^uint64(0))          // producerId -1
	b = binary.BigEndian.AppendUint16(b, 0xffff)              // producerEpoch -1
	b = binary.BigEndian.AppendUint32(b, 0xffffffff)          // baseSequence -1
	b = binary.BigEndian.AppendUint32(b, uint32(len(recs)))   // records
	var body []byte
	for i, r := range recs {
		body = body[:0]
		body = append(body, 0)                // attributes
		body = AppendVarint(body, 0)          // timestampDelta
		body = AppendVarint(body, int64(i))   // offsetDelta
		body = appendVarBytes(body, r.Key)    // key (-1: null)
		body = appendVarBytes(body, r.Value)  // value (-1: null)
		body = AppendVarint(body, 0)          // headers
		b = AppendVarint(b, int64(len(body))) // length
		b = append(b, body...)
	}
	binary.BigEndian.PutUint32(b[start+8:], uint32(len(b)-start-batchLengthEnd))
	binary.BigEndian.PutUint32(b[start+crcAt:], CRC32C(b[start+crcFrom:]))
	return b
}

func appendVarBytes(b, v []byte) []byte {
	if v == nil {
		return AppendVarint(b, -1)
	}
	return append(AppendVarint(b, int64(len(v))), v...)
}

// recordSize: about the bytes one record takes in a batch (for splitting batches).
func recordSize(r Record) int { return len(r.Key) + len(r.Value) + 16 }
