package persistence

import (
	"bytes"

	"github.com/kpool/kpool/pool"
)

// storeProblems is Store.Check plus what only a test knows: every live KeyPackage's
// private keys decrypt to the bundle the test stored for it.
func storeProblems(s *Store) []string {
	var bad []string
	if err := s.Check(func(p string) { bad = append(bad, p) }); err != nil {
		return append(bad, err.Error())
	}
	pools, err := s.Pools()
	if err != nil {
		return append(bad, err.Error())
	}
	for _, p := range pools {
		s.KeyPackages(p.ID, func(kp pool.KeyPackage) bool {
			if kp.State.Live() {
				if sec, err := s.Secret(kp.Ref); err != nil || !bytes.Equal(sec, secretOf(kp.Ref)) {
					bad = append(bad, "kp "+kp.Ref+": private keys are not the ones stored")
				}
			}
			return true
		})
	}
	return bad
}
