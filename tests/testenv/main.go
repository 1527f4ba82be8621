// Command testenv is a single binary that hosts a tiny Kubernetes control
// plane for lifeline's integration tests: etcd, kube-apiserver,
// kube-controller-manager (all from upstream code, pinned in go.mod) and a
// small fake kubelet (kubelet.go). See README.md.
package main

import (
	"fmt"
	"net"
	"os"
	"strconv"
	_ "time/tzdata"

	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"

	"go.etcd.io/etcd/server/v3/etcdmain"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	kcm "k8s.io/kubernetes/cmd/kube-controller-manager/app"
)

const usage = `usage: testenv <subcommand> [flags]

subcommands:
  etcd                     embedded etcd server (etcd flags)
  kube-apiserver           upstream kube-apiserver (kube-apiserver flags)
  kube-controller-manager  upstream kube-controller-manager (its flags)
  kubelet                  fake kubelet + scheduler (--kubeconfig, --node-name)
  freeport [N]             print N (default 1) distinct free 127.0.0.1 TCP ports
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	sub, rest := os.Args[1], os.Args[2:]
	switch sub {
	case "etcd":
		// etcdmain parses args[1:] as etcd flags.
		etcdmain.Main(append([]string{"etcd"}, rest...))
	case "kube-apiserver":
		cmd := apiserver.NewAPIServerCommand()
		cmd.SetArgs(rest)
		os.Exit(cli.Run(cmd))
	case "kube-controller-manager":
		cmd := kcm.NewControllerManagerCommand()
		cmd.SetArgs(rest)
		os.Exit(cli.Run(cmd))
	case "kubelet":
		os.Exit(runKubelet(rest))
	case "freeport":
		os.Exit(freePorts(rest))
	case "-h", "--help", "help":
		fmt.Print(usage)
	default:
		fmt.Fprintf(os.Stderr, "unknown subcommand %q\n%s", sub, usage)
		os.Exit(2)
	}
}

// freePorts holds N listeners open at once so the ports are distinct, then
// prints and releases them.
func freePorts(args []string) int {
	n := 1
	if len(args) > 0 {
		var err error
		if n, err = strconv.Atoi(args[0]); err != nil || n < 1 {
			fmt.Fprintln(os.Stderr, "usage: testenv freeport [N]")
			return 2
		}
	}
	var ls []net.Listener
	for i := 0; i < n; i++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		ls = append(ls, l)
	}
	for _, l := range ls {
		fmt.Println(l.Addr().(*net.TCPAddr).Port)
		l.Close()
	}
	return 0
}
