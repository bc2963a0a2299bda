// Command nftprobe asks the kernel about one nftables object over netlink, in constant
// time. testbed/versus.sh polls the kernel with it after each API write: `nft list` and
// even `nft get element` first load the whole ruleset into nft's cache, which takes
// seconds at 10k-44k Services and would hide the proxies' own latency, while a single
// GETCHAIN or GETSETELEM request costs the same at any size. Tables are in the ip family.
//
//	nftprobe chain TABLE CHAIN                  exit 0 if the chain exists
//	nftprobe element TABLE SET IP PROTO PORT    exit 0 if IP . PROTO . PORT is in the set
//	nftprobe slots TABLE MAP IP PROTO PORT N [WANT]
//	                                            print the endpoints under slots 0..N-1 of
//	                                            kproxy's endpoint map; exit 0 if all exist
//	                                            (and one of them is WANT, IP:PORT)
//	nftprobe dnat-map TABLE CHAIN IP            exit 0 if the anonymous map a rule of CHAIN
//	                                            DNATs through (upstream's `dnat ip to numgen
//	                                            random mod N map { … }`) has endpoint IP
//	nftprobe chains TABLE                       list the table's chains (for debugging)
//	nftprobe wait SECONDS PROBE...              repeat PROBE (one of the above), quietly,
//	                                            after every nf_tables commit until it
//	                                            succeeds; print the Unix time in µs when it
//	                                            did; exit 1 after SECONDS
//	nftprobe wait-elements SECONDS TABLE SET PROTO PORT IP...
//	                                            poll every 10 ms, in this one process, until
//	                                            every IP . PROTO . PORT is in the set; print
//	                                            the Unix time in ms when they were; exit 1
//	                                            after SECONDS without
//
// wait is for changes. Started before the API write, it would otherwise add its own
// start-up (10-60 ms) to every figure. It listens to nf_tables' notifications and probes
// after each commit, so it asks right after the change and costs nothing in between.
// Its requests share one socket (see conn): with a socket per request, the change was
// seen 5-15 ms after the proxy's commit, most of kproxy's figure.
// wait-elements exists for cold starts: polling by starting `ip netns exec nftprobe`
// every 10 ms cost a good part of a core, which a proxy starting up on a two-core machine
// would otherwise share with the probe.
package main

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

const (
	subsysNftables  = 10
	groupNftables   = 7 // NFNLGRP_NFTABLES: every committed change, then NEWGEN
	msgNewChain     = 3
	msgGetChain     = 4
	msgGetSetElem   = 13
	msgGetRule      = 7
	attrRuleTable   = 1
	attrRuleChain   = 2
	attrRuleExprs   = 4
	attrExprName    = 1
	attrExprData    = 2
	attrLookupSet   = 1
	nlaNested       = 0x8000
	attrChainTable  = 1
	attrChainName   = 3
	attrElemTable   = 1
	attrElemSet     = 2
	attrElemList    = 3
	attrListElem    = 1
	attrElemKey     = 1
	attrElemData    = 2
	attrDataValue   = 1
	errNotFound     = 2
	nlmsgHeaderSize = 16
)

var protocols = map[string]byte{"tcp": 6, "udp": 17, "sctp": 132}

func attr(kind uint16, value []byte) []byte {
	length := 4 + len(value)
	out := make([]byte, (length+3)&^3)
	binary.NativeEndian.PutUint16(out[0:], uint16(length))
	binary.NativeEndian.PutUint16(out[2:], kind)
	copy(out[4:], value)
	return out
}

func str(kind uint16, s string) []byte { return attr(kind, append([]byte(s), 0)) }

func nested(kind uint16, parts ...[]byte) []byte {
	var body []byte
	for _, p := range parts {
		body = append(body, p...)
	}
	return attr(kind|nlaNested, body)
}

// attrs splits a list of attributes into kind → value (the last of each kind).
func attrs(data []byte) map[uint16][]byte {
	out := map[uint16][]byte{}
	for len(data) >= 4 {
		length := int(binary.NativeEndian.Uint16(data[0:]))
		if length < 4 || length > len(data) {
			break
		}
		out[binary.NativeEndian.Uint16(data[2:])&0x3fff] = data[4:length]
		next := (length + 3) &^ 3
		if next > len(data) {
			break
		}
		data = data[next:]
	}
	return out
}

// list splits a list of attributes, keeping their order and repeats.
func list(data []byte) [][]byte {
	var out [][]byte
	for len(data) >= 4 {
		length := int(binary.NativeEndian.Uint16(data[0:]))
		if length < 4 || length > len(data) {
			break
		}
		out = append(out, data[4:length])
		next := (length + 3) &^ 3
		if next > len(data) {
			break
		}
		data = data[next:]
	}
	return out
}

func cstr(b []byte) string { return strings.TrimRight(string(b), "\x00") }

