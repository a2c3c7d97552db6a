// Command livenessprobe stands in for the livenessprobe sidecar: its /healthz calls
// the driver's CSI Probe and answers 200 only when the driver says it is ready.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net/http"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

func main() {
	csiAddress := flag.String("csi-address", "/run/csi/socket", "the driver's CSI socket in this container")
	healthPort := flag.Int("health-port", 9808, "TCP port of /healthz")
	httpEndpoint := flag.String("http-endpoint", "", "address of /healthz; overrides --health-port")
	timeout := flag.Duration("probe-timeout", time.Second, "how long a Probe may take")
	flag.Int("v", 0, "log level (accepted for compatibility)")
	flag.Parse()
	conn, err := grpc.NewClient("unix://"+*csiAddress, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		log.Fatalf("connect %s: %v", *csiAddress, err)
	}
	id := csi.NewIdentityClient(conn)
	http.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), *timeout)
		defer cancel()
		resp, err := id.Probe(ctx, &csi.ProbeRequest{})
		if err != nil {
			log.Printf("probe failed: %v", err)
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		if rd := resp.GetReady(); rd != nil && !rd.GetValue() {
			http.Error(w, "driver is not ready", http.StatusInternalServerError)
			return
		}
		w.Write([]byte("ok"))
	})
	addr := *httpEndpoint
	if addr == "" {
		addr = fmt.Sprintf(":%d", *healthPort)
	}
	log.Printf("serving /healthz on %s for %s", addr, *csiAddress)
	log.Fatal(http.ListenAndServe(addr, nil))
}
