package events

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"
)

var (
	testRef  = strings.Repeat("ab", 32)
	testTime = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
)

func testRecords() []LogRecord {
	s := Subjects{Prefix: DefaultPrefix}
	return []LogRecord{
		{Seq: 1, Subject: s.Event("p1", TypePoolRegistered), Event: Event{ID: "r1", Type: TypePoolRegistered, Time: testTime, Pool: "p1",
			Register: &Register{Identity: "alice", CipherSuite: 1, SignatureKey: []byte{1, 2, 3}, Policy: Policy{Target: new(5), Lifetime: new(Duration(48 * time.Hour))}}}},
		{Seq: 2, Subject: s.Event("p1", TypeGenerated), Event: Event{ID: "g1", Type: TypeGenerated, Time: testTime, Pool: "p1",
			Generated: &Generated{Ref: testRef, KeyPackage: []byte{0, 1, 0, 5}, NotBefore: 10, NotAfter: 20, LastResort: true}}},
		{Seq: 5, Subject: s.Event("p1", TypeUploadAck), Event: Event{ID: "a1", Type: TypeUploadAck, Time: testTime.Add(time.Second), Pool: "p1", Ref: testRef}},
		{Seq: 6, Subject: s.Event("", TypeExpiryTick), Event: Event{ID: "t1", Type: TypeExpiryTick, Time: testTime.Add(time.Hour)}},
	}
}

