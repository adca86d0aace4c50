package worker

import (
	"bytes"
	"errors"
	"fmt"
	"time"

	"github.com/kpool/kpool/events"
	"github.com/kpool/kpool/events/natsbus"
	"github.com/kpool/kpool/mls"
	"github.com/kpool/kpool/persistence"
	"github.com/kpool/kpool/pool"
	"github.com/nats-io/nats.go/micro"
)

// Version is reported by the micro service's INFO.
const Version = "0.1.0"

// apiError is an answer with a micro error code.
type apiError struct{ code, desc string }

func (e *apiError) Error() string { return e.code + ": " + e.desc }

func apiErr(code, format string, args ...any) error {
	return &apiError{code: code, desc: fmt.Sprintf(format, args...)}
}

// toAPIError maps a rejection to its code; store failures are "unavailable" (retry).
func toAPIError(err error) *apiError {
	var ae *apiError
	if errors.As(err, &ae) {
		return ae
	}
	var fe *events.FieldError
	var re *pool.RejectError
	var ie *persistence.InputError
	if errors.As(err, &fe) || errors.As(err, &re) || errors.As(err, &ie) || errors.Is(err, events.ErrUnknownType) {
		code, reason := codeOf(err)
		return &apiError{code: code, desc: reason}
	}
	return &apiError{code: natsbus.CodeUnavailable, desc: "the worker could not commit the request; retry: " + err.Error()}
}

type endpoint struct {
	name, verb string
	perPool    bool
	fn         func(w *Worker, pool string, data []byte) (any, error)
}

// endpoints are the micro service's; in cluster mode the top level routes each call to
// the engine of its pool's partition (route.go).
var endpoints = []endpoint{
	{"pool_register", natsbus.VerbRegister, true, (*Worker).apiRegister},
	{"pool_status", natsbus.VerbStatus, true, (*Worker).apiStatus},
	{"pool_list", natsbus.VerbList, false, (*Worker).apiList},
	{"pool_replenish", natsbus.VerbReplenish, true, (*Worker).apiReplenish},
	{"keypackage_get", natsbus.VerbGet, true, (*Worker).apiGet},
	{"keypackage_take", natsbus.VerbTake, true, (*Worker).apiTake},
}

func (w *Worker) startService() error {
	svc, err := micro.AddService(w.nc, micro.Config{
		Name:        natsbus.ServiceName,
		Version:     Version,
		Description: "kpool: pools of MLS KeyPackages (register, status, list, replenish, get, take)",
	})
	if err != nil {
		return fmt.Errorf("worker: micro service: %w", err)
	}
	w.svc = svc
	for _, ep := range endpoints {
		subject := natsbus.APISubject(w.subj, ep.verb, "")
		if ep.perPool {
			subject = natsbus.APISubject(w.subj, ep.verb, "*")
		}
		if err := svc.AddEndpoint(ep.name, w.apiHandler(ep), micro.WithEndpointSubject(subject)); err != nil {
			return fmt.Errorf("worker: endpoint %s: %w", subject, err)
		}
	}
	w.log.Info("API", "service", natsbus.ServiceName, "subjects", w.subj.API()+".>")
	return nil
}

func (w *Worker) apiHandler(ep endpoint) micro.Handler {
	return micro.HandlerFunc(func(req micro.Request) {
		id := ""
		if ep.perPool {
			id = natsbus.PoolFromAPISubject(req.Subject())
		}
		var resp any
		var err error
		if w.cluster != nil {
			resp, err = w.cluster.call(ep, id, req.Data())
		} else {
			resp, err = w.callAPI(ep, id, req.Data())
		}
		if err != nil {
			ae := toAPIError(err)
			w.metrics.api.WithLabelValues(ep.name, ae.code).Inc()
			_ = req.Error(ae.code, ae.desc, nil)
			return
		}
		w.metrics.api.WithLabelValues(ep.name, "ok").Inc()
		_ = req.RespondJSON(resp)
	})
}

