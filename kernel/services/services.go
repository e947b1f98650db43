// Package services runs the guest's own network services on the guest's
// socket layer (kernel/socket): an HTTP status page (text at /, JSON at
// /stats), TCP echo and UDP echo, each on IPv4 and IPv6. They are what
// host tests talk to, through QEMU's port forwards or a raw frame peer.
package services

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/nke-harness/nke/kernel/netstack"
	"github.com/nke-harness/nke/kernel/socket"
	"github.com/nke-harness/nke/kernel/sockfilter"
)

// Config chooses ports and the status source.
type Config struct {
	HTTPPort uint16 // 80
	EchoPort uint16 // 7, TCP and UDP
	// Status produces the status page's content on each request.
	Status func() any
	// Text renders the status for people; nil uses JSON for / too.
	Text func(w io.Writer, status any)
	Logf func(format string, args ...any)
	// Filters, if set, is the socket filter registry the services'
	// sockets run (their socket layer is built with it).
	Filters *sockfilter.Registry
}

// Services are the running listeners, on sockets of the guest's socket
// layer (kernel/socket), each service on IPv4 and IPv6.
type Services struct {
	layer   *socket.Layer
	http    *http.Server
	tcpEcho []net.Listener
	udpEcho []net.PacketConn
	wg      sync.WaitGroup
	logf    func(string, ...any)

	mu sync.Mutex
	// +checklocks:mu
	conns map[net.Conn]struct{}
}

// Start opens the listeners on s, on IPv4 and on IPv6 (the guest's
// link-local address), and serves them until Close.
func Start(s *netstack.Stack, cfg Config) (*Services, error) {
	if cfg.HTTPPort == 0 {
		cfg.HTTPPort = 80
	}
	if cfg.EchoPort == 0 {
		cfg.EchoPort = 7
	}
	if cfg.Logf == nil {
		cfg.Logf = func(string, ...any) {}
	}
	var opts []socket.LayerOption
	if cfg.Filters != nil {
		opts = append(opts, socket.WithFilters(cfg.Filters))
	}
	sv := &Services{layer: socket.New(s, opts...), logf: cfg.Logf, conns: map[net.Conn]struct{}{}}
	var hls []net.Listener
	fail := func(err error) (*Services, error) {
		sv.layer.Close()
		return nil, fmt.Errorf("services: %v", err)
	}
	for _, fam := range []string{"4", "6"} {
		hl, err := sv.layer.Listen("tcp"+fam, fmt.Sprintf(":%d", cfg.HTTPPort))
		if err != nil {
			return fail(err)
		}
		hls = append(hls, hl)
		el, err := sv.layer.Listen("tcp"+fam, fmt.Sprintf(":%d", cfg.EchoPort))
		if err != nil {
			return fail(err)
		}
		sv.tcpEcho = append(sv.tcpEcho, el)
		uc, err := sv.layer.ListenPacket("udp"+fam, fmt.Sprintf(":%d", cfg.EchoPort))
		if err != nil {
			return fail(err)
		}
		sv.udpEcho = append(sv.udpEcho, uc)
	}
	sv.http = &http.Server{Handler: statusHandler(cfg), ReadHeaderTimeout: 10 * time.Second}
	for _, hl := range hls {
		sv.wg.Add(1)
		go func() {
			defer sv.wg.Done()
			if err := sv.http.Serve(hl); err != nil && !errors.Is(err, http.ErrServerClosed) {
				cfg.Logf("http: %v", err)
			}
		}()
	}
	for _, el := range sv.tcpEcho {
		sv.wg.Add(1)
		go func() { defer sv.wg.Done(); sv.serveTCPEcho(el) }()
	}
	for _, uc := range sv.udpEcho {
		sv.wg.Add(1)
		go func() { defer sv.wg.Done(); sv.serveUDPEcho(uc) }()
	}
	return sv, nil
}

func (sv *Services) serveTCPEcho(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		sv.mu.Lock()
		sv.conns[c] = struct{}{}
		sv.mu.Unlock()
		sv.wg.Add(1)
		go func() {
			defer sv.wg.Done()
			defer func() {
				sv.mu.Lock()
				delete(sv.conns, c)
				sv.mu.Unlock()
				c.Close()
			}()
			buf := make([]byte, 64<<10)
			if _, err := io.CopyBuffer(c, c, buf); err != nil {
				sv.logf("tcp echo %v: %v", c.RemoteAddr(), err)
			}
		}()
	}
}

func (sv *Services) serveUDPEcho(uc net.PacketConn) {
	buf := make([]byte, 65536)
	for {
		n, from, err := uc.ReadFrom(buf)
		if err != nil {
			return
		}
		if _, err := uc.WriteTo(buf[:n], from); err != nil {
			sv.logf("udp echo to %v: %v", from, err)
		}
	}
}

// Close stops every service and waits for their goroutines.
func (sv *Services) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := sv.http.Shutdown(ctx)
	for _, el := range sv.tcpEcho {
		el.Close()
	}
	for _, uc := range sv.udpEcho {
		uc.Close()
	}
	sv.mu.Lock()
	for c := range sv.conns {
		c.Close()
	}
	sv.mu.Unlock()
	sv.wg.Wait()
	sv.layer.Close()
	return err
}
