package events

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// The NDJSON event log (docs/replay.md). The first line is a LogHeader; every other line
// is one LogRecord: an input in the order the core saw it, with its sequence number, the
// subject it arrived on and the event envelope. Blank lines and lines starting with '#'
// are ignored, so hand-written logs can carry comments; writers never emit them.

// LogFormat names the format in the header line.
const LogFormat = "kpool-log"

// LogVersion is the version this code writes and the newest it reads.
const LogVersion = 1

// MaxLogLine bounds one log line: an event of MaxEventSize plus the record around it.
const MaxLogLine = MaxEventSize + 1024

// Log errors. A *LogLineError wraps ErrLogLine plus the specific cause.
var (
	ErrNotLog     = errors.New("not a kpool event log")
	ErrLogVersion = errors.New("unsupported event log version")
	ErrLogLine    = errors.New("bad event log line")
	ErrLogSeq     = errors.New("sequence number out of order")
)

// LogHeader is the first line of a log.
type LogHeader struct {
	Format  string `json:"format"`  // always LogFormat
	Version int    `json:"version"` // LogVersion when written
	// Prefix is the subject prefix the events arrived under (default "kpool").
	Prefix string `json:"subject_prefix"`
	// Source says where the log came from: "journal", "stream", "test", ...
	Source string `json:"source,omitempty"`
	// From and To bound the exported sequence range (0 = open).
	From uint64 `json:"from,omitempty"`
	To   uint64 `json:"to,omitempty"`
	// Pool is set when the export was filtered to one pool.
	Pool string `json:"pool,omitempty"`
}

// LogRecord is one input.
type LogRecord struct {
	Seq     uint64 `json:"seq"`
	Subject string `json:"subject"`
	Event   Event  `json:"event"`
}

// LogVersionError is returned for a header whose version this code cannot read.
type LogVersionError struct{ Version int }

func (e *LogVersionError) Error() string {
	if e.Version > LogVersion {
		return fmt.Sprintf("event log version %d is newer than this kpool reads (up to %d): upgrade kpool to replay it", e.Version, LogVersion)
	}
	return fmt.Sprintf("event log version %d is not a known version (this kpool reads 1 to %d)", e.Version, LogVersion)
}

// Unwrap lets errors.Is(err, ErrLogVersion) match.
func (e *LogVersionError) Unwrap() error { return ErrLogVersion }

// LogLineError says which line of a log was rejected and why. Reading can go on after it.
type LogLineError struct {
	Line int    // 1-based line number in the file
	Seq  uint64 // the record's seq when it could be read, else 0
	Err  error  // the cause: ErrMalformed, ErrLogSeq, ErrSubject, a *FieldError, ...
}

func (e *LogLineError) Error() string {
	if e.Seq != 0 {
		return fmt.Sprintf("line %d (seq %d): %v", e.Line, e.Seq, e.Err)
	}
	return fmt.Sprintf("line %d: %v", e.Line, e.Err)
}

// Unwrap exposes ErrLogLine and the cause.
func (e *LogLineError) Unwrap() []error { return []error{ErrLogLine, e.Err} }

// LogReader reads a log line by line with constant memory.
type LogReader struct {
	r       *bufio.Reader
	header  LogHeader
	subj    Subjects
	line    int
	lastSeq uint64
	long    []byte // reused buffer for lines longer than the bufio buffer
	lineLen int    // true length of the last line, without its line end
}

// NewLogReader reads and checks the header line. A missing or foreign header returns
// ErrNotLog; an unknown version returns a *LogVersionError. Both mean: stop.
func NewLogReader(r io.Reader) (*LogReader, error) {
	lr := &LogReader{r: bufio.NewReaderSize(r, 64<<10)}
	for {
		b, err := lr.readLine()
		if err == io.EOF {
			return nil, fmt.Errorf("%w: the file is empty (the first line must be a {\"format\":%q,...} header)", ErrNotLog, LogFormat)
		}
		if err != nil {
			return nil, err
		}
		if skip(b) {
			continue
		}
		if err := lr.parseHeader(b); err != nil {
			return nil, err
		}
		return lr, nil
	}
}

func (lr *LogReader) parseHeader(b []byte) error {
	var h LogHeader
	if err := json.Unmarshal(b, &h); err != nil || h.Format != LogFormat {
		return fmt.Errorf("%w: line %d is not a {\"format\":%q,\"version\":%d,...} header", ErrNotLog, lr.line, LogFormat, LogVersion)
	}
	if h.Version < 1 || h.Version > LogVersion {
		return &LogVersionError{Version: h.Version}
	}
	if h.Prefix == "" {
		h.Prefix = DefaultPrefix
	}
	lr.header = h
	lr.subj = Subjects{Prefix: h.Prefix}
	return nil
}

// Header is the log's header line.
func (lr *LogReader) Header() LogHeader { return lr.header }

