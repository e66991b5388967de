// Command goload is `keel bench`'s put and range workloads driven through etcd's official Go
// client (clientv3 of etcd 3.4), the client Kubernetes' apiserver and most etcd users run: the
// same flags, the same keys and values, the same closed loop and the same `--json` report as
// `keel bench` (crates/keel/src/bench), plus "client": "go".
//
// Build without network, in GOPATH mode against Debian's golang-etcd-server-dev (bench/gobench.sh
// does this):
//
//	GO111MODULE=off GOPATH=/tmp/gp:/usr/share/gocode go build -o goload ./bench/goload
//
// Usage: goload put|range [--endpoints=a:2379,b:2379] [--conns=10] [--clients=100]
// [--total=20000 | --duration=30s] [--rate=0] [--key-size=8] [--val-size=8]
// [--key-space-size=100000] [--sequential-keys] [--key-prefix=/registry/pods/ns/]
// [--consistency=l|s] [--json]
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"os"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.etcd.io/etcd/clientv3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
)

// options are the flags, named as `keel bench` names them.
type options struct {
	endpoints      []string
	conns          int
	clients        int
	total          uint64
	duration       time.Duration
	rate           uint64
	keySize        int
	valSize        int
	keySpaceSize   uint64
	sequentialKeys bool
	keyPrefix      string
	consistency    string
	json           bool
}

func usage(fs *flag.FlagSet) func() {
	return func() {
		fmt.Fprintf(fs.Output(), "usage: goload put|range [flags]\n\n"+
			"keel bench's put and range workloads through etcd's Go client (clientv3).\n\nflags:\n")
		fs.PrintDefaults()
	}
}

// parse reads the workload (the one positional argument, before or after the flags) and the flags.
func parse(args []string) (string, options) {
	var o options
	fs := flag.NewFlagSet("goload", flag.ExitOnError)
	fs.Usage = usage(fs)
	endpoints := fs.String("endpoints", "127.0.0.1:2379", "endpoints to send requests to (comma separated)")
	fs.IntVar(&o.conns, "conns", 1, "total number of gRPC connections (clientv3.Client instances)")
	fs.IntVar(&o.clients, "clients", 1, "total number of concurrent clients (goroutines)")
	fs.Uint64Var(&o.total, "total", 10000, "total number of requests (ignored with --duration)")
	fs.DurationVar(&o.duration, "duration", 0, "run for this long instead of a total (e.g. 30s)")
	fs.Uint64Var(&o.rate, "rate", 0, "requests per second across all clients (0: as fast as they go)")
	fs.IntVar(&o.keySize, "key-size", 8, "key size in bytes (the key's number, zero padded; after --key-prefix)")
	fs.IntVar(&o.valSize, "val-size", 8, "value size in bytes")
	fs.Uint64Var(&o.keySpaceSize, "key-space-size", 100000, "number of distinct keys")
	fs.BoolVar(&o.sequentialKeys, "sequential-keys", false, "keys in order (request n uses key n modulo the key space) instead of at random")
	fs.StringVar(&o.keyPrefix, "key-prefix", "", "a prefix for every key (e.g. /registry/pods/ns/)")
	fs.StringVar(&o.consistency, "consistency", "l", "range: l (linearizable) or s (serializable)")
	fs.BoolVar(&o.json, "json", false, "print the result as JSON")
	var positional []string
	for {
		if err := fs.Parse(args); err != nil {
			os.Exit(2)
		}
		if fs.NArg() == 0 {
			break
		}
		positional = append(positional, fs.Arg(0))
		args = fs.Args()[1:]
	}
	if len(positional) != 1 || (positional[0] != "put" && positional[0] != "range") {
		fmt.Fprintf(os.Stderr, "goload: expected one workload, put or range (got %q)\n", positional)
		fs.Usage()
		os.Exit(2)
	}
	for _, e := range strings.Split(*endpoints, ",") {
		if e = strings.TrimSpace(e); e != "" {
			o.endpoints = append(o.endpoints, e)
		}
	}
	if len(o.endpoints) == 0 {
		fatalf("no endpoints given")
	}
	if o.consistency != "l" && o.consistency != "s" {
		fatalf("--consistency must be l or s (got %q)", o.consistency)
	}
	if o.conns < 1 {
		o.conns = 1
	}
	if o.clients < 1 {
		o.clients = 1
	}
	return positional[0], o
}

