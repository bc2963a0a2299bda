// podserver is the test bed's workload image: on each TCP connection to :8080 it writes
// its pod's name ($POD_NAME, else the host name) and closes, so a client can tell which
// endpoint answered. It exits on SIGTERM.
//
// `podserver get IP:PORT [COUNT]` is the client side, for `kubectl exec` (the image has
// no shell): it prints each answer, or "error: ..." for a failed connection.
package main

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"
)

func get(target string, count int) {
	for i := 0; i < count; i++ {
		conn, err := net.DialTimeout("tcp", target, 2*time.Second)
		if err != nil {
			fmt.Println("error:", err)
			continue
		}
		conn.SetReadDeadline(time.Now().Add(2 * time.Second))
		line, err := bufio.NewReader(conn).ReadString('\n')
		conn.Close()
		if err != nil {
			fmt.Println("error:", err)
			continue
		}
		fmt.Print(line)
	}
}

func main() {
	if len(os.Args) > 2 && os.Args[1] == "get" {
		count := 1
		if len(os.Args) > 3 {
			count, _ = strconv.Atoi(os.Args[3])
		}
		get(os.Args[2], count)
		return
	}
	name := os.Getenv("POD_NAME")
	if name == "" {
		name, _ = os.Hostname()
	}
	listener, err := net.Listen("tcp", ":8080")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	go func() {
		signals := make(chan os.Signal, 1)
		signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
		<-signals
		os.Exit(0)
	}()
	for {
		conn, err := listener.Accept()
		if err != nil {
			continue
		}
		fmt.Fprintln(conn, name)
		conn.Close()
	}
}