func (w *Worker) callAPI(ep endpoint, id string, data []byte) (any, error) {
	if err := checkPoolArg(ep, id); err != nil {
		return nil, err
	}
	if w.ctx.Err() != nil {
		return nil, errShuttingDown
	}
	// A partition just taken answers from its view once that has caught up with the log.
	for deadline := time.Now().Add(callTimeout); !w.caughtUp.Load(); {
		if time.Now().After(deadline) {
			return nil, apiErr(natsbus.CodeUnavailable, "partition %d is still catching up with its log; retry", w.part)
		}
		if !w.sleepCtx(20 * time.Millisecond) {
			return nil, errShuttingDown
		}
	}
	return ep.fn(w, id, data)
}

// errShuttingDown answers a call that reached a worker (or a partition's engine) that is
// stopping; nothing was done.
var errShuttingDown = &apiError{code: natsbus.CodeUnavailable, desc: "the worker is shutting down"}

func checkPoolArg(ep endpoint, id string) error {
	if ep.perPool {
		if err := events.ValidPoolID(id); err != nil {
			return apiErr(natsbus.CodeInvalidPoolID, "%s", err.(*events.FieldError).Reason)
		}
	}
	return nil
}

// decodeBody reads a request body strictly (natsbus.DecodeRequest); an empty body is the
// zero value.
func decodeBody(data []byte, v any) error {
	err := natsbus.DecodeRequest(data, v)
	if errors.Is(err, events.ErrMalformed) || errors.Is(err, events.ErrTooLarge) {
		return apiErr(natsbus.CodeBadRequest, "request body: %v", err)
	}
	return err
}

func (w *Worker) eventID(given string) string {
	if given != "" {
		return given
	}
	return natsbus.NewEventID()
}

// apiRegister creates a pool with a fresh signature key, or updates an existing pool's
// policy. The private signature key is stored sealed in the same transaction as the
// pool, and returned sealed to recipient_key only by the call that created the pool.
func (w *Worker) apiRegister(id string, data []byte) (any, error) {
	var body natsbus.RegisterRequest
	if err := decodeBody(data, &body); err != nil {
		return nil, err
	}
	w.regMu.Lock()
	defer w.regMu.Unlock()
	existing, exists, err := w.store.Pool(id)
	if err != nil {
		return nil, err
	}
	reg := &events.Register{Identity: body.Identity, CipherSuite: body.CipherSuite, Policy: body.Policy, Custody: body.Custody}
	in := persistence.Input{Event: events.Event{ID: w.eventID(body.ID), Type: events.TypePoolRegistered, Time: w.cfg.Clock().UTC(), Pool: id, Register: reg}}
	var sealed *natsbus.Sealed
	client := body.Custody == events.CustodyClient || (exists && body.Custody == "" && existing.Custody == events.CustodyClient)
	if body.Custody != "" && body.Custody != events.CustodyKpool && body.Custody != events.CustodyClient {
		return nil, &events.FieldError{Field: "custody", Reason: fmt.Sprintf("%q is not a custody: use \"kpool\" (kpool holds the private keys) or \"client\" (the MLS client does)", body.Custody)}
	}
	switch {
	case !client && len(body.SignatureKey) > 0:
		return nil, &events.FieldError{Field: "signature_key", Reason: "only a client-custody pool is registered with a signature key (kpool generates its own)"}
	case client && len(body.RecipientKey) > 0:
		return nil, &events.FieldError{Field: "recipient_key", Reason: "a client-custody pool has no private key to seal: its client holds it"}
	}
	if exists {
		reg.SignatureKey = existing.SignatureKey
		if client && len(body.SignatureKey) > 0 && !bytes.Equal(body.SignatureKey, existing.SignatureKey) {
			reg.SignatureKey = body.SignatureKey // the core refuses the change (conflict)
		}
	} else if client {
		if !mls.CipherSuite(body.CipherSuite).Valid() {
			return nil, &events.FieldError{Field: "cipher_suite", Reason: fmt.Sprintf("%d is not a cipher suite kpool supports", body.CipherSuite)}
		}
		if len(body.SignatureKey) == 0 {
			return nil, &events.FieldError{Field: "signature_key", Reason: "missing: a client-custody pool is registered with its client's signature public key"}
		}
		if err := mls.CheckSignaturePublicKey(mls.CipherSuite(body.CipherSuite), body.SignatureKey); err != nil {
			return nil, &events.FieldError{Field: "signature_key", Reason: fmt.Sprintf("not a signature public key of cipher suite %d: %v", body.CipherSuite, err)}
		}
		reg.SignatureKey = body.SignatureKey
	} else {
		if !mls.CipherSuite(body.CipherSuite).Valid() {
			return nil, &events.FieldError{Field: "cipher_suite", Reason: fmt.Sprintf("%d is not a supported cipher suite (1-7, 77-88)", body.CipherSuite)}
		}
		priv, pub, err := mls.NewSignatureKey(mls.CipherSuite(body.CipherSuite), w.cfg.Rand)
		if err != nil {
			return nil, apiErr(natsbus.CodeInternal, "signature key generation failed: %v", err)
		}
		defer clear(priv)
		reg.SignatureKey = pub
		in.Secrets = map[string][]byte{persistence.PoolSecretID(id): priv}
		if len(body.RecipientKey) > 0 {
			// Seal before committing: a bad recipient key must not leave a pool whose key
			// the caller never received.
			enc, ct, err := mls.SealTo(mls.CipherSuite(body.CipherSuite), body.RecipientKey, natsbus.SealInfoSignatureKey(id), priv, w.cfg.Rand)
			if err != nil {
				return nil, apiErr(natsbus.CodeInvalidRecipient, "recipient_key is not an HPKE public key of cipher suite %d: %v", body.CipherSuite, err)
			}
			sealed = &natsbus.Sealed{Enc: enc, Ciphertext: ct}
		}
	}
	if err := events.Validate(in.Event); err != nil {
		return nil, err
	}
	res, err := w.submit(in)
	if err != nil {
		return nil, err
	}
	if res.Err != nil {
		return nil, res.Err
	}
	p, ok, err := w.store.Pool(id)
	if err != nil || !ok {
		return nil, apiErr(natsbus.CodeInternal, "pool %s not found after registration", id)
	}
	created := !exists && !res.Ready.Duplicate
	info := natsbus.PoolInfo{Pool: p.ID, Identity: p.Identity, CipherSuite: p.CipherSuite, SignatureKey: p.SignatureKey, Created: created, Custody: pool.CustodyName(p),
		Policy: pool.InForce(p), Changed: []string{}}
	if exists {
		info.Changed = append(info.Changed, pool.Changed(existing.Config, p.Config)...)
		info.Changed = append(info.Changed, pool.ProfileChanged(existing, p)...)
	}
	if created {
		info.SealedSignatureKey = sealed
		w.log.Info("pool registered", "pool", id, "identity", p.Identity, "cipher_suite", p.CipherSuite, "custody", pool.CustodyName(p))
	}
	if st, err := w.statusOf(p); err == nil {
		info.Status = &st
	}
	return info, nil
}

