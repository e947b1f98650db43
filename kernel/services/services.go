// Package services runs the guest's own network services on netstack
// sockets: an HTTP status page (text at /, JSON at /stats), TCP echo and UDP
// echo. They are what host tests talk to, through QEMU's port forwards or a
// raw frame peer.
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

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"

	"github.com/nke-harness/nke/kernel/netstack"
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
}

// Services are the running listeners.
type Services struct {
	http    *http.Server
	tcpEcho net.Listener
	udpEcho *gonet.UDPConn
	wg      sync.WaitGroup
	logf    func(string, ...any)

	mu sync.Mutex
	// +checklocks:mu
	conns map[net.Conn]struct{}
}

// Start opens the listeners on s and serves them until Close.
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
	addr := func(port uint16) tcpip.FullAddress { return tcpip.FullAddress{NIC: netstack.NICID, Port: port} }
	hl, err := gonet.ListenTCP(s.Stack, addr(cfg.HTTPPort), ipv4.ProtocolNumber)
	if err != nil {
		return nil, fmt.Errorf("services: listen tcp :%d: %v", cfg.HTTPPort, err)
	}
	el, err := gonet.ListenTCP(s.Stack, addr(cfg.EchoPort), ipv4.ProtocolNumber)
	if err != nil {
		hl.Close()
		return nil, fmt.Errorf("services: listen tcp :%d: %v", cfg.EchoPort, err)
	}
	uc, err := gonet.DialUDP(s.Stack, &tcpip.FullAddress{NIC: netstack.NICID, Port: cfg.EchoPort}, nil, ipv4.ProtocolNumber)
	if err != nil {
		hl.Close()
		el.Close()
		return nil, fmt.Errorf("services: listen udp :%d: %v", cfg.EchoPort, err)
	}
	sv := &Services{tcpEcho: el, udpEcho: uc, logf: cfg.Logf, conns: map[net.Conn]struct{}{}}
	sv.http = &http.Server{Handler: statusHandler(cfg), ReadHeaderTimeout: 10 * time.Second}
	sv.wg.Add(3)
	go func() {
		defer sv.wg.Done()
		if err := sv.http.Serve(hl); err != nil && !errors.Is(err, http.ErrServerClosed) {
			cfg.Logf("http: %v", err)
		}
	}()
	go func() { defer sv.wg.Done(); sv.serveTCPEcho() }()
	go func() { defer sv.wg.Done(); sv.serveUDPEcho() }()
	return sv, nil
}

func (sv *Services) serveTCPEcho() {
	for {
		c, err := sv.tcpEcho.Accept()
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

func (sv *Services) serveUDPEcho() {
	buf := make([]byte, 65536)
	for {
		n, from, err := sv.udpEcho.ReadFrom(buf)
		if err != nil {
			return
		}
		if _, err := sv.udpEcho.WriteTo(buf[:n], from); err != nil {
			sv.logf("udp echo to %v: %v", from, err)
		}
	}
}

// Close stops every service and waits for their goroutines.
func (sv *Services) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := sv.http.Shutdown(ctx)
	sv.tcpEcho.Close()
	sv.udpEcho.Close()
	sv.mu.Lock()
	for c := range sv.conns {
		c.Close()
	}
	sv.mu.Unlock()
	sv.wg.Wait()
	return err
}
