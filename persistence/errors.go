package persistence

import (
	"errors"
	"fmt"
)

// Sentinel errors. Typed errors below wrap them so callers can use errors.Is.
var (
	// ErrLocked: another process holds the database file's lock.
	ErrLocked = errors.New("database in use by another worker")
	// ErrKeyFilePermissions: the key file is readable or writable by group or others.
	ErrKeyFilePermissions = errors.New("key file is accessible by group or others")
	// ErrKeyFileInvalid: the key file is not 32 bytes, or it is not a regular file.
	ErrKeyFileInvalid = errors.New("key file is not a 32-byte key")
	// ErrKeyFileMissing: the database holds sealed records but the key file is absent.
	ErrKeyFileMissing = errors.New("key file missing for a database that holds sealed records")
	// ErrDatabaseMissing: the key file exists but its database is missing or empty.
	ErrDatabaseMissing = errors.New("key file without its database")
	// ErrNoKeyFile: Options.KeyFile is empty on a writable open.
	ErrNoKeyFile = errors.New("no key file configured")
	// ErrWrongKey: the key does not decrypt the records of this database.
	ErrWrongKey = errors.New("key file does not decrypt this database")
	// ErrNoKey: a secret was requested from a store opened without a key.
	ErrNoKey = errors.New("store opened without a key")
	// ErrSchema: the file's schema version is unknown or newer than this build.
	ErrSchema = errors.New("unsupported database schema")
	// ErrNotFound: no such record.
	ErrNotFound = errors.New("not found")
	// ErrCorruptSecret: a sealed secret does not decrypt (damaged ciphertext).
	ErrCorruptSecret = errors.New("sealed secret does not decrypt")
	// ErrClosed: the committer or store is closed.
	ErrClosed = errors.New("closed")
	// ErrMissingSecret: a step would leave a live KeyPackage without its private keys.
	ErrMissingSecret = errors.New("live KeyPackage without private keys")
	// ErrClientSecret: private material given for a client-custody pool, whose keys
	// only its client may hold.
	ErrClientSecret = errors.New("private keys of a client-custody pool")
	// ErrSequence: a step returned a sequence number that does not follow the stored one.
	ErrSequence = errors.New("input sequence out of order")
)

// KeyFileError says which key file was refused and why.
type KeyFileError struct {
	Path   string
	Reason string
	Err    error // one of the ErrKeyFile* / ErrWrongKey sentinels
}

func (e *KeyFileError) Error() string {
	return fmt.Sprintf("key file %s: %v: %s", e.Path, e.Err, e.Reason)
}

func (e *KeyFileError) Unwrap() error { return e.Err }

// SchemaError reports a schema version this build cannot open.
type SchemaError struct {
	Path      string
	Found     string // as stored ("" when absent)
	Supported uint32
}

func (e *SchemaError) Error() string {
	found := e.Found
	if found == "" {
		found = "none"
	}
	return fmt.Sprintf("%s: %v: found schema version %s, this build reads versions 1..%d (a newer worker wrote it, or it is not a kpool database)",
		e.Path, ErrSchema, found, e.Supported)
}

func (e *SchemaError) Unwrap() error { return ErrSchema }

// SecretError names the secret that could not be read. It never carries key material.
type SecretError struct {
	ID  string
	Err error // ErrNotFound, ErrCorruptSecret or ErrNoKey
}

func (e *SecretError) Error() string { return fmt.Sprintf("secret %q: %v", e.ID, e.Err) }

func (e *SecretError) Unwrap() error { return e.Err }

// InputError says why the store refused to write a step the core accepted.
type InputError struct {
	EventID string
	Ref     string
	Reason  string
	Err     error // ErrMissingSecret, ErrSequence, ...
}

func (e *InputError) Error() string {
	s := fmt.Sprintf("event %q not stored: %v", e.EventID, e.Err)
	if e.Ref != "" {
		s += " (ref " + e.Ref + ")"
	}
	if e.Reason != "" {
		s += ": " + e.Reason
	}
	return s
}

func (e *InputError) Unwrap() error { return e.Err }
