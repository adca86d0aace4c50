package replay

import "github.com/kpool/kpool/events"

// item is one result of LogReader.Next with the line it came from.
type item struct {
	rec  events.LogRecord
	err  error
	line int
}

// readAheadBatch is the number of records decoded per hand-over: large enough that the
// channel costs nothing per record, small enough to keep memory flat.
const readAheadBatch = 256

// readAhead decodes the log on its own goroutine, so that on two cores decoding and
// stepping overlap. Batches arrive in log order; the last item carries io.EOF or the
// reader's fatal error. Closing stop ends the goroutine at its next hand-over (it may
// still be inside a Read then, which the caller ends by closing the log's source).
func readAhead(lr *events.LogReader, stop <-chan struct{}) <-chan []item {
	out := make(chan []item, 4)
	go func() {
		defer close(out)
		for {
			batch := make([]item, 0, readAheadBatch)
			last := false
			for len(batch) < readAheadBatch {
				rec, err := lr.Next()
				batch = append(batch, item{rec: rec, err: err, line: lr.Line()})
				if err != nil && !isLineError(err) {
					last = true // io.EOF or a read failure: nothing follows
					break
				}
			}
			select {
			case out <- batch:
			case <-stop:
				return
			}
			if last {
				return
			}
		}
	}()
	return out
}

func isLineError(err error) bool {
	_, ok := err.(*events.LogLineError)
	return ok
}
