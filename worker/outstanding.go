package worker

import "github.com/kpool/kpool/pool"

// outstanding returns the generate requests a pool record still owes (durable across
// restarts).
func outstanding(p pool.Pool) []pool.GenerateRequest {
	_ = p
	return nil // TODO: p.Requested once pool/ lands it
}