func (w *Worker) apiStatus(id string, _ []byte) (any, error) {
	p, ok, err := w.store.Pool(id)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, apiErr(pool.CodeUnknownPool, "pool %s is not registered", id)
	}
	return w.statusOf(p)
}

func (w *Worker) apiList(_ string, _ []byte) (any, error) {
	pools, err := w.store.Pools()
	if err != nil {
		return nil, err
	}
	sts, err := w.statusesOf(pools)
	if err != nil {
		return nil, err
	}
	return natsbus.PoolList{Pools: sts}, nil
}

func (w *Worker) apiReplenish(id string, data []byte) (any, error) {
	var body natsbus.ReplenishRequest
	if err := decodeBody(data, &body); err != nil {
		return nil, err
	}
	ev := events.Event{ID: w.eventID(body.ID), Type: events.TypeReplenish, Time: w.cfg.Clock().UTC(), Pool: id}
	res, err := w.submit(persistence.Input{Event: ev})
	if err != nil {
		return nil, err
	}
	if res.Err != nil {
		return nil, res.Err
	}
	return w.apiStatus(id, nil)
}

// keyPackageIn reads a KeyPackage and checks it belongs to the pool the caller named.
func (w *Worker) keyPackageIn(id, ref string) (pool.KeyPackage, error) {
	if err := events.Validate(events.Event{ID: "x", Type: events.TypeClaimed, Time: w.cfg.Clock(), Pool: id, Ref: ref}); err != nil {
		return pool.KeyPackage{}, err
	}
	kp, ok, err := w.store.KeyPackage(ref)
	if err != nil {
		return kp, err
	}
	if !ok {
		return kp, apiErr(pool.CodeUnknownRef, "no KeyPackage %s", ref)
	}
	if kp.Pool != id {
		// Do not name the other pool: callers may be scoped to their own pools.
		return kp, apiErr(pool.CodeWrongPool, "KeyPackage %s does not belong to pool %s", ref, id)
	}
	return kp, nil
}

