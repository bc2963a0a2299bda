// Command loadgen writes N Services, their EndpointSlices and their ClusterIPs'
// IPAddress objects straight into the test bed's etcd, as JSON, which kube-apiserver
// reads like its own writes. Creating 44k Services through the API takes many minutes on
// two cores; this takes seconds, and what the proxies see through their watches is the
// same. Used by the side-by-side benchmark (testbed/versus.sh).
//
//	loadgen -etcd http://127.0.0.1:16443 -services 10000 -endpoints 2 -node vs-node
//	loadgen -etcd ... -delete          # removes every object in the bench namespace
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

const namespace = "bench"

// ClusterIP i is 10.96.1.0 + i: 10.96.0.0/24 stays free for hand-made Services.
func clusterIP(i int) string {
	n := 256 + i
	return fmt.Sprintf("10.96.%d.%d", n>>8, n&255)
}

// Endpoint j is 10.128.0.0 + j, inside the cluster CIDR 10.128.0.0/9.
func endpointIP(j int) string {
	return fmt.Sprintf("10.%d.%d.%d", 128+(j>>16), (j>>8)&255, j&255)
}

type kv struct{ key, value string }

func objects(i, endpoints int, node string) []kv {
	name := fmt.Sprintf("svc-%d", i)
	uid := fmt.Sprintf("00000000-0000-4000-8000-%012d", i)
	created := "2026-01-01T00:00:00Z"
	ip := clusterIP(i)
	svc := map[string]any{
		"kind": "Service", "apiVersion": "v1",
		"metadata": map[string]any{"name": name, "namespace": namespace, "uid": uid, "creationTimestamp": created},
		"spec": map[string]any{
			"type": "ClusterIP", "clusterIP": ip, "clusterIPs": []string{ip},
			"ipFamilies": []string{"IPv4"}, "ipFamilyPolicy": "SingleStack",
			"sessionAffinity": "None", "internalTrafficPolicy": "Cluster",
			"ports": []map[string]any{{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080}},
		},
		"status": map[string]any{"loadBalancer": map[string]any{}},
	}
	eps := make([]map[string]any, 0, endpoints)
	for k := 0; k < endpoints; k++ {
		eps = append(eps, map[string]any{
			"addresses":  []string{endpointIP(i*endpoints + k)},
			"conditions": map[string]any{"ready": true, "serving": true, "terminating": false},
			"nodeName":   node,
		})
	}
	slice := map[string]any{
		"kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
		"metadata": map[string]any{
			"name": name + "-1", "namespace": namespace, "uid": fmt.Sprintf("00000000-0000-4000-9000-%012d", i),
			"creationTimestamp": created,
			"labels": map[string]string{
				"kubernetes.io/service-name":             name,
				"endpointslice.kubernetes.io/managed-by": "loadgen.kproxy.invalid",
			},
		},
		"addressType": "IPv4",
		"endpoints":   eps,
		"ports":       []map[string]any{{"name": "http", "protocol": "TCP", "port": 8080}},
	}
	// The API server's allocator records every ClusterIP as an IPAddress; without them its
	// repair loop would create 44k of them in the middle of a measurement.
	addr := map[string]any{
		"kind": "IPAddress", "apiVersion": "networking.k8s.io/v1",
		"metadata": map[string]any{
			"name": ip, "uid": fmt.Sprintf("00000000-0000-4000-a000-%012d", i), "creationTimestamp": created,
			"labels": map[string]string{
				"ipaddress.kubernetes.io/ip-family":  "IPv4",
				"ipaddress.kubernetes.io/managed-by": "ipallocator.k8s.io",
			},
		},
		"spec": map[string]any{"parentRef": map[string]any{
			"group": "", "resource": "services", "namespace": namespace, "name": name,
		}},
	}
	out := make([]kv, 0, 3)
	for _, o := range []struct {
		key string
		obj any
	}{
		{"/registry/services/specs/" + namespace + "/" + name, svc},
		{"/registry/endpointslices/" + namespace + "/" + name + "-1", slice},
		{"/registry/ipaddresses/" + ip, addr},
	} {
		b, err := json.Marshal(o.obj)
		if err != nil {
			log.Fatal(err)
		}
		out = append(out, kv{o.key, string(b)})
	}
	return out
}

func main() {
	endpoint := flag.String("etcd", "http://127.0.0.1:16443", "etcd client URL")
	services := flag.Int("services", 1000, "number of Services")
	endpoints := flag.Int("endpoints", 1, "endpoints per Service")
	node := flag.String("node", "vs-node", "nodeName of the endpoints")
	del := flag.Bool("delete", false, "delete every bench object instead")
	flag.Parse()

	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{*endpoint}, DialTimeout: 5 * time.Second})
	if err != nil {
		log.Fatal(err)
	}
	defer cli.Close()
	ctx := context.Background()
	start := time.Now()
	if *del {
		for _, prefix := range []string{
			"/registry/services/specs/" + namespace + "/", "/registry/endpointslices/" + namespace + "/",
		} {
			if _, err := cli.Delete(ctx, prefix, clientv3.WithPrefix()); err != nil {
				log.Fatal(err)
			}
		}
		// IPAddresses of bench Services: 10.96.1.0 and up, i.e. the keys from "10.96.1" to
		// "10.96.:" (':' sorts right after '9'); 10.96.0.x stays.
		if _, err := cli.Delete(ctx, "/registry/ipaddresses/10.96.1",
			clientv3.WithRange("/registry/ipaddresses/10.96.:")); err != nil {
			log.Fatal(err)
		}
		fmt.Printf("loadgen: deleted the bench objects in %v\n", time.Since(start).Round(time.Millisecond))
		return
	}
	// 128 operations per transaction (etcd's default limit), 8 transactions in flight.
	const batch = 42 // Services per transaction: 3 keys each
	work := make(chan int)
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for first := range work {
				var ops []clientv3.Op
				for i := first; i < first+batch && i < *services; i++ {
					for _, o := range objects(i, *endpoints, *node) {
						ops = append(ops, clientv3.OpPut(o.key, o.value))
					}
				}
				if _, err := cli.Txn(ctx).Then(ops...).Commit(); err != nil {
					log.Fatal(err)
				}
			}
		}()
	}
	for first := 0; first < *services; first += batch {
		work <- first
	}
	close(work)
	wg.Wait()
	fmt.Printf("loadgen: wrote %d Services x %d endpoints in %v\n", *services, *endpoints,
		time.Since(start).Round(time.Millisecond))
}
