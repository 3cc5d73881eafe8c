// kube-apiserver for podroute's tests and lab: the upstream command, unchanged, built from the
// k8s.io/kubernetes Go module (no distribution ships the binary). scripts/setup builds it.
package main

import (
	"os"

	"k8s.io/component-base/cli"
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
)

func main() {
	os.Exit(cli.Run(app.NewAPIServerCommand()))
}