func (w *Worker) apiGet(id string, data []byte) (any, error) {
	var body natsbus.GetRequest
	if err := decodeBody(data, &body); err != nil {
		return nil, err
	}
	kp, err := w.keyPackageIn(id, body.Ref)
	if err != nil {
		return nil, err
	}
	info := natsbus.KeyPackageInfo{Pool: kp.Pool, Ref: kp.Ref, State: string(kp.State), KeyPackage: kp.KeyPackage,
		NotBefore: kp.NotBefore, NotAfter: kp.NotAfter, LastResort: kp.LastResort, Used: kp.Used, Attempt: kp.Attempt, Reason: kp.Reason}
	if m, err := mls.DecodeMLSMessage(kp.KeyPackage); err == nil { // stored ones decode; a tombstone has no bytes
		l := m.LeafNode.Capabilities.Lists()
		info.CredentialType = uint16(m.LeafNode.Credential.Type)
		info.Capabilities = &natsbus.Capabilities{Versions: l[0], CipherSuites: l[1], Extensions: l[2], Proposals: l[3], Credentials: l[4]}
	}
	return info, nil
}

// apiTake consumes a KeyPackage and returns its private bundle sealed to recipient_key.
// Everything that can be checked is checked before the commit, because the commit erases
// the private keys: a take whose answer is lost cannot be repeated.
func (w *Worker) apiTake(id string, data []byte) (any, error) {
	var body natsbus.TakeRequest
	if err := decodeBody(data, &body); err != nil {
		return nil, err
	}
	p, ok, err := w.store.Pool(id)
	if err != nil {
		return nil, err
	}
	if !ok {
		return nil, apiErr(pool.CodeUnknownPool, "pool %s is not registered", id)
	}
	if p.Custody == events.CustodyClient {
		return nil, apiErr(pool.CodeCustody, "pool %s is client custody: its private keys never leave its MLS client, so kpool has none to hand out; the client reports a processed Welcome with a consumed event", id)
	}
	if _, err := w.keyPackageIn(id, body.Ref); err != nil {
		return nil, err
	}
	suite := mls.CipherSuite(p.CipherSuite)
	if body.CipherSuite != 0 && body.CipherSuite != p.CipherSuite {
		return nil, apiErr(natsbus.CodeInvalidRecipient, "recipient key is for cipher suite %d, pool %s uses %d", body.CipherSuite, id, p.CipherSuite)
	}
	info := natsbus.SealInfoTake(id, body.Ref)
	if _, _, err := mls.SealTo(suite, body.RecipientKey, info, nil, w.cfg.Rand); err != nil {
		return nil, apiErr(natsbus.CodeInvalidRecipient, "recipient_key is not an HPKE public key of cipher suite %d: %v", p.CipherSuite, err)
	}
	ev := events.Event{ID: w.eventID(body.ID), Type: events.TypeConsumed, Time: w.cfg.Clock().UTC(), Pool: id, Ref: body.Ref}
	res, err := w.submit(persistence.Input{Event: ev, Reveal: body.Ref})
	if err != nil {
		return nil, err
	}
	if res.Err != nil {
		return nil, res.Err
	}
	defer clear(res.Revealed)
	if len(res.Revealed) == 0 {
		return nil, apiErr(pool.CodeInvalidTransition, "KeyPackage %s was already taken (event %s applied before); its private keys are erased", body.Ref, ev.ID)
	}
	enc, ct, err := mls.SealTo(suite, body.RecipientKey, info, res.Revealed, w.cfg.Rand)
	if err != nil {
		return nil, apiErr(natsbus.CodeInternal, "sealing the bundle failed after the KeyPackage was consumed: %v", err)
	}
	w.log.Info("KeyPackage taken", "pool", id, "ref", body.Ref)
	return natsbus.TakeResponse{Pool: id, Ref: body.Ref, CipherSuite: p.CipherSuite, Sealed: natsbus.Sealed{Enc: enc, Ciphertext: ct}}, nil
}