// Line is the number of the last line read.
func (lr *LogReader) Line() int { return lr.line }

// strictRecord is a LogRecord whose event is decoded on its own, by Decode.
type strictRecord struct {
	Seq     uint64          `json:"seq"`
	Subject string          `json:"subject"`
	Event   json.RawMessage `json:"event"`
}

// Next returns the next record, io.EOF at the end, a *LogLineError for a bad line (call
// Next again to go on), or another error when the underlying reader fails.
func (lr *LogReader) Next() (LogRecord, error) {
	for {
		b, err := lr.readLine()
		if err != nil {
			return LogRecord{}, err
		}
		if skip(b) {
			continue
		}
		return lr.parse(b)
	}
}

func (lr *LogReader) parse(b []byte) (LogRecord, error) {
	bad := func(seq uint64, err error) (LogRecord, error) {
		return LogRecord{}, &LogLineError{Line: lr.line, Seq: seq, Err: err}
	}
	if lr.lineLen > MaxLogLine {
		return bad(0, fmt.Errorf("%w: line of %d bytes, the limit is %d", ErrTooLarge, lr.lineLen, MaxLogLine))
	}
	// The record and its event are read as strictly as Decode reads events on NATS.
	var w strictRecord
	if err := UnmarshalStrict(b, &w); err != nil {
		return bad(w.Seq, err)
	}
	if w.Seq == 0 {
		return bad(0, &FieldError{Field: "seq", Reason: "missing or 0 (sequence numbers start at 1)"})
	}
	if w.Seq <= lr.lastSeq {
		return bad(w.Seq, fmt.Errorf("%w: seq %d after seq %d (a log is in strictly increasing seq order)", ErrLogSeq, w.Seq, lr.lastSeq))
	}
	if w.Event == nil {
		return bad(w.Seq, &FieldError{Field: "event", Reason: "missing"})
	}
	e, err := Decode(w.Event)
	if err != nil {
		return bad(w.Seq, err)
	}
	if err := lr.subj.CheckSubject(w.Subject, e); err != nil {
		return bad(w.Seq, err)
	}
	lr.lastSeq = w.Seq
	return LogRecord{Seq: w.Seq, Subject: w.Subject, Event: e}, nil
}

// readLine returns the next line without its line end. The slice is valid until the
// next call. Lines longer than MaxLogLine are consumed whole but returned truncated to
// MaxLogLine+1 bytes, so parse reports them as too large without holding them; lineLen
// is the line's true length.
func (lr *LogReader) readLine() ([]byte, error) {
	b, err := lr.r.ReadSlice('\n')
	last := b
	lr.lineLen = len(b)
	if err == bufio.ErrBufferFull {
		lr.long = append(lr.long[:0], b...)
		for err == bufio.ErrBufferFull {
			b, err = lr.r.ReadSlice('\n')
			last = b
			lr.lineLen += len(b)
			if len(lr.long) <= MaxLogLine {
				lr.long = append(lr.long, b...)
			}
		}
		b = lr.long
		if len(b) > MaxLogLine+1 {
			b = b[:MaxLogLine+1]
		}
	}
	if err == io.EOF && lr.lineLen == 0 {
		return nil, io.EOF
	}
	if err != nil && err != io.EOF {
		return nil, err
	}
	lr.line++
	lr.lineLen -= len(last) - len(bytes.TrimRight(last, "\r\n"))
	return bytes.TrimRight(b, "\r\n"), nil
}

func skip(b []byte) bool {
	b = bytes.TrimSpace(b)
	return len(b) == 0 || b[0] == '#'
}

// LogWriter writes a log: the header first, then one record per line.
type LogWriter struct {
	w       *bufio.Writer
	lastSeq uint64
}

// NewLogWriter writes the header. Version and Format are filled in.
func NewLogWriter(w io.Writer, h LogHeader) (*LogWriter, error) {
	h.Format, h.Version = LogFormat, LogVersion
	if h.Prefix == "" {
		h.Prefix = DefaultPrefix
	}
	lw := &LogWriter{w: bufio.NewWriterSize(w, 64<<10)}
	b, err := json.Marshal(h)
	if err != nil {
		return nil, err
	}
	if _, err := lw.w.Write(append(b, '\n')); err != nil {
		return nil, err
	}
	return lw, nil
}

// Write appends one record. Seqs must increase, as the reader requires.
func (lw *LogWriter) Write(rec LogRecord) error {
	if rec.Seq == 0 || rec.Seq <= lw.lastSeq {
		return fmt.Errorf("%w: cannot write seq %d after seq %d", ErrLogSeq, rec.Seq, lw.lastSeq)
	}
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	lw.lastSeq = rec.Seq
	_, err = lw.w.Write(append(b, '\n'))
	return err
}

// Flush writes buffered lines to the underlying writer.
func (lw *LogWriter) Flush() error { return lw.w.Flush() }
