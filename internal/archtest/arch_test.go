// Package archtest enforces the import rules of DESIGN.md: imports point inward, the
// wire contract is a leaf, and only persistence touches bbolt.
package archtest

import (
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

const module = "github.com/kpool/kpool/"

// allowed lists, per package directory, the non-standard-library imports it may use.
// Module-internal packages are given without the module prefix.
var allowed = map[string][]string{
	"events":      {},
	"fsm":         {"events", "github.com/looplab/fsm"},
	"pool":        {"events", "fsm", "mls"},
	"mls":         {"github.com/cloudflare/circl", "golang.org/x/crypto"},
	"persistence": {"events", "fsm", "pool", "go.etcd.io/bbolt"},
}

func TestImportsPointInward(t *testing.T) {
	root := filepath.Join("..", "..")
	for dir, ok := range allowed {
		for _, imp := range imports(t, filepath.Join(root, dir)) {
			if isStdlib(imp) {
				continue
			}
			rel := strings.TrimPrefix(imp, module)
			permitted := false
			for _, a := range ok {
				if rel == a || strings.HasPrefix(rel, a+"/") {
					permitted = true
				}
			}
			if !permitted {
				t.Errorf("%s/ imports %s, which DESIGN.md does not allow (allowed: %v)", dir, imp, ok)
			}
		}
	}
}

func TestOnlyPersistenceImportsBbolt(t *testing.T) {
	root := filepath.Join("..", "..")
	err := filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		switch {
		case rel == "persistence":
			return nil // the one package allowed to import bbolt
		case rel != "." && (strings.HasPrefix(d.Name(), ".") || d.Name() == "testdata"):
			return filepath.SkipDir
		}
		for _, imp := range imports(t, path) {
			if strings.HasPrefix(imp, "go.etcd.io/bbolt") {
				t.Errorf("%s imports bbolt; only persistence/ may", rel)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// imports returns the imports of the non-test Go files in dir.
func imports(t *testing.T, dir string) []string {
	t.Helper()
	files, _ := filepath.Glob(filepath.Join(dir, "*.go"))
	var out []string
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		parsed, err := parser.ParseFile(token.NewFileSet(), f, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatalf("parse %s: %v", f, err)
		}
		for _, s := range parsed.Imports {
			p, _ := strconv.Unquote(s.Path.Value)
			out = append(out, p)
		}
	}
	return out
}

// isStdlib: standard library import paths have no dot in their first element.
func isStdlib(path string) bool {
	first, _, _ := strings.Cut(path, "/")
	return !strings.Contains(first, ".")
}
