// Package archtest enforces the import rules of DESIGN.md: imports point inward, the
// wire contract is a leaf, and only persistence touches bbolt.
package archtest

import (
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

const module = "github.com/kpool/kpool/"

// allowed lists, for every package directory of the module, the non-standard-library
// imports its non-test files may use. Module-internal packages are given without the
// module prefix. A package missing here fails TestEveryPackageIsChecked.
var allowed = map[string][]string{
	// the core and the wire contract
	"events": {},
	"fsm":    {"events", "github.com/looplab/fsm"},
	"pool":   {"events", "fsm", "mls"},
	"mls":    {"github.com/cloudflare/circl", "golang.org/x/crypto"},
	// the edges: storage, the NATS adapter, replay
	"persistence":    {"events", "fsm", "pool", "go.etcd.io/bbolt"},
	"events/natsbus": {"events", "mls", "github.com/nats-io/nats.go"},
	"replay":         {"events", "fsm", "pool", "persistence"},
	// the assembled worker, the test harness other teams import, the command
	"worker": {"events", "fsm", "pool", "mls", "persistence", "github.com/nats-io/nats-server/v2",
		"github.com/nats-io/nats.go", "github.com/prometheus/client_golang"},
	"kpooltest":  {"events", "pool", "replay", "worker", "github.com/nats-io/nats.go"},
	"cmd/worker": {"events", "mls", "persistence", "pool", "replay", "worker", "github.com/nats-io/nats.go", "github.com/spf13/cobra", "github.com/spf13/pflag"},
	// the end-to-end benchmark command: bare JetStream and bare bbolt are its baselines
	"cmd/bench-e2e": {"events", "mls", "worker", "github.com/nats-io/nats.go", "go.etcd.io/bbolt"},
	// test helpers
	"internal/archtest": {},
	"internal/testcert": {"github.com/cloudflare/circl"},
}

// TestEveryPackageIsChecked: every directory holding Go files has its rule above, so a
// new package cannot slip past the import rules.
func TestEveryPackageIsChecked(t *testing.T) {
	dirs := packageDirs(t)
	if len(dirs) < len(allowed) {
		t.Fatalf("found %d package directories %v, fewer than the %d rules: is the walk broken?", len(dirs), dirs, len(allowed))
	}
	for _, dir := range dirs {
		if _, ok := allowed[dir]; !ok {
			t.Errorf("package %s/ has no import rule in archtest's allowed map", dir)
		}
	}
	for dir := range allowed {
		if !slices.Contains(dirs, dir) {
			t.Errorf("rule for %s/, which holds no Go files", dir)
		}
	}
}

// packageDirs lists the module's directories that hold Go files, slash-separated,
// skipping testdata and hidden directories.
func packageDirs(t *testing.T) []string {
	t.Helper()
	root := filepath.Join("..", "..")
	var dirs []string
	err := filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		if rel != "." && (strings.HasPrefix(d.Name(), ".") || d.Name() == "testdata") {
			return filepath.SkipDir
		}
		if files, _ := filepath.Glob(filepath.Join(path, "*.go")); len(files) > 0 {
			dirs = append(dirs, filepath.ToSlash(rel))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return dirs
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
	for _, dir := range packageDirs(t) {
		if dir == "persistence" || dir == "cmd/bench-e2e" {
			continue // the store, and the benchmark that measures bare bbolt as its baseline
		}
		for _, imp := range imports(t, filepath.Join("..", "..", dir)) {
			if strings.HasPrefix(imp, "go.etcd.io/bbolt") {
				t.Errorf("%s imports bbolt; only persistence/ may", dir)
			}
		}
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
