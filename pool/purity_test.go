package pool

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// bannedImport reports why an import path may not appear in the pure core.
func bannedImport(path string) string {
	switch {
	case path == "os" || strings.HasPrefix(path, "os/"), path == "io/ioutil", path == "syscall":
		return "I/O"
	case path == "net" || strings.HasPrefix(path, "net/"):
		return "network I/O"
	case path == "math/rand" || path == "math/rand/v2" || path == "crypto/rand":
		return "randomness"
	case strings.HasPrefix(path, "go.etcd.io/bbolt"):
		return "storage (persistence owns bbolt)"
	case strings.HasPrefix(path, "github.com/nats-io/"):
		return "messaging (adapters own NATS)"
	case path == "unsafe":
		return "unsafe"
	}
	return ""
}

// bannedTime are the time functions that read or wait on the wall clock.
var bannedTime = map[string]bool{"Now": true, "Since": true, "Until": true, "Sleep": true, "After": true, "AfterFunc": true, "Tick": true, "NewTimer": true, "NewTicker": true}

// purityProblems parses the non-test Go files in dir and lists every banned import
// and wall-clock call.
func purityProblems(t *testing.T, dir string) []string {
	files, err := filepath.Glob(filepath.Join(dir, "*.go"))
	if err != nil {
		t.Fatal(err)
	}
	var problems []string
	fset := token.NewFileSet()
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		file, err := parser.ParseFile(fset, f, nil, parser.SkipObjectResolution)
		if err != nil {
			t.Fatal(err)
		}
		timeName := ""
		for _, imp := range file.Imports {
			path, _ := strconv.Unquote(imp.Path.Value)
			if why := bannedImport(path); why != "" {
				problems = append(problems, fset.Position(imp.Pos()).String()+": imports "+path+" ("+why+")")
			}
			if path == "time" {
				timeName = "time"
				if imp.Name != nil {
					timeName = imp.Name.Name
				}
			}
		}
		ast.Inspect(file, func(n ast.Node) bool {
			sel, ok := n.(*ast.SelectorExpr)
			if !ok {
				return true
			}
			if id, ok := sel.X.(*ast.Ident); ok && timeName != "" && id.Name == timeName && bannedTime[sel.Sel.Name] {
				problems = append(problems, fset.Position(sel.Pos()).String()+": uses time."+sel.Sel.Name+" (wall clock)")
			}
			return true
		})
	}
	return problems
}

func TestCoreIsPure(t *testing.T) {
	for _, dir := range []string{".", "../fsm"} {
		if p := purityProblems(t, dir); len(p) > 0 {
			t.Errorf("%s is not pure:\n%s", dir, strings.Join(p, "\n"))
		}
	}
}

// The checker itself must catch what it is meant to catch.
func TestPurityCheckerCatches(t *testing.T) {
	dir := t.TempDir()
	src := `package bad

import (
	"math/rand"
	"net/http"
	clock "time"
	"go.etcd.io/bbolt"
)

var _ = rand.Int
var _ = http.Get
var _ = bbolt.Open
var now = clock.Now()
`
	if err := os.WriteFile(filepath.Join(dir, "bad.go"), []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	got := strings.Join(purityProblems(t, dir), "\n")
	for _, want := range []string{"imports math/rand (randomness)", "imports net/http (network I/O)", "imports go.etcd.io/bbolt", "uses time.Now (wall clock)"} {
		if !strings.Contains(got, want) {
			t.Errorf("checker missed %q; got:\n%s", want, got)
		}
	}
}
