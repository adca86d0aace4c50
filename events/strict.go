package events

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strings"
	"time"
	"unicode/utf8"
)

// Strict JSON reading. encoding/json matches member names case-insensitively, keeps the
// last of two members with the same name, turns invalid UTF-8 into U+FFFD and reads null
// as "absent". A wire contract that refuses unknown fields must refuse all of these, or
// `{"id":"a","ID":"b"}` means something different to kpool and to the service that sent it.

// maxDepth bounds the nesting of a strict document; kpool's wire types nest three deep.
const maxDepth = 16

// UnmarshalStrict decodes one JSON object into v, a pointer to a struct, and refuses
// anything but exactly one object, invalid UTF-8, duplicate member names at any depth,
// names that are not exactly a json tag of the struct (case variants included) and
// nesting deeper than 16. Those errors wrap ErrMalformed. A null member value, an
// unreadable duration or a value of the wrong JSON type is a *FieldError naming the member.
func UnmarshalStrict(data []byte, v any) error {
	_, err := unmarshalStrict(data, v)
	return err
}

// unmarshalStrict is UnmarshalStrict that also returns the top-level member names.
func unmarshalStrict(data []byte, v any) (map[string]bool, error) {
	if !utf8.Valid(data) {
		return nil, fmt.Errorf("%w: not valid UTF-8", ErrMalformed)
	}
	trimmed := bytes.TrimLeft(data, " \t\r\n")
	if len(trimmed) == 0 || trimmed[0] != '{' {
		return nil, fmt.Errorf("%w: not a JSON object", ErrMalformed)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	top := map[string]bool{}
	if err := scanValue(dec, reflect.TypeOf(v), "", 0, top); err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("%w: trailing data after the JSON object", ErrMalformed)
	}
	dec = json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var fe *FieldError
		if errors.As(err, &fe) {
			return nil, fe
		}
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field != "" {
			return nil, &FieldError{Field: te.Field, Reason: fmt.Sprintf("a JSON %s is not a valid value", te.Value)}
		}
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	return top, nil
}

var (
	durationType    = reflect.TypeFor[Duration]()
	timeType        = reflect.TypeFor[time.Time]()
	unmarshalerType = reflect.TypeFor[json.Unmarshaler]()
)

// scanValue reads one value from dec, checking member names against t (the Go type it
// will be decoded into; nil when unknown). top collects the member names at depth 0.
func scanValue(dec *json.Decoder, t reflect.Type, path string, depth int, top map[string]bool) error {
	if depth > maxDepth {
		return fmt.Errorf("%w: nested deeper than %d levels", ErrMalformed, maxDepth)
	}
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	tok, err := dec.Token()
	if err != nil {
		return malformed(err)
	}
	if _, isString := tok.(string); t == durationType && !isString && tok != nil {
		return &FieldError{Field: path, Reason: "a duration is a string such as \"84d\" or \"36h\""}
	}
	switch tok := tok.(type) {
	case nil:
		return &FieldError{Field: path, Reason: "null is not a value here; leave the field out instead"}
	case string:
		if t == durationType {
			if _, err := ParseDuration(tok); err != nil {
				return &FieldError{Field: path, Reason: err.(*FieldError).Reason}
			}
		}
		return nil
	case json.Delim:
		switch tok {
		case '{':
			return scanObject(dec, t, path, depth, top)
		case '[':
			var elem reflect.Type
			if t != nil && (t.Kind() == reflect.Slice || t.Kind() == reflect.Array) {
				elem = t.Elem()
			}
			for dec.More() {
				if err := scanValue(dec, elem, path+"[]", depth+1, nil); err != nil {
					return err
				}
			}
			return closeToken(dec)
		}
	}
	return nil // number or bool
}

func scanObject(dec *json.Decoder, t reflect.Type, path string, depth int, top map[string]bool) error {
	fields := jsonFields(t)
	seen := map[string]bool{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return malformed(err)
		}
		name := tok.(string)
		full := name
		if path != "" {
			full = path + "." + name
		}
		if seen[name] {
			return fmt.Errorf("%w: field %q appears twice", ErrMalformed, truncate(full, 80))
		}
		seen[name] = true
		if top != nil && depth == 0 {
			top[name] = true
		}
		var ft reflect.Type
		if fields != nil {
			var ok bool
			if ft, ok = fields[name]; !ok {
				return unknownField(fields, full, name)
			}
		}
		if err := scanValue(dec, ft, full, depth+1, top); err != nil {
			return err
		}
	}
	return closeToken(dec)
}

// closeToken reads the '}' or ']' that More said comes next.
func closeToken(dec *json.Decoder) error {
	if _, err := dec.Token(); err != nil {
		return malformed(err)
	}
	return nil
}

func malformed(err error) error {
	if err == io.EOF {
		return fmt.Errorf("%w: unexpected end of input", ErrMalformed)
	}
	return fmt.Errorf("%w: %v", ErrMalformed, err)
}

func unknownField(fields map[string]reflect.Type, full, name string) error {
	for known := range fields {
		if strings.EqualFold(known, name) {
			return fmt.Errorf("%w: unknown field %q (field names are case-sensitive: %q)", ErrMalformed, truncate(full, 80), known)
		}
	}
	return fmt.Errorf("%w: unknown field %q", ErrMalformed, truncate(full, 80))
}

// jsonFields maps the exact json names of a struct's fields to their types; nil when t is
// not a struct whose members kpool names (a map, time.Time, a type with its own decoder).
func jsonFields(t reflect.Type) map[string]reflect.Type {
	if t == nil || t.Kind() != reflect.Struct || t == timeType || reflect.PointerTo(t).Implements(unmarshalerType) {
		return nil
	}
	fields := map[string]reflect.Type{}
	for f := range t.Fields() {
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		switch name {
		case "-":
			continue
		case "":
			name = f.Name
		}
		fields[name] = f.Type
	}
	return fields
}