func fatalf(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "goload: "+format+"\n", args...)
	os.Exit(1)
}

// mix is keel bench's scramble of n (splitmix64), so both tools touch the same keys.
func mix(n uint64) uint64 {
	z := n + 0x9e3779b97f4a7c15
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}

// keyOf is the i-th key of the key space (wrapping around): the prefix, then i zero padded to
// --key-size digits, as keel bench writes it.
func (o *options) keyOf(i uint64) string {
	space := o.keySpaceSize
	if space == 0 {
		space = 1
	}
	return fmt.Sprintf("%s%0*d", o.keyPrefix, o.keySize, i%space)
}

// key is the key request n uses.
func (o *options) key(n uint64) string {
	if o.sequentialKeys {
		return o.keyOf(n)
	}
	return o.keyOf(mix(n))
}

// connect opens --conns clients, handing the endpoints out in turn as keel bench and etcd's
// benchmark do: each connection talks to one member.
func connect(o *options) []*clientv3.Client {
	// clientv3 logs retries and balancer changes at info; only errors belong on the terminal.
	logCfg := zap.NewProductionConfig()
	logCfg.Level = zap.NewAtomicLevelAt(zap.ErrorLevel)
	conns := make([]*clientv3.Client, o.conns)
	for i := range conns {
		endpoint := o.endpoints[i%len(o.endpoints)]
		c, err := clientv3.New(clientv3.Config{
			Endpoints:   []string{endpoint},
			DialTimeout: 10 * time.Second,
			// Connect before the clock starts, and fail then if a member is unreachable
			// (without it clientv3 dials lazily and its requests wait for the member forever).
			DialOptions: []grpc.DialOption{grpc.WithBlock()},
			LogConfig:   &logCfg,
		})
		if err != nil {
			fatalf("connecting to %s: %v", endpoint, err)
		}
		conns[i] = c
	}
	return conns
}

// prefill writes every key of the key space once (untimed), so reads find values.
func prefill(o *options, conns []*clientv3.Client, value string) {
	width := uint64(len(conns) * 16)
	next := uint64(0)
	var wg sync.WaitGroup
	var failed atomic.Value
	for w := uint64(0); w < width; w++ {
		wg.Add(1)
		go func(c *clientv3.Client) {
			defer wg.Done()
			for {
				i := atomic.AddUint64(&next, 1) - 1
				if i >= o.keySpaceSize {
					return
				}
				if _, err := c.Put(context.Background(), o.keyOf(i), value); err != nil {
					failed.Store(err)
					return
				}
			}
		}(conns[w%uint64(len(conns))])
	}
	wg.Wait()
	if err, ok := failed.Load().(error); ok {
		fatalf("writing the key space: %v", err)
	}
}

// outcome is what a run measured.
type outcome struct {
	latencies []time.Duration // of each successful request
	errors    map[string]uint64
	elapsed   time.Duration
	cpu       time.Duration
}

// errorKind is the kind a failed request is counted under: the gRPC code and message, as keel
// bench counts them.
func errorKind(err error) string {
	if s, ok := status.FromError(err); ok {
		return fmt.Sprintf("%v: %s", s.Code(), s.Message())
	}
	return err.Error()
}

// cpuTime is this process's CPU time so far (user + system).
func cpuTime() time.Duration {
	var u syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &u); err != nil {
		return 0
	}
	return time.Duration(u.Utime.Nano() + u.Stime.Nano())
}

