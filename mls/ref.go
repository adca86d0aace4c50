package mls

// RefHash implements RFC 9420 §5.2: Hash(RefHashInput{opaque label<V>; opaque value<V>}),
// with the label used verbatim.
func RefHash(suite CipherSuite, label string, value []byte) ([]byte, error) {
	p, err := params(suite)
	if err != nil {
		return nil, err
	}
	return refHash(p, label, value), nil
}

func refHash(p *suiteParams, label string, value []byte) []byte {
	var hdr [8]byte
	h := p.newHash()
	h.Write(appendVarint(hdr[:0], len(label)))
	h.Write([]byte(label))
	h.Write(appendVarint(hdr[:0], len(value)))
	h.Write(value)
	return h.Sum(make([]byte, 0, p.hashSize))
}

const keyPackageRefLabel = "MLS 1.0 KeyPackage Reference"

// Ref returns the KeyPackageRef: RefHash("MLS 1.0 KeyPackage Reference", KeyPackage).
func (kp *KeyPackage) Ref() ([]byte, error) {
	p, err := params(kp.CipherSuite)
	if err != nil {
		return nil, err
	}
	return refHash(p, keyPackageRefLabel, kp.Marshal()), nil
}
