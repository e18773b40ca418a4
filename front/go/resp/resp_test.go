package resp

import (
	"bytes"
	"runtime"
	"strconv"
	"strings"
	"testing"
)

func TestKeySlot(t *testing.T) {
	if got := KeySlot([]byte("123456789")); got != 12739 {
		t.Fatalf("slot(123456789) = %d, want 12739", got)
	}
	a, b := KeySlot([]byte("{user1000}.following")), KeySlot([]byte("{user1000}.followers"))
	if a != b || a != KeySlot([]byte("user1000")) {
		t.Fatalf("hash tags: %d %d", a, b)
	}
	// an empty tag is no tag; only the first "{" counts
	if KeySlot([]byte("foo{}{bar}")) != int(CRC16([]byte("foo{}{bar}"))%Slots) {
		t.Fatal("empty tag")
	}
	if KeySlot([]byte("foo{{bar}}zap")) != KeySlot([]byte("{bar")) {
		t.Fatal("nested brace")
	}
	if KeySlot([]byte("foo{bar}{zap}")) != KeySlot([]byte("bar")) {
		t.Fatal("first tag")
	}
	if KeySlot([]byte("no-close{abc")) != int(CRC16([]byte("no-close{abc"))%Slots) {
		t.Fatal("unclosed tag")
	}
}

func TestAppendCommand(t *testing.T) {
	got := AppendCommand(nil, []byte("LRANGE"), []byte("k\r\n"), []byte("0"), []byte(""))
	want := "*4\r\n$6\r\nLRANGE\r\n$3\r\nk\r\n\r\n$1\r\n0\r\n$0\r\n\r\n"
	if string(got) != want {
		t.Fatalf("%q", got)
	}
}

func TestReadReplies(t *testing.T) {
	raw := "+OK\r\n-MOVED 1 127.0.0.1:7001\r\n:-42\r\n$5\r\na\r\nbc\r\n$-1\r\n*-1\r\n" +
		"*3\r\n$0\r\n\r\n*1\r\n:7\r\n$2\r\n\x00\xff\r\n*0\r\n"
	rs, err := ParseReplies(raw)
	if err != nil || len(rs) != 8 {
		t.Fatalf("%v %d", err, len(rs))
	}
	if rs[0].Kind != '+' || string(rs[0].Str) != "OK" || rs[1].Err() != "MOVED 1 127.0.0.1:7001" {
		t.Fatal("simple / error")
	}
	if !redirected(rs[1].Err()) || redirected("WRONGTYPE x") {
		t.Fatal("redirected")
	}
	if rs[2].Int != -42 || string(rs[3].Str) != "a\r\nbc" || !rs[4].Nil || !rs[5].Nil {
		t.Fatal("int / bulk / nil")
	}
	arr := rs[6].Array
	if len(arr) != 3 || len(arr[0].Str) != 0 || arr[0].Nil || arr[1].Array[0].Int != 7 ||
		!bytes.Equal(arr[2].Str, []byte{0, 0xff}) {
		t.Fatalf("array %+v", arr)
	}
	if rs[7].Kind != '*' || rs[7].Nil || len(rs[7].Array) != 0 {
		t.Fatal("empty array")
	}
	for _, bad := range []string{"?x\r\n", "$3\r\nab\r\n", "$2\r\nabXY", ":1\n", "*x\r\n"} {
		if _, err := ParseReplies(bad); err == nil {
			t.Fatalf("no error for %q", bad)
		}
	}
}

// A reply's header is not its data: a huge array or string announced and then cut short
// fails without allocating what it announced; a large string sent whole still parses.
func TestHugeHeadersAllocateLittle(t *testing.T) {
	for _, raw := range []string{"*16777216\r\n", "$536870912\r\nab", "*2\r\n$536870000\r\n"} {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		_, err := ParseReplies(raw)
		runtime.ReadMemStats(&after)
		if err == nil {
			t.Fatalf("%q: no error", raw)
		}
		if d := after.TotalAlloc - before.TotalAlloc; d > 64<<20 {
			t.Fatalf("%q: %d MiB allocated", raw, d>>20)
		}
	}
	big := bytes.Repeat([]byte("0123456789abcdef"), 3<<20/16+1)
	rs, err := ParseReplies("$" + strconv.Itoa(len(big)) + "\r\n" + string(big) + "\r\n:1\r\n")
	if err != nil || len(rs) != 2 || !bytes.Equal(rs[0].Str, big) || rs[1].Int != 1 {
		t.Fatalf("a 3 MiB string: %v %d", err, len(rs))
	}
}

// Arrays nest at most 8 deep (CLUSTER SLOTS: 4); deeper is a protocol error.
func TestDeepNestingRefused(t *testing.T) {
	rs, err := ParseReplies(strings.Repeat("*1\r\n", 8) + ":7\r\n")
	if err != nil || len(rs) != 1 {
		t.Fatalf("8 deep: %v", err)
	}
	if _, err := ParseReplies(strings.Repeat("*1\r\n", 9) + ":7\r\n"); err != ErrProtocol {
		t.Fatalf("9 deep: %v", err)
	}
	slots := "*1\r\n*3\r\n:0\r\n:16383\r\n*4\r\n$9\r\n127.0.0.1\r\n:7000\r\n$2\r\nid\r\n*2\r\n$8\r\nhostname\r\n$1\r\nh\r\n"
	if rs, err := ParseReplies(slots); err != nil || rs[0].Array[0].Array[2].Array[3].Array[1].Str[0] != 'h' {
		t.Fatalf("CLUSTER SLOTS: %v", err)
	}
}
