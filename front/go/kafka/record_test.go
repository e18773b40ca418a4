package kafka

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"testing"
)

func TestCRC32C(t *testing.T) {
	// the CRC-32C check value (RFC 3720 B.4 and every CRC catalogue: "123456789")
	if got := CRC32C([]byte("123456789")); got != 0xe3069283 {
		t.Fatalf("crc32c = %#x", got)
	}
	// RFC 3720 B.4: 32 bytes of zeros, of 0xff
	if got := CRC32C(make([]byte, 32)); got != 0x8a9136aa {
		t.Fatalf("crc32c(zeros) = %#x", got)
	}
	if got := CRC32C(bytes.Repeat([]byte{0xff}, 32)); got != 0x62a8ab43 {
		t.Fatalf("crc32c(ones) = %#x", got)
	}
}

func TestVarint(t *testing.T) {
	// zigzag: 0 -> 0, -1 -> 1, 1 -> 2, -2 -> 3, ... then base-128 little-endian groups
	cases := map[int64]string{0: "00", -1: "01", 1: "02", -2: "03", 63: "7e", -64: "7f",
		64: "8001", 300: "d804", -129: "8102", 1 << 31: "8080808010",
		-1 << 63: "ffffffffffffffffff01"}
	for v, want := range cases {
		got := AppendVarint(nil, v)
		if hex.EncodeToString(got) != want {
			t.Errorf("varint(%d) = %x, want %s", v, got, want)
		}
		back, n := ReadVarint(got)
		if back != v || n != len(got) {
			t.Errorf("read %x = %d (%d bytes)", got, back, n)
		}
	}
}

// decodeBatch reads one RecordBatch v2 as a broker would: its length, magic, CRC-32C,
// counts and records; it returns the records and the batch's length in bytes.
func decodeBatch(b []byte) ([]Record, int, error) {
	if len(b) < 61 {
		return nil, 0, fmt.Errorf("batch of %d bytes", len(b))
	}
	n := batchLengthEnd + int(binary.BigEndian.Uint32(b[8:]))
	if n > len(b) || b[16] != 2 {
		return nil, 0, fmt.Errorf("length %d of %d, magic %d", n, len(b), b[16])
	}
	if crc := binary.BigEndian.Uint32(b[crcAt:]); crc != CRC32C(b[crcFrom:n]) {
		return nil, 0, fmt.Errorf("crc %#x, want %#x", crc, CRC32C(b[crcFrom:n]))
	}
	be := binary.BigEndian
	attrs, last := be.Uint16(b[21:]), int32(be.Uint32(b[23:]))
	first, max := int64(be.Uint64(b[27:])), int64(be.Uint64(b[35:]))
	pid, count := int64(be.Uint64(b[43:])), int(int32(be.Uint32(b[57:])))
	if attrs != 0 || pid != -1 || int(last) != count-1 || first != max {
		return nil, 0, fmt.Errorf("attrs %d pid %d last %d count %d ts %d %d", attrs, pid,
			last, count, first, max)
	}
	p := b[61:n]
	var out []Record
	for i := 0; i < count; i++ {
		size, k := ReadVarint(p)
		if k <= 0 || int(size) > len(p)-k {
			return nil, 0, fmt.Errorf("record %d: size %d", i, size)
		}
		r, rest := p[k:k+int(size)], p[k+int(size):]
		if r[0] != 0 {
			return nil, 0, fmt.Errorf("record %d: attributes %d", i, r[0])
		}
		r = r[1:]
		var fields [2]int64 // timestampDelta, offsetDelta
		for j := range fields {
			v, m := ReadVarint(r)
			fields[j], r = v, r[m:]
		}
		if fields[0] != 0 || fields[1] != int64(i) {
			return nil, 0, fmt.Errorf("record %d: deltas %v", i, fields)
		}
		var kv [2][]byte
		for j := range kv {
			l, m := ReadVarint(r)
			r = r[m:]
			if l >= 0 {
				kv[j], r = append([]byte{}, r[:l]...), r[l:]
			}
		}
		if h, m := ReadVarint(r); h != 0 || m != len(r) {
			return nil, 0, fmt.Errorf("record %d: %d headers, %d bytes left", i, h, len(r)-m)
		}
		out, p = append(out, Record{Key: kv[0], Value: kv[1]}), rest
	}
	if len(p) != 0 {
		return nil, 0, fmt.Errorf("%d bytes after the records", len(p))
	}
	return out, n, nil
}

