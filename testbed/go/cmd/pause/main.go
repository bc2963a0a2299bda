// pause is the test bed's pod sandbox image: it holds the pod's namespaces and waits for
// SIGTERM or SIGINT, as registry.k8s.io/pause does (no registry is reachable here).
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	<-signals
}
