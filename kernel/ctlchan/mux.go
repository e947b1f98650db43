package ctlchan

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// clientQueue is how many frames the multiplexer holds for one client
// that reads slower than the guest sends; past it the client is dropped
// (its session closed) rather than stalling every other client.
const clientQueue = 1024

// ErrUpstreamLost is the multiplexer's upstream (QEMU's socket) ending.
var ErrUpstreamLost = errors.New("ctlchan: connection to the guest ended")

// Mux serves many clients (nkectl processes) over one upstream channel
// (the guest's, through QEMU's only socket connection): each client gets
// a session id of its own, its frames go upstream with it and replies
// come back by it; a client that goes away has its session closed, which
// cancels its streams in the guest.
type Mux struct {
	up  io.ReadWriter
	upW *Writer
	// Logf reports dropped clients and garbage; nil discards.
	Logf func(format string, args ...any)

	mu sync.Mutex
	// +checklocks:mu
	clients map[uint32]*muxClient
	// +checklocks:mu
	next uint32
	// +checklocks:mu
	closed bool
}

type muxClient struct {
	id   uint32
	conn net.Conn
	out  chan []byte // encoded frames to the client
	once sync.Once
}

// NewMux multiplexes upstream.
func NewMux(upstream io.ReadWriter) *Mux {
	return &Mux{up: upstream, upW: NewWriter(upstream), clients: map[uint32]*muxClient{}}
}

func (m *Mux) logf(format string, args ...any) {
	if m.Logf != nil {
		m.Logf(format, args...)
	}
}

// Serve accepts clients on ln until ctx ends or the upstream ends
// (ErrUpstreamLost), then closes ln and every client. It does not close
// the upstream.
func (m *Mux) Serve(ctx context.Context, ln net.Listener) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	upErr := make(chan error, 1)
	go func() { upErr <- m.readUpstream(ctx); cancel() }()
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	var wg sync.WaitGroup
	defer func() {
		ln.Close()
		m.mu.Lock()
		m.closed = true
		cs := m.clients
		m.clients = map[uint32]*muxClient{}
		m.mu.Unlock()
		for _, c := range cs {
			c.close()
		}
		wg.Wait()
	}()
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				select {
				case err := <-upErr:
					return err
				default:
					return nil
				}
			}
			return fmt.Errorf("ctlchan: mux: accept: %w", err)
		}
		c, ok := m.add(conn)
		if !ok {
			conn.Close()
			continue
		}
		wg.Add(2)
		go func() { defer wg.Done(); m.writeClient(c) }()
		go func() { defer wg.Done(); m.readClient(c) }()
	}
}

func (m *Mux) add(conn net.Conn) (*muxClient, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, false
	}
	for {
		m.next++
		if m.next != 0 && m.clients[m.next] == nil {
			break
		}
	}
	c := &muxClient{id: m.next, conn: conn, out: make(chan []byte, clientQueue)}
	m.clients[c.id] = c
	return c, true
}

// close ends the client: what is queued still goes out (a last error
// reply, say), within a second, then writeClient closes the connection.
func (c *muxClient) close() {
	c.once.Do(func() {
		c.conn.SetWriteDeadline(time.Now().Add(time.Second))
		close(c.out)
	})
}

// drop removes a client and closes its session in the guest.
func (m *Mux) drop(c *muxClient) {
	m.mu.Lock()
	_, ok := m.clients[c.id]
	delete(m.clients, c.id)
	m.mu.Unlock()
	if !ok {
		return
	}
	c.close()
	p, _ := appendPayload(nil, nil, nil)
	if err := m.upW.WriteFrame(&Frame{Type: TypeSessionClose, Session: c.id, Payload: p}); err != nil {
		m.logf("ctlchan: mux: closing session %d: %v", c.id, err)
	}
}

// toClient queues an encoded frame; false if the client is gone or is
// dropped for being too slow.
func (m *Mux) toClient(c *muxClient, f Frame) {
	f.Session = 0
	b, err := AppendFrame(nil, f)
	if err != nil {
		return
	}
	m.mu.Lock()
	_, live := m.clients[c.id]
	full := false
	if live {
		select {
		case c.out <- b:
		default:
			full = true
		}
	}
	m.mu.Unlock()
	if full {
		m.logf("ctlchan: mux: client of session %d reads too slowly (%d frames waiting): dropped", c.id, clientQueue)
		m.drop(c)
	}
}

func (m *Mux) writeClient(c *muxClient) {
	defer c.conn.Close() // also ends readClient's read
	for b := range c.out {
		if _, err := c.conn.Write(b); err != nil {
			m.drop(c)
			for range c.out {
			}
			return
		}
	}
}

func (m *Mux) readClient(c *muxClient) {
	defer m.drop(c)
	dec := NewDecoder(c.conn, 0)
	defer dec.Close()
	for {
		f, err := dec.Next()
		if err != nil {
			var fe *FrameError
			if !errors.As(err, &fe) {
				return
			}
			// Answer the client itself: the guest never saw these bytes.
			body := ErrorBody{Op: "frame", Code: CodeOf(fe), Message: fe.Error()}
			var req uint32
			if fe.Header {
				body.Op, req = fe.Type.String(), fe.Request
			}
			p, _ := appendPayload(nil, body, nil)
			m.toClient(c, Frame{Type: TypeError, Flags: FlagReply, Request: req, Payload: p})
			continue
		}
		if f.Type == TypeSessionClose {
			continue // sessions are the multiplexer's to close
		}
		f.Session = c.id
		if err := m.upW.WriteFrame(&f); err != nil {
			p, _ := appendPayload(nil, ErrorBody{Op: f.Type.String(), Code: CodeUnreachable, Message: "the connection to the guest failed: " + err.Error()}, nil)
			m.toClient(c, Frame{Type: TypeError, Flags: FlagReply, Request: f.Request, Payload: p})
			return
		}
	}
}

func (m *Mux) readUpstream(ctx context.Context) error {
	dec := NewDecoder(m.up, 0)
	defer dec.Close()
	stop := context.AfterFunc(ctx, dec.Close)
	defer stop()
	for {
		f, err := dec.Next()
		if err != nil {
			var fe *FrameError
			if errors.As(err, &fe) {
				m.logf("ctlchan: mux: from the guest: %v", fe)
				continue
			}
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("%w: %v", ErrUpstreamLost, err)
		}
		if f.Session == 0 {
			if f.Type == TypeError {
				var b ErrorBody
				decodeBody(f.Payload, &b)
				m.logf("ctlchan: mux: the guest reports: %s [%s]", b.Message, b.Code)
			}
			continue
		}
		m.mu.Lock()
		c := m.clients[f.Session]
		m.mu.Unlock()
		if c != nil {
			m.toClient(c, f)
		}
	}
}