func TestBatchRoundTrip(t *testing.T) {
	recs := []Record{{Key: []byte("u1"), Value: []byte(`{"v": 1}`)},
		{Key: []byte("évé"), Value: bytes.Repeat([]byte("x"), 300)},
		{Key: nil, Value: []byte("no key")}, {Key: []byte("k"), Value: nil}}
	b := AppendBatch([]byte("prefix"), recs, 1_764_650_001_234)
	got, n, err := decodeBatch(b[6:])
	if err != nil || n != len(b)-6 {
		t.Fatalf("decode: %v (%d of %d bytes)", err, n, len(b)-6)
	}
	if int64(binary.BigEndian.Uint64(b[6+27:])) != 1_764_650_001_234 {
		t.Fatal("baseTimestamp")
	}
	for i := range recs {
		if !bytes.Equal(got[i].Key, recs[i].Key) || !bytes.Equal(got[i].Value, recs[i].Value) ||
			(got[i].Key == nil) != (recs[i].Key == nil) || (got[i].Value == nil) != (recs[i].Value == nil) {
			t.Fatalf("record %d: %q, want %q", i, got[i], recs[i])
		}
	}
	b[len(b)-1] ^= 1 // a flipped bit: the CRC says so
	if _, _, err := decodeBatch(b[6:]); err == nil {
		t.Fatal("a corrupt batch decoded")
	}
}

// TestBatchBytes holds one small batch to its bytes, field by field from the protocol's
// RecordBatch v2 layout.
func TestBatchBytes(t *testing.T) {
	b := AppendBatch(nil, []Record{{Key: []byte("k"), Value: []byte("v")}}, 1)
	want := "0000000000000000" + "0000003a" + "ffffffff" + "02" + "%08x" + "0000" + "00000000" +
		"0000000000000001" + "0000000000000001" + "ffffffffffffffff" + "ffff" + "ffffffff" +
		"00000001" + "10" + "00" + "00" + "00" + "02" + "6b" + "02" + "76" + "00"
	want = fmt.Sprintf(want, CRC32C(b[crcFrom:]))
	if got := hex.EncodeToString(b); got != want {
		t.Fatalf("batch\n got %s\nwant %s", got, want)
	}
}

// partitionFixtures: testdata/served_log.json's partitions, as librdkafka's default
// partitioner chose them (gen_served_log.py, on librdkafka's mock cluster).
func TestPartitionAsLibrdkafka(t *testing.T) {
	raw, err := os.ReadFile("../testdata/served_log.json")
	if err != nil {
		t.Fatal(err)
	}
	var fx struct {
		Partitions []struct {
			KeyHex     string `json:"key_hex"`
			Partitions int    `json:"partitions"`
			Partition  int    `json:"partition"`
		} `json:"partitions"`
	}
	if err := json.Unmarshal(raw, &fx); err != nil || len(fx.Partitions) < 20 {
		t.Fatalf("fixtures: %v (%d): run testdata/gen_served_log.py", err, len(fx.Partitions))
	}
	never := func(int) int { t.Fatal("random for a key"); return 0 }
	seen := map[int]bool{}
	for _, c := range fx.Partitions {
		key, _ := hex.DecodeString(c.KeyHex)
		if got := Partition(key, c.Partitions, never); got != c.Partition {
			t.Errorf("key %q of %d: partition %d, librdkafka's %d", key, c.Partitions, got,
				c.Partition)
		}
		seen[c.Partition] = true
	}
	if len(seen) < 3 {
		t.Fatalf("fixtures cover partitions %v only", seen)
	}
	// more partition counts: the IEEE CRC-32 modulo n ("123456789" -> 0xcbf43926)
	for n, want := range map[int]int{1: 0, 7: 0xcbf43926 % 7, 100: 0xcbf43926 % 100} {
		if got := Partition([]byte("123456789"), n, never); got != want {
			t.Errorf("n=%d: %d, want %d", n, got, want)
		}
	}
	if got := Partition(nil, 5, func(n int) int { return n - 1 }); got != 4 {
		t.Fatalf("empty key: %d, want the random one", got)
	}
}
