package worker

import "github.com/kpool/kpool/pool"

// outstanding returns the generate requests a pool record still owes: the core counts
// them durably (Requested, LastResortRequested), so a restart resumes an interrupted
// refill instead of forgetting it.
func outstanding(p pool.Pool) []pool.GenerateRequest {
	var out []pool.GenerateRequest
	if p.LastResortRequested {
		out = append(out, pool.GenerateRequest{Pool: p.ID, Count: 1, LastResort: true})
	}
	if p.Requested > 0 {
		out = append(out, pool.GenerateRequest{Pool: p.ID, Count: p.Requested})
	}
	return out
}
