// Package argocd runs lifeline's Argo CD health checks under the Lua engine Argo CD
// itself embeds: gopher-lua, a Lua 5.1 VM. Lua 5.4 (Debian's lua5.4, which
// tests/argocd_health.rs also uses) accepts code that gopher-lua rejects, and
// Argo CD gives scripts from argocd-cm only the base, package and table libraries,
// so only this engine, set up the way Argo CD sets it up, says whether a script works
// in Argo CD.
//
// The layout is Argo CD's resource_customizations/<group>/<Kind>/: health.lua,
// health_test.yaml (tests: [{inputPath, healthStatus: {status, message}}]) and
// testdata/*.yaml. Each sample object is read with sigs.k8s.io/yaml (as Argo CD's
// own health tests do), handed to the script as the global `obj`, and the table
// the script returns is compared with the expected status and message.
//
// Run: cd tests/argocd && go test ./...   (make test runs it via tests/argocd_gopher_lua.rs)
package argocd

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	lua "github.com/yuin/gopher-lua"
	"sigs.k8s.io/yaml"
)

// Where the scripts live, relative to this directory: lifeline's own kinds in Argo
// CD's upstream layout, and the app-of-apps check the docs ask users to install.
var roots = map[string][]string{
	"../../resource_customizations": {"lifeline.dev/BotPool", "lifeline.dev/FallbackPolicy", "lifeline.dev/Trunk"},
	"../../docs/argocd":             {"argoproj.io/Application"},
}

// healthStatus is what a health script returns and what health_test.yaml expects.
type healthStatus struct {
	Status  string `json:"status"`
	Message string `json:"message"`
}

type healthTests struct {
	Tests []struct {
		InputPath    string       `json:"inputPath"`
		HealthStatus healthStatus `json:"healthStatus"`
	} `json:"tests"`
}

// The statuses Argo CD accepts; anything else becomes Unknown.
var validStatuses = map[string]bool{
	"Healthy": true, "Progressing": true, "Degraded": true,
	"Suspended": true, "Missing": true, "Unknown": true,
}

// libraries says which standard libraries a VM gets.
type libraries int

const (
	// configMapLibs: a script from argocd-cm (how users install lifeline's checks):
	// Argo CD skips the standard libraries and opens only package, base and table
	// (plus its own restricted os, which lifeline's scripts do not use, so it is left
	// out here: a script that reached for os would fail this test).
	configMapLibs libraries = iota
	// builtInLibs: a script shipped inside Argo CD's resource_customizations/, which
	// runs with every standard library open.
	builtInLibs
)

func (l libraries) String() string {
	if l == configMapLibs {
		return "argocd-cm"
	}
	return "built-in"
}

// newVM returns a gopher-lua state with the libraries Argo CD opens in that mode.
func newVM(libs libraries) *lua.LState {
	l := lua.NewState(lua.Options{SkipOpenLibs: libs == configMapLibs})
	if libs == configMapLibs {
		for name, open := range map[string]lua.LGFunction{
			lua.LoadLibName: lua.OpenPackage,
			lua.BaseLibName: lua.OpenBase,
			lua.TabLibName:  lua.OpenTable,
		} {
			if err := l.CallByParam(lua.P{Fn: l.NewFunction(open), NRet: 0, Protect: true}, lua.LString(name)); err != nil {
				panic(fmt.Sprintf("open %s: %v", name, err))
			}
		}
	}
	return l
}

// toLua converts a decoded YAML/JSON value the way Argo CD hands objects to Lua:
// maps become tables keyed by string, lists become arrays, null becomes nil (so
// the key is simply absent), numbers become Lua numbers.
func toLua(l *lua.LState, v any) lua.LValue {
	switch x := v.(type) {
	case nil:
		return lua.LNil
	case bool:
		return lua.LBool(x)
	case string:
		return lua.LString(x)
	case float64:
		return lua.LNumber(x)
	case int64:
		return lua.LNumber(x)
	case int:
		return lua.LNumber(x)
	case []any:
		t := l.CreateTable(len(x), 0)
		for _, item := range x {
			t.Append(toLua(l, item))
		}
		return t
	case map[string]any:
		t := l.CreateTable(0, len(x))
		for k, item := range x {
			t.RawSetH(lua.LString(k), toLua(l, item))
		}
		return t
	}
	panic(fmt.Sprintf("unexpected value of type %T in a sample object", v))
}

// runHealth runs script with obj the way Argo CD does (1 s budget, result taken
// from the top of the stack) and returns the health it reports.
func runHealth(script string, obj map[string]any, libs libraries) (healthStatus, error) {
	l := newVM(libs)
	defer l.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	l.SetContext(ctx)
	l.SetGlobal("obj", toLua(l, obj))
	if err := l.DoString(script); err != nil {
		return healthStatus{}, err
	}
	ret, ok := l.Get(-1).(*lua.LTable)
	if !ok {
		return healthStatus{}, fmt.Errorf("expect table output from Lua script, not %s", l.Get(-1).Type())
	}
	// Argo CD encodes the table to JSON and decodes it into {status, message}:
	// a field of another type is an error there, so it is one here.
	field := func(name string) (string, error) {
		switch v := ret.RawGetString(name).(type) {
		case lua.LString:
			return string(v), nil
		case *lua.LNilType:
			return "", nil
		default:
			return "", fmt.Errorf("%s is a %s, not a string", name, v.Type())
		}
	}
	status, err := field("status")
	if err != nil {
		return healthStatus{}, err
	}
	message, err := field("message")
	if err != nil {
		return healthStatus{}, err
	}
	if !validStatuses[status] {
		return healthStatus{Status: "Unknown", Message: "Lua returned an invalid health status"}, nil
	}
	return healthStatus{Status: status, Message: message}, nil
}

