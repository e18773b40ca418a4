package kafka

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// The protocol's primitives, non-flexible versions only (no tagged fields, no compact
// arrays): big-endian integers, int16-length strings, int32-length bytes and arrays.

// API keys used.
const (
	apiProduce     int16 = 0
	apiMetadata    int16 = 3
	apiApiVersions int16 = 18
)

// The versions spoken (the highest both sides know is used): the last non-flexible ones.
// Produce v3 is the first with RecordBatch v2; Metadata v4 the first that can say "do not
// create the topic".
var speaks = map[int16][2]int16{
	apiProduce:  {3, 8},
	apiMetadata: {4, 8},
}

// Error codes the producer tells apart (the protocol's error table).
const (
	errNone                  int16 = 0
	errUnknownTopicPartition int16 = 3
	errLeaderNotAvailable    int16 = 5
	errNotLeader             int16 = 6
	errNetwork               int16 = 13
	errNotEnoughReplicas     int16 = 19
	errKafkaStorage          int16 = 56
	errFencedLeaderEpoch     int16 = 74
	errUnknownLeaderEpoch    int16 = 75
)

// retriable: the broker did not write the records and a metadata relearn may help.
func retriable(code int16) bool {
	switch code {
	case errUnknownTopicPartition, errLeaderNotAvailable, errNotLeader, errNetwork,
		errNotEnoughReplicas, errKafkaStorage, errFencedLeaderEpoch, errUnknownLeaderEpoch:
		return true
	}
	return false
}

// Error is an error code a broker answered.
type Error int16

func (e Error) Error() string {
	names := map[Error]string{3: "UNKNOWN_TOPIC_OR_PARTITION", 5: "LEADER_NOT_AVAILABLE",
		6: "NOT_LEADER_OR_FOLLOWER", 7: "REQUEST_TIMED_OUT", 10: "MESSAGE_TOO_LARGE",
		13: "NETWORK_EXCEPTION", 19: "NOT_ENOUGH_REPLICAS", 20: "NOT_ENOUGH_REPLICAS_AFTER_APPEND",
		29: "TOPIC_AUTHORIZATION_FAILED", 35: "UNSUPPORTED_VERSION", 87: "INVALID_RECORD"}
	if n, ok := names[e]; ok {
		return fmt.Sprintf("kafka error %d (%s)", int16(e), n)
	}
	return fmt.Sprintf("kafka error %d", int16(e))
}

type enc struct{ b []byte }

func (e *enc) i8(v int8)   { e.b = append(e.b, byte(v)) }
func (e *enc) i16(v int16) { e.b = binary.BigEndian.AppendUint16(e.b, uint16(v)) }
func (e *enc) i32(v int32) { e.b = binary.BigEndian.AppendUint32(e.b, uint32(v)) }
func (e *enc) str(s string) {
	e.i16(int16(len(s)))
	e.b = append(e.b, s...)
}
func (e *enc) bytes(v []byte) {
	e.i32(int32(len(v)))
	e.b = append(e.b, v...)
}

// errShort: a response that ends before its fields do.
var errShort = errors.New("kafka: response cut short")

// dec reads a response; the first error sticks (reads after it give zeros).
type dec struct {
	b   []byte
	err error
}

func (d *dec) take(n int) []byte {
	if d.err != nil || n < 0 || n > len(d.b) {
		if d.err == nil {
			d.err = errShort
		}
		return nil
	}
	v := d.b[:n]
	d.b = d.b[n:]
	return v
}

func (d *dec) i8() int8 {
	if v := d.take(1); v != nil {
		return int8(v[0])
	}
	return 0
}

func (d *dec) i16() int16 {
	if v := d.take(2); v != nil {
		return int16(binary.BigEndian.Uint16(v))
	}
	return 0
}

func (d *dec) i32() int32 {
	if v := d.take(4); v != nil {
		return int32(binary.BigEndian.Uint32(v))
	}
	return 0
}

func (d *dec) i64() int64 {
	if v := d.take(8); v != nil {
		return int64(binary.BigEndian.Uint64(v))
	}
	return 0
}

// str reads a (nullable) string; null reads as "".
func (d *dec) str() string {
	n := d.i16()
	if n < 0 {
		return ""
	}
	return string(d.take(int(n)))
}

// array reads an array's length (null: 0); each element is at least min bytes, so a
// length the rest cannot hold is an error, not an allocation.
func (d *dec) array(min int) int {
	n := int(d.i32())
	if n < 0 || d.err != nil {
		return 0
	}
	if n*min > len(d.b) {
		d.err = errShort
		return 0
	}
	return n
}

// skipInt32s skips an array of int32.
func (d *dec) skipInt32s() { d.take(4 * d.array(4)) }