// dnatMapHas reports whether a lookup in CHAIN's rules uses a map whose data holds ip.
func dnatMapHas(table, chain, ip string) error {
	want := net.ParseIP(ip).To4()
	rules, err := request(msgGetRule, unix.NLM_F_DUMP, append(str(attrRuleTable, table), str(attrRuleChain, chain)...))
	if err != nil {
		return err
	}
	for _, rule := range rules {
		for _, e := range list(attrs(rule)[attrRuleExprs]) {
			expr := attrs(e)
			if cstr(expr[attrExprName]) != "lookup" {
				continue
			}
			set := cstr(attrs(expr[attrExprData])[attrLookupSet])
			msgs, err := request(msgGetSetElem, unix.NLM_F_DUMP, append(str(attrElemTable, table), str(attrElemSet, set)...))
			if err != nil {
				return err
			}
			for _, m := range msgs {
				for _, elem := range list(attrs(m)[attrElemList]) {
					value := attrs(attrs(elem)[attrElemData])[attrDataValue]
					if len(value) >= 4 && net.IP(value[:4]).Equal(want) {
						return nil
					}
				}
			}
		}
	}
	return errAbsent
}

var errAbsent = errors.New("absent")

// recvBuf receives every answer and notification: allocating (and zeroing) 1 MiB per
// request made each probe cost milliseconds.
var recvBuf [1 << 20]byte

// conn is the one socket every request goes through. Closing a nf_tables socket waits
// for the kernel to free what the last commit deleted (an RCU grace period, 5-15 ms when
// a proxy has just replaced a map), so a socket per request would add that to the
// moment a change is seen.
var conn = -1

// seq numbers the requests on conn.
var seq uint32

// netfilterSocket opens a netlink socket to nf_tables, bound to the multicast groups in
// the groups mask (0 for none).
func netfilterSocket(groups uint32) (int, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
	if err != nil {
		return -1, err
	}
	if groups != 0 {
		// Upstream's commits notify every element; a small buffer overflows (ENOBUFS),
		// which only means "something changed" to wait, but a large one keeps that rare.
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8<<20)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: groups}); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// request sends one nf_tables request and returns the reply's messages, each without its
// netlink and nfgenmsg headers. A dump returns every message until NLMSG_DONE.
func request(msgType uint16, flags uint16, body []byte) ([][]byte, error) {
	if conn < 0 {
		fd, err := netfilterSocket(0)
		if err != nil {
			return nil, err
		}
		conn = fd
	}
	seq++
	msg := make([]byte, nlmsgHeaderSize+4)
	binary.NativeEndian.PutUint32(msg[0:], uint32(len(msg)+len(body)))
	binary.NativeEndian.PutUint16(msg[4:], subsysNftables<<8|msgType)
	binary.NativeEndian.PutUint16(msg[6:], unix.NLM_F_REQUEST|flags)
	binary.NativeEndian.PutUint32(msg[8:], seq)
	msg[16] = unix.AF_INET
	msg = append(msg, body...)
	if err := unix.Sendto(conn, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return nil, err
	}
	var out [][]byte
	buf := recvBuf[:]
	for {
		n, _, err := unix.Recvfrom(conn, buf, 0)
		if err != nil {
			return nil, err
		}
		for data := buf[:n]; len(data) >= nlmsgHeaderSize; {
			length := int(binary.NativeEndian.Uint32(data[0:]))
			kind := binary.NativeEndian.Uint16(data[4:])
			if length < nlmsgHeaderSize || length > len(data) {
				break
			}
			if binary.NativeEndian.Uint32(data[8:]) != seq {
				// The rest of an earlier request's answer, left after an error.
				data = data[min((length+3)&^3, len(data)):]
				continue
			}
			switch kind {
			case unix.NLMSG_DONE:
				return out, nil
			case unix.NLMSG_ERROR:
				code := int32(binary.NativeEndian.Uint32(data[16:]))
				if code == -errNotFound {
					return nil, errAbsent
				}
				if code != 0 {
					return nil, unix.Errno(-code)
				}
				return out, nil
			default:
				out = append(out, append([]byte(nil), data[nlmsgHeaderSize+4:length]...))
			}
			if flags&unix.NLM_F_DUMP == 0 {
				return out, nil
			}
			data = data[min((length+3)&^3, len(data)):]
		}
	}
}

func key(ip, proto, port string, slot *uint32) ([]byte, error) {
	addr := net.ParseIP(ip).To4()
	p, ok := protocols[proto]
	n, err := strconv.Atoi(port)
	if addr == nil || !ok || err != nil {
		return nil, fmt.Errorf("bad key %s . %s . %s", ip, proto, port)
	}
	out := append([]byte{}, addr...)
	out = append(out, p, 0, 0, 0, byte(n>>8), byte(n), 0, 0)
	if slot != nil {
		// numgen leaves a host-order u32 in its register.
		out = binary.NativeEndian.AppendUint32(out, *slot)
	}
	return out, nil
}