func readYAML(t *testing.T, path string, into any) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	if err := yaml.Unmarshal(data, into); err != nil {
		t.Fatalf("parse %s: %v", path, err)
	}
}

// kindDirs returns every <group>/<Kind> directory under root that holds a health.lua.
func kindDirs(t *testing.T, root string) []string {
	t.Helper()
	var dirs []string
	err := filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && d.Name() == "health.lua" {
			dirs = append(dirs, filepath.Dir(path))
		}
		return nil
	})
	if err != nil {
		t.Fatalf("walk %s: %v", root, err)
	}
	sort.Strings(dirs)
	return dirs
}

func TestHealthChecksUnderGopherLua(t *testing.T) {
	var dirs []string
	for root, want := range roots {
		found := kindDirs(t, root)
		var got []string
		for _, d := range found {
			rel, _ := filepath.Rel(root, d)
			got = append(got, filepath.ToSlash(rel))
		}
		if strings.Join(got, " ") != strings.Join(want, " ") {
			t.Fatalf("health checks found under %s: %v, want %v", root, got, want)
		}
		dirs = append(dirs, found...)
	}
	sort.Strings(dirs)
	for _, dir := range dirs {
		kind := filepath.Base(filepath.Dir(dir)) + "/" + filepath.Base(dir)
		script, err := os.ReadFile(filepath.Join(dir, "health.lua"))
		if err != nil {
			t.Fatal(err)
		}
		var cases healthTests
		readYAML(t, filepath.Join(dir, "health_test.yaml"), &cases)
		if len(cases.Tests) == 0 {
			t.Fatalf("%s/health_test.yaml has no tests", kind)
		}
		covered := map[string]bool{}
		for _, tc := range cases.Tests {
			covered[filepath.Clean(tc.InputPath)] = true
			for _, libs := range []libraries{configMapLibs, builtInLibs} {
				name := fmt.Sprintf("%s/%s/%s", kind, tc.InputPath, libs)
				t.Run(name, func(t *testing.T) {
					var obj map[string]any
					readYAML(t, filepath.Join(dir, tc.InputPath), &obj)
					got, err := runHealth(string(script), obj, libs)
					if err != nil {
						t.Fatalf("health.lua failed: %v", err)
					}
					if got != tc.HealthStatus {
						t.Errorf("got %+v\nwant %+v", got, tc.HealthStatus)
					}
				})
			}
		}
		// Every sample object is checked: a testdata file nobody reads is a test
		// someone meant to write.
		samples, _ := filepath.Glob(filepath.Join(dir, "testdata", "*.yaml"))
		for _, s := range samples {
			rel, _ := filepath.Rel(dir, s)
			if !covered[rel] {
				t.Errorf("%s: %s is not referenced by health_test.yaml", kind, rel)
			}
		}
	}
}

// The harness is only worth something if it is the stricter engine. These show that
// it rejects what Lua 5.4 accepts and what Argo CD's argocd-cm sandbox lacks.
func TestEngineIsArgoCDs(t *testing.T) {
	obj := map[string]any{"kind": "Trunk"}
	for _, tc := range []struct {
		name, script string
		libs         libraries
	}{
		{"integer division is Lua 5.3+", `return {status = "Healthy", message = tostring(7 // 2)}`, builtInLibs},
		{"attributes are Lua 5.4", `local s <const> = "Healthy" return {status = s}`, builtInLibs},
		{"no string library in argocd-cm", `return {status = string.upper("healthy")}`, configMapLibs},
		{"no os library in argocd-cm", `return {status = "Healthy", message = os.date()}`, configMapLibs},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got, err := runHealth(tc.script, obj, tc.libs); err == nil {
				t.Fatalf("gopher-lua (%s) accepted it and returned %+v", tc.libs, got)
			}
		})
	}
	// And the same VM does run plain Lua 5.1 with the libraries Argo CD opens.
	got, err := runHealth(`local t = {} table.insert(t, obj.kind) return {status = "Healthy", message = t[1]}`, obj, configMapLibs)
	if err != nil || got != (healthStatus{"Healthy", "Trunk"}) {
		t.Fatalf("plain Lua 5.1: got %+v, %v", got, err)
	}
	got, err = runHealth(`return {status = "Fine"}`, obj, configMapLibs)
	if err != nil || got.Status != "Unknown" {
		t.Fatalf("an invalid status must become Unknown, got %+v, %v", got, err)
	}
}
