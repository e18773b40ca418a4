package front

import (
	"testing"
	"time"

	"persona/front/go/resp"
)

func bulk(s string) resp.Reply { return resp.Reply{Kind: '$', Str: []byte(s)} }

// A malformed active pointer is forwarded (Python fails on it), whether just read or cached.
func TestMalformedActiveForwarded(t *testing.T) {
	v := newVersions(nil, time.Hour)
	for _, a := range []string{"a/b", "", "bad version!", "\xff"} {
		v.active, v.activeAt = a, time.Now()
		if got, err := v.resolve("", time.Now().Add(time.Second)); err != errVersion {
			t.Fatalf("active %q: %q %v", a, got, err)
		}
	}
	v.active = "v1-abc"
	if got, err := v.resolve("", time.Now().Add(time.Second)); err != nil || got != "v1-abc" {
		t.Fatalf("%q %v", got, err)
	}
	// an unpinned upstream answer of another version drops the cached active one
	v.activeSeen("v1-abc")
	if v.activeAt.IsZero() {
		t.Fatal("dropped on the same version")
	}
	v.activeSeen("v2-def")
	if !v.activeAt.IsZero() {
		t.Fatal("not dropped on a cutover")
	}
}

// A states hash with a field or value that is not UTF-8 forwards pinned requests.
func TestStatesNotUTF8Forwarded(t *testing.T) {
	ok := resp.Reply{Kind: '*', Array: []resp.Reply{bulk("v1-abc"), bulk("active")}}
	if s := parseStates(ok); s["v1-abc"] != "active" {
		t.Fatal(s)
	}
	for _, bad := range [][2]string{{"v1-abc\xff", "active"}, {"v1-abc", "act\xc3"}} {
		r := resp.Reply{Kind: '*', Array: []resp.Reply{bulk("v2-x"), bulk("active"),
			bulk(bad[0]), bulk(bad[1])}}
		if parseStates(r) != nil {
			t.Fatalf("%q accepted", bad)
		}
	}
	v := newVersions(nil, time.Hour)
	v.states, v.statesAt = nil, time.Now() // cached: a hash Python would not decode
	v.states = parseStates(resp.Reply{Kind: '*', Array: []resp.Reply{bulk("v1-abc"), bulk("\xff")}})
	// the fresh read would need a store: a cached bad hash is re-read, so only test the
	// cached path through statesOf
	if s, err := v.statesOf(time.Now().Add(time.Second), false); err != nil || s != nil {
		t.Fatalf("%v %v", s, err)
	}
}

// parse_columns: only what Python's json.loads + int() certainly take is answered.
func TestParseColumns(t *testing.T) {
	col := func(h string) string {
		return `{"columns": [{"outcome": "buy", "horizon_ms": ` + h + `, "calibrated": true}]}`
	}
	for _, good := range []string{col("86400000"), col("-1"), col("0"), col(`"123"`),
		col(`" +1_000 "`), col("123456789012345678901234567890"), `{"columns": []}`,
		`{"columns": [{"outcome": 1, "horizon_ms": 5, "calibrated": null, "audience": false}]}`,
		`{"columns": [{"outcome": "a", "horizon_ms": 1, "calibrated": 1}], "columns": []}`} {
		n, err := parseColumns([]byte(good))
		if err != nil {
			t.Fatalf("%s refused", good)
		}
		if good == `{"columns": []}` && n != 0 || good == col("0") && n != 1 {
			t.Fatalf("%s: %d", good, n)
		}
	}
	if n, err := parseColumns(nil); n != 0 || err != nil {
		t.Fatal("empty")
	}
	for _, bad := range []string{col("1.5"), col("1e3"), col("true"), col("null"), col(`"1.0"`),
		col(`"1__0"`), col(`"_1"`), col(`""`), col(`"0x10"`), col(`"١٢"`), col("[1]"), col("{}"),
		`{"Columns": []}`, `{"columns": [{"Outcome": "a", "horizon_ms": 1, "calibrated": 1}]}`,
		`{"columns": [{"outcome": "a", "Horizon_ms": 1, "calibrated": 1}]}`,
		`{"columns": [{"outcome": "a", "horizon_ms": 1}]}`, `{"columns": [null]}`,
		`{"columns": null}`, `{"columns": "ab"}`, `[]`, `{}`, `{"columns": [1]}`, "nope",
		"{\"columns\": [{\"outcome\": \"\xff\", \"horizon_ms\": 1, \"calibrated\": 1}]}",
		col("NaN"), col("Infinity")} {
		if _, err := parseColumns([]byte(bad)); err != errRecord {
			t.Fatalf("%s accepted", bad)
		}
	}
}