// drive runs the closed loop: --clients goroutines, client j on connection j modulo --conns, each
// with one request in flight, taking request numbers from a shared counter until --total (or
// --duration) is reached, optionally paced to --rate.
func drive(o *options, conns []*clientv3.Client, request func(c *clientv3.Client, n uint64) error) outcome {
	total := o.total
	if o.duration > 0 {
		total = math.MaxUint64
	}
	var next uint64
	var mu sync.Mutex
	out := outcome{errors: map[string]uint64{}}
	lat := make([][]time.Duration, o.clients)
	var pace time.Duration
	if o.rate > 0 {
		pace = time.Duration(float64(time.Second) / float64(o.rate))
	}
	var wg sync.WaitGroup
	started, cpuBefore := time.Now(), cpuTime()
	var deadline time.Time
	if o.duration > 0 {
		deadline = started.Add(o.duration)
	}
	for j := 0; j < o.clients; j++ {
		wg.Add(1)
		go func(j int, c *clientv3.Client) {
			defer wg.Done()
			var mine []time.Duration
			if o.duration == 0 {
				mine = make([]time.Duration, 0, total/uint64(o.clients)+1)
			}
			for {
				n := atomic.AddUint64(&next, 1) - 1
				if n >= total || (!deadline.IsZero() && !time.Now().Before(deadline)) {
					break
				}
				if pace > 0 {
					if d := time.Until(started.Add(time.Duration(n) * pace)); d > 0 {
						time.Sleep(d)
					}
				}
				t := time.Now()
				if err := request(c, n); err != nil {
					mu.Lock()
					out.errors[errorKind(err)]++
					mu.Unlock()
					continue
				}
				mine = append(mine, time.Since(t))
			}
			lat[j] = mine
		}(j, conns[j%len(conns)])
	}
	wg.Wait()
	out.elapsed = time.Since(started)
	out.cpu = cpuTime() - cpuBefore
	for _, l := range lat {
		out.latencies = append(out.latencies, l...)
	}
	return out
}

// report prints what workload name measured, as keel bench's report does (text, or --json with
// the same fields plus "client": "go").
func report(name string, o *options, out outcome) {
	sort.Slice(out.latencies, func(a, b int) bool { return out.latencies[a] < out.latencies[b] })
	pct := func(p float64) float64 {
		if len(out.latencies) == 0 {
			return 0
		}
		i := int(math.Round(float64(len(out.latencies)-1) * p))
		return float64(out.latencies[i]) / float64(time.Millisecond)
	}
	ok := len(out.latencies)
	secs := math.Max(out.elapsed.Seconds(), 1e-9)
	rps := float64(ok) / secs
	cores := out.cpu.Seconds() / secs
	var failed uint64
	for _, n := range out.errors {
		failed += n
	}
	if o.json {
		v := map[string]interface{}{
			"client":           "go",
			"workload":         name,
			"clients":          o.clients,
			"conns":            o.conns,
			"ok":               ok,
			"errors":           failed,
			"errors_by_kind":   out.errors,
			"seconds":          secs,
			"requests_per_sec": rps,
			"client_cpu_cores": cores,
			"latency_ms": map[string]float64{
				"min": pct(0), "p50": pct(0.5), "p90": pct(0.9),
				"p99": pct(0.99), "p999": pct(0.999), "max": pct(1),
			},
		}
		b, err := json.Marshal(v)
		if err != nil {
			fatalf("encoding the report: %v", err)
		}
		fmt.Println(string(b))
		return
	}
	fmt.Printf("%s: %d requests (%d errors) in %.2fs by %d clients over %d connections (Go clientv3)\n",
		name, ok, failed, secs, o.clients, o.conns)
	fmt.Printf("  requests/sec: %.1f\n", rps)
	fmt.Printf("  latency ms: min %.3f  p50 %.3f  p90 %.3f  p99 %.3f  p99.9 %.3f  max %.3f\n",
		pct(0), pct(0.5), pct(0.9), pct(0.99), pct(0.999), pct(1))
	of := runtime.NumCPU()
	warning := ""
	if cores > 0.8*float64(of) {
		warning = " (nearly all of them: the tool itself limits this run)"
	}
	fmt.Printf("  client CPU: %.2f of %d cores%s\n", cores, of, warning)
	kinds := make([]string, 0, len(out.errors))
	for k := range out.errors {
		kinds = append(kinds, k)
	}
	sort.Strings(kinds)
	for _, k := range kinds {
		fmt.Printf("  error x%d: %s\n", out.errors[k], k)
	}
}

func main() {
	workload, o := parse(os.Args[1:])
	conns := connect(&o)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	value := strings.Repeat("v", o.valSize)
	var out outcome
	name := workload
	switch workload {
	case "put":
		out = drive(&o, conns, func(c *clientv3.Client, n uint64) error {
			_, err := c.Put(context.Background(), o.key(n), value)
			return err
		})
	case "range":
		prefill(&o, conns, value)
		var opts []clientv3.OpOption
		name = "range (L)" // keel bench's name for it
		if o.consistency == "s" {
			opts = append(opts, clientv3.WithSerializable())
			name = "range (S)"
		}
		out = drive(&o, conns, func(c *clientv3.Client, n uint64) error {
			_, err := c.Get(context.Background(), o.key(n), opts...)
			return err
		})
	}
	report(name, &o, out)
}