func writeLog(t *testing.T, h LogHeader, recs []LogRecord) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := NewLogWriter(&buf, h)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range recs {
		if err := w.Write(r); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// readAll returns the records and the line errors, stopping at EOF.
func readAll(t *testing.T, data []byte) ([]LogRecord, []error) {
	t.Helper()
	r, err := NewLogReader(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	var recs []LogRecord
	var errs []error
	for {
		rec, err := r.Next()
		if err == io.EOF {
			return recs, errs
		}
		if err != nil {
			var le *LogLineError
			if !errors.As(err, &le) {
				t.Fatalf("not a line error: %v", err)
			}
			errs = append(errs, err)
			continue
		}
		recs = append(recs, rec)
	}
}

func TestLogRoundTripIsByteExact(t *testing.T) {
	h := LogHeader{Source: "test"}
	data := writeLog(t, h, testRecords())
	if !bytes.HasPrefix(data, []byte(`{"format":"kpool-log","version":1,"subject_prefix":"kpool","source":"test"}`+"\n")) {
		t.Fatalf("header line: %q", strings.SplitN(string(data), "\n", 2)[0])
	}
	recs, errs := readAll(t, data)
	if len(errs) != 0 {
		t.Fatalf("errors: %v", errs)
	}
	if len(recs) != 4 || recs[2].Seq != 5 || recs[1].Event.Generated.Ref != testRef || !recs[1].Event.Generated.LastResort {
		t.Fatalf("records: %+v", recs)
	}
	if got := time.Duration(*recs[0].Event.Register.Policy.Lifetime); got != 48*time.Hour {
		t.Fatalf("policy lifetime %v", got)
	}
	again := writeLog(t, h, recs)
	if !bytes.Equal(data, again) {
		t.Fatalf("re-encoding differs:\n%s\n%s", data, again)
	}
}

func TestLogHeaderErrors(t *testing.T) {
	cases := []struct {
		name, data string
		want       error
		msg        string
	}{
		{"empty", "", ErrNotLog, "the file is empty"},
		{"no header", `{"seq":1,"subject":"kpool.events.tick","event":{}}`, ErrNotLog, "line 1 is not a"},
		{"foreign", `{"format":"other","version":1}`, ErrNotLog, "is not a"},
		{"newer", `{"format":"kpool-log","version":2}`, ErrLogVersion, "event log version 2 is newer than this kpool reads (up to 1): upgrade kpool"},
		{"zero", `{"format":"kpool-log","version":0}`, ErrLogVersion, "event log version 0 is not a known version"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r, err := NewLogReader(strings.NewReader(c.data))
			if !errors.Is(err, c.want) || !strings.Contains(err.Error(), c.msg) {
				t.Fatalf("got %v, want %v containing %q", err, c.want, c.msg)
			}
			if r != nil {
				t.Fatal("reader returned with an error")
			}
		})
	}
	var ve *LogVersionError
	_, err := NewLogReader(strings.NewReader("# a comment\n\n" + `{"format":"kpool-log","version":9}`))
	if !errors.As(err, &ve) || ve.Version != 9 {
		t.Fatalf("got %v", err)
	}
}

func TestLogDefaultsPrefix(t *testing.T) {
	r, err := NewLogReader(strings.NewReader(`{"format":"kpool-log","version":1}` + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	if r.Header().Prefix != DefaultPrefix {
		t.Fatalf("prefix %q", r.Header().Prefix)
	}
	if _, err := r.Next(); err != io.EOF {
		t.Fatalf("want EOF, got %v", err)
	}
}

// Each bad line is reported with its line number and cause; the good lines around it
// still come through.
func TestLogBadLines(t *testing.T) {
	good := writeLog(t, LogHeader{}, testRecords()[:1])
	big := `{"seq":9,"subject":"kpool.events.tick","event":{"id":"x","type":"expiry_tick","time":"2026-01-02T03:04:05Z","reason":"` + strings.Repeat("x", MaxLogLine) + `"}}`
	lines := []struct {
		line string
		want error
		msg  string
	}{
		{`not json`, ErrMalformed, "line 3: malformed event"},
		{`{"seq":0,"subject":"kpool.events.tick","event":{}}`, ErrInvalidField, "line 4: invalid seq: missing or 0"},
		{`{"seq":1,"subject":"kpool.events.tick","event":{"id":"t","type":"expiry_tick","time":"2026-01-02T03:04:05Z"}}`, ErrLogSeq, "line 5 (seq 1): sequence number out of order: seq 1 after seq 1"},
		{`{"seq":7,"subject":"kpool.events.p1.bogus","event":{"id":"t","type":"bogus","time":"2026-01-02T03:04:05Z","pool":"p1"}}`, ErrUnknownType, `line 6 (seq 7): unknown event type: "bogus"`},
		{`{"seq":8,"subject":"kpool.events.p2.upload_ack","event":{"id":"a","type":"upload_ack","time":"2026-01-02T03:04:05Z","pool":"p1","ref":"` + testRef + `"}}`, ErrSubject, `line 7 (seq 8): subject does not match event: pool "p1"`},
		{`{"seq":8,"subject":"kpool.events.p1.upload_ack","event":{"id":"a","type":"upload_ack","time":"2026-01-02T03:04:05Z","pool":"p1","ref":"XY"}}`, ErrInvalidField, "line 8 (seq 8): invalid ref: must be lowercase hex"},
		{`{"seq":8,"subject":"kpool.events.p1.upload_ack","event":{"id":"a","type":"upload_ack","time":"2026-01-02T03:04:05Z","pool":"p1","ref":"` + testRef + `","extra":1}}`, ErrMalformed, `unknown field "extra"`},
		{`{"seq":8,"subject":"kpool.events.tick"}`, ErrInvalidField, "line 10 (seq 8): invalid event: missing"},
		{big, ErrTooLarge, "line 11: event too large: line of"},
	}
	data := append([]byte{}, good...)
	for _, l := range lines {
		data = append(data, l.line+"\n"...)
	}
	// A good record after all of them still reads, with seq continuing after the last good one.
	tail := `{"seq":12,"subject":"kpool.events.tick","event":{"id":"t2","type":"expiry_tick","time":"2026-01-02T03:04:05Z"}}`
	data = append(data, tail...) // no final newline
	recs, errs := readAll(t, data)
	if len(errs) != len(lines) {
		t.Fatalf("%d errors, want %d: %v", len(errs), len(lines), errs)
	}
	for i, l := range lines {
		if !errors.Is(errs[i], l.want) || !errors.Is(errs[i], ErrLogLine) || !strings.Contains(errs[i].Error(), l.msg) {
			t.Errorf("line %q:\n got %v\nwant %v containing %q", l.line[:min(len(l.line), 60)], errs[i], l.want, l.msg)
		}
	}
	if len(recs) != 2 || recs[0].Seq != 1 || recs[1].Seq != 12 || recs[1].Event.ID != "t2" {
		t.Fatalf("records %+v", recs)
	}
}

func TestLogCommentsAndCRLF(t *testing.T) {
	data := "# golden log\r\n" + `{"format":"kpool-log","version":1}` + "\r\n\r\n# the tick\r\n" +
		`{"seq":3,"subject":"kpool.events.tick","event":{"id":"t","type":"expiry_tick","time":"2026-01-02T03:04:05Z"}}` + "\r\n"
	recs, errs := readAll(t, []byte(data))
	if len(errs) != 0 || len(recs) != 1 || recs[0].Seq != 3 {
		t.Fatalf("recs %+v errs %v", recs, errs)
	}
}

func TestLogWriterRefusesSeqOrder(t *testing.T) {
	var buf bytes.Buffer
	w, err := NewLogWriter(&buf, LogHeader{})
	if err != nil {
		t.Fatal(err)
	}
	recs := testRecords()
	if err := w.Write(recs[1]); err != nil {
		t.Fatal(err)
	}
	if err := w.Write(recs[0]); !errors.Is(err, ErrLogSeq) {
		t.Fatalf("got %v", err)
	}
	w.Flush()
	if n := bytes.Count(buf.Bytes(), []byte("\n")); n != 2 {
		t.Fatalf("%d lines written, want header + 1", n)
	}
}

// The reader must not grow with the log: a reused buffer, records handed out one by one.
func BenchmarkLogRead(b *testing.B) {
	recs := testRecords()
	var buf bytes.Buffer
	w, _ := NewLogWriter(&buf, LogHeader{})
	for i := range 10000 {
		r := recs[i%len(recs)]
		r.Seq = uint64(i + 1)
		w.Write(r)
	}
	w.Flush()
	data := buf.Bytes()
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		r, err := NewLogReader(bytes.NewReader(data))
		if err != nil {
			b.Fatal(err)
		}
		for {
			if _, err := r.Next(); err != nil {
				if err != io.EOF {
					b.Fatal(err)
				}
				break
			}
		}
	}
}

// A line longer than the reader's buffer is consumed whole, reported as too large, and
// the next line reads normally; memory stays bounded by MaxLogLine.
func TestLogHugeLine(t *testing.T) {
	good := writeLog(t, LogHeader{}, testRecords()[:1])
	huge := `{"seq":2,"subject":"kpool.events.tick","event":{"id":"` + strings.Repeat("y", 300<<10) + `"}}`
	tail := `{"seq":3,"subject":"kpool.events.tick","event":{"id":"t3","type":"expiry_tick","time":"2026-01-02T03:04:05Z"}}`
	data := append(good, huge+"\n"+tail+"\n"...)
	r, err := NewLogReader(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	if rec, err := r.Next(); err != nil || rec.Seq != 1 {
		t.Fatal(rec, err)
	}
	_, err = r.Next()
	var le *LogLineError
	if !errors.As(err, &le) || le.Line != 3 || !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), fmt.Sprintf("line of %d bytes, the limit is %d", len(huge), MaxLogLine)) {
		t.Fatalf("got %v", err)
	}
	if cap(r.long) > 2*MaxLogLine+(64<<10) {
		t.Fatalf("buffer grew to %d bytes", cap(r.long))
	}
	if rec, err := r.Next(); err != nil || rec.Seq != 3 || r.Line() != 4 {
		t.Fatal(rec, err, r.Line())
	}
	if _, err := r.Next(); err != io.EOF {
		t.Fatal(err)
	}
}