// element returns the element's data value (empty for a plain set).
func element(table, set string, k []byte) ([]byte, error) {
	body := append(str(attrElemTable, table), str(attrElemSet, set)...)
	body = append(body, nested(attrElemList, nested(attrListElem, nested(attrElemKey, attr(attrDataValue, k))))...)
	msgs, err := request(msgGetSetElem, 0, body)
	if err != nil {
		return nil, err
	}
	for _, m := range msgs {
		for _, elem := range []map[uint16][]byte{attrs(attrs(attrs(m)[attrElemList])[attrListElem])} {
			if data, ok := elem[attrElemData]; ok {
				return attrs(data)[attrDataValue], nil
			}
			return []byte{}, nil
		}
	}
	return nil, errAbsent
}

func chainExists(table, chain string) error {
	_, err := request(msgGetChain, 0, append(str(attrChainTable, table), str(attrChainName, chain)...))
	return err
}

// quiet keeps repeated probes (wait) from printing.
var quiet bool

// poll runs probe, then again after each pause, until it succeeds (returning when),
// fails other than by absence, or SECONDS pass (errAbsent).
func poll(seconds string, pause func() error, probe func() error) (time.Time, error) {
	limit, err := strconv.Atoi(seconds)
	if err != nil {
		return time.Time{}, err
	}
	deadline := time.Now().Add(time.Duration(limit) * time.Second)
	for {
		err := probe()
		if err == nil {
			return time.Now(), nil
		}
		if !errors.Is(err, errAbsent) {
			return time.Time{}, err
		}
		if time.Now().After(deadline) {
			return time.Time{}, errAbsent
		}
		if err := pause(); err != nil {
			return time.Time{}, err
		}
	}
}

// awaitCommit returns once notifications arrive on fd (after draining them), or after
// 50 ms without: the fallback covers a notification lost to anything unforeseen.
func awaitCommit(fd int) error {
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	if _, err := unix.Poll(fds, 50); err != nil && err != unix.EINTR {
		return err
	}
	for {
		_, _, err := unix.Recvfrom(fd, recvBuf[:], unix.MSG_DONTWAIT)
		switch err {
		case nil, unix.ENOBUFS, unix.EINTR:
		case unix.EAGAIN:
			return nil
		default:
			return err
		}
	}
}

func wait(seconds string, prog, probe []string) error {
	quiet = true
	fd, err := netfilterSocket(1 << (groupNftables - 1))
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	args := append(append([]string{}, prog...), probe...)
	seen, err := poll(seconds, func() error { return awaitCommit(fd) }, func() error { return run(args) })
	if err != nil {
		return err
	}
	fmt.Println(seen.UnixMicro())
	return nil
}

func waitElements(seconds, table, set, proto, port string, ips []string) error {
	keys := make([][]byte, len(ips))
	for i, ip := range ips {
		var err error
		if keys[i], err = key(ip, proto, port, nil); err != nil {
			return err
		}
	}
	pause := func() error { time.Sleep(10 * time.Millisecond); return nil }
	seen, err := poll(seconds, pause, func() error {
		for _, k := range keys {
			if _, err := element(table, set, k); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	fmt.Println(seen.UnixMilli())
	return nil
}

func run(args []string) error {
	if len(args) < 2 {
		return fmt.Errorf("usage: see the package comment")
	}
	switch a := args[1:]; a[0] {
	case "chain":
		return chainExists(a[1], a[2])
	case "dnat-map":
		return dnatMapHas(a[1], a[2], a[3])
	case "element":
		k, err := key(a[3], a[4], a[5], nil)
		if err != nil {
			return err
		}
		_, err = element(a[1], a[2], k)
		return err
	case "slots":
		n, err := strconv.Atoi(a[6])
		if err != nil {
			return err
		}
		found, want, wanted := 0, "", true
		if len(a) > 7 {
			want, wanted = a[7], false
		}
		for slot := uint32(0); slot < uint32(n); slot++ {
			k, err := key(a[3], a[4], a[5], &slot)
			if err != nil {
				return err
			}
			data, err := element(a[1], a[2], k)
			if errors.Is(err, errAbsent) {
				continue
			} else if err != nil {
				return err
			}
			if len(data) >= 6 {
				found++
				endpoint := fmt.Sprintf("%s:%d", net.IP(data[:4]), binary.BigEndian.Uint16(data[4:]))
				wanted = wanted || endpoint == want
				if !quiet {
					fmt.Println(endpoint)
				}
			}
		}
		if found < n || !wanted {
			return errAbsent
		}
		return nil
	case "wait":
		return wait(a[1], args[:1], a[2:])
	case "wait-elements":
		return waitElements(a[1], a[2], a[3], a[4], a[5], a[6:])
	case "chains":
		msgs, err := request(msgGetChain, unix.NLM_F_DUMP, nil)
		if err != nil {
			return err
		}
		for _, m := range msgs {
			at := attrs(m)
			if strings.TrimRight(string(at[attrChainTable]), "\x00") == a[1] {
				fmt.Println(strings.TrimRight(string(at[attrChainName]), "\x00"))
			}
		}
		return nil
	}
	return fmt.Errorf("unknown command %q", args[1])
}

func main() {
	if err := run(os.Args); err != nil {
		if !errors.Is(err, errAbsent) {
			fmt.Fprintln(os.Stderr, "nftprobe:", err)
		}
		os.Exit(1)
	}
}
