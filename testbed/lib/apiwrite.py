#!/usr/bin/env python3
"""One API write for testbed/versus.sh, timestamped by the writer itself.

    apiwrite.py STATE endpoint IP       # add endpoint IP to EndpointSlice bench/svc-0-1
    apiwrite.py STATE service N IP NODE # create Service bench/added-N at ClusterIP IP,
                                        # then its EndpointSlice

Prints two Unix times in µs: when the write the probe waits for (the endpoint's patch, or
the Service's creation) was sent, and when the API server's answer to it arrived. A change
is timed from that answer, the moment the write is accepted; kubectl returns 10-20 ms
after it (its own exit), which was most of kproxy's figure. The TLS connection is made
before the write, so only the request itself is timed.
"""
import http.client
import json
import ssl
import sys
import time


def connect(state):
    ctx = ssl.create_default_context(cafile=f"{state}/pki/ca.crt")
    ctx.load_cert_chain(f"{state}/pki/admin.crt", f"{state}/pki/admin.key")
    conn = http.client.HTTPSConnection("127.0.0.1", 6443, context=ctx)
    conn.connect()
    return conn


def send(conn, method, path, body, content_type):
    """Returns (sent, answered) in µs."""
    payload = json.dumps(body)
    sent = time.time_ns() // 1000
    conn.request(method, path, body=payload, headers={"Content-Type": content_type})
    response = conn.getresponse()
    answered = time.time_ns() // 1000
    text = response.read()
    if response.status >= 300:
        sys.exit(f"apiwrite: {method} {path}: {response.status} {text[:300]!r}")
    return sent, answered


def main(argv):
    state, what = argv[1], argv[2]
    conn = connect(state)
    if what == "endpoint":
        patch = [{"op": "add", "path": "/endpoints/-",
                  "value": {"addresses": [argv[3]], "conditions": {"ready": True}}}]
        times = send(conn, "PATCH", "/apis/discovery.k8s.io/v1/namespaces/bench/endpointslices/svc-0-1",
                     patch, "application/json-patch+json")
    elif what == "service":
        n, ip, node = argv[3], argv[4], argv[5]
        service = {"apiVersion": "v1", "kind": "Service",
                   "metadata": {"name": f"added-{n}", "namespace": "bench"},
                   "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}
        times = send(conn, "POST", "/api/v1/namespaces/bench/services", service, "application/json")
        endpoint_slice = {
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"added-{n}-1", "namespace": "bench",
                         "labels": {"kubernetes.io/service-name": f"added-{n}"}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": [f"10.126.0.{n}"], "conditions": {"ready": True}, "nodeName": node}]}
        send(conn, "POST", "/apis/discovery.k8s.io/v1/namespaces/bench/endpointslices", endpoint_slice,
             "application/json")
    else:
        sys.exit(f"apiwrite: unknown write {what!r}")
    print(*times)


if __name__ == "__main__":
    main(sys.argv)
