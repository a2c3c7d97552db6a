// Command registrar stands in for node-driver-registrar: it asks the driver for its
// name over the CSI socket, then serves the kubelet's plugin-registration API on
// <plugin-registration-path>/<name>-reg.sock, pointing the kubelet at
// --kubelet-registration-path. It serves /healthz on --http-endpoint.
package main

import (
	"context"
	"flag"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

type registration struct {
	registerapi.UnimplementedRegistrationServer
	name, endpoint string
}

func (r registration) GetInfo(context.Context, *registerapi.InfoRequest) (*registerapi.PluginInfo, error) {
	log.Printf("kubelet asked for plugin info: %s at %s", r.name, r.endpoint)
	return &registerapi.PluginInfo{Type: registerapi.CSIPlugin, Name: r.name, Endpoint: r.endpoint,
		SupportedVersions: []string{"1.0.0"}}, nil
}

func (r registration) NotifyRegistrationStatus(_ context.Context, s *registerapi.RegistrationStatus) (*registerapi.RegistrationStatusResponse, error) {
	log.Printf("registration status: registered=%v error=%q", s.PluginRegistered, s.Error)
	if !s.PluginRegistered {
		log.Printf("the kubelet refused the registration; exiting so the container restarts")
		os.Exit(1)
	}
	return &registerapi.RegistrationStatusResponse{}, nil
}

// driverName asks the driver behind the CSI socket for its name, retrying until it
// answers.
func driverName(addr string) string {
	conn, err := grpc.NewClient("unix://"+addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		log.Fatalf("connect %s: %v", addr, err)
	}
	defer conn.Close()
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		info, err := csi.NewIdentityClient(conn).GetPluginInfo(ctx, &csi.GetPluginInfoRequest{})
		cancel()
		if err == nil {
			return info.GetName()
		}
		log.Printf("waiting for the driver at %s: %v", addr, err)
		time.Sleep(time.Second)
	}
}

func main() {
	csiAddress := flag.String("csi-address", "/run/csi/socket", "the driver's CSI socket in this container")
	kubeletPath := flag.String("kubelet-registration-path", "", "the driver's CSI socket as the kubelet sees it")
	regDir := flag.String("plugin-registration-path", "/registration", "the kubelet's plugin registration directory in this container")
	httpEndpoint := flag.String("http-endpoint", "", "address of the /healthz server (empty: none)")
	flag.Int("v", 0, "log level (accepted for compatibility)")
	flag.Parse()
	if *kubeletPath == "" {
		log.Fatal("--kubelet-registration-path is required")
	}
	name := driverName(*csiAddress)
	sock := filepath.Join(*regDir, name+"-reg.sock")
	if err := os.Remove(sock); err != nil && !os.IsNotExist(err) {
		log.Fatal(err)
	}
	l, err := net.Listen("unix", sock)
	if err != nil {
		log.Fatal(err)
	}
	if *httpEndpoint != "" {
		http.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
			if _, err := os.Stat(sock); err != nil {
				http.Error(w, err.Error(), http.StatusServiceUnavailable)
				return
			}
			w.Write([]byte("ok"))
		})
		go func() { log.Fatal(http.ListenAndServe(*httpEndpoint, nil)) }()
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-sigs
		os.Remove(sock)
		os.Exit(0)
	}()
	s := grpc.NewServer()
	registerapi.RegisterRegistrationServer(s, registration{name: name, endpoint: *kubeletPath})
	log.Printf("serving plugin registration of %s on %s", name, sock)
	log.Fatal(s.Serve(l))
}
