package resp

import (
	"bytes"
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
