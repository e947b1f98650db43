package ctlchan

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
)

// ErrLost is a connection to the guest that ended with requests in flight.
var ErrLost = errors.New("ctlchan: connection to the guest lost")

// Client is the host side of the channel: each method is one request,
// safe to call from many goroutines; streams (Events, Capture, a control
// connection's data) run beside other requests.
type Client struct {
	rw  io.ReadWriteCloser
	w   *Writer
	dec *Decoder

	mu sync.Mutex
	// +checklocks:mu
	next uint32
	// +checklocks:mu
	pending map[uint32]*pending
	// +checklocks:mu
	err error // set once the reader stopped
	// +checklocks:mu
	garbage int // frames from the guest that did not decode
}

// pending is one request's incoming frames: an unbounded queue, so that
// a stream nobody reads stops no other reply.
type pending struct {
	mu sync.Mutex
	// +checklocks:mu
	q []Frame
	// +checklocks:mu
	err  error
	wake chan struct{}
}

func (p *pending) push(f Frame, err error) {
	p.mu.Lock()
	if err != nil {
		if p.err == nil {
			p.err = err
		}
	} else {
		p.q = append(p.q, f)
	}
	p.mu.Unlock()
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

func (p *pending) pop(ctx context.Context) (Frame, error) {
	for {
		p.mu.Lock()
		if len(p.q) > 0 {
			f := p.q[0]
			p.q[0] = Frame{}
			p.q = p.q[1:]
			p.mu.Unlock()
			return f, nil
		}
		err := p.err
		p.mu.Unlock()
		if err != nil {
			return Frame{}, err
		}
		select {
		case <-p.wake:
		case <-ctx.Done():
			return Frame{}, ctx.Err()
		}
	}
}

// NewClient talks to the guest (or a multiplexer) over rw, which it
// closes on Close. It sends nothing: call Hello first to check versions.
func NewClient(rw io.ReadWriteCloser) *Client {
	c := &Client{rw: rw, w: NewWriter(rw), dec: NewDecoder(rw, 0), pending: map[uint32]*pending{}}
	go c.read()
	return c
}

// Dial connects to a multiplexer's unix socket and says hello.
func Dial(ctx context.Context, path string) (*Client, HelloReply, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, HelloReply{}, err
	}
	c := NewClient(conn)
	h, err := c.Hello(ctx, "nkectl")
	if err != nil {
		c.Close()
		return nil, HelloReply{}, err
	}
	return c, h, nil
}

// Garbage is how many damaged frames or runs of garbage came from the
// guest.
func (c *Client) Garbage() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.garbage
}

// Close closes the connection; requests in flight fail with ErrLost.
func (c *Client) Close() error {
	err := c.rw.Close()
	c.dec.Close()
	return err
}

func (c *Client) read() {
	for {
		f, err := c.dec.Next()
		if err != nil {
			var fe *FrameError
			if errors.As(err, &fe) {
				// A damaged reply: fail its request, it will get no other.
				c.mu.Lock()
				c.garbage++
				p := c.pending[fe.Request]
				c.mu.Unlock()
				if fe.Header && p != nil {
					p.push(Frame{}, fmt.Errorf("reply from the guest: %w", fe))
				}
				continue
			}
			lost := fmt.Errorf("%w (%v)", ErrLost, err)
			c.mu.Lock()
			c.err = lost
			ps := c.pending
			c.pending = map[uint32]*pending{}
			c.mu.Unlock()
			for _, p := range ps {
				p.push(Frame{}, lost)
			}
			return
		}
		if f.Flags&FlagReply == 0 || f.Request == 0 {
			continue // channel-level reports (request 0) and stray requests
		}
		f.Payload = append([]byte(nil), f.Payload...)
		c.mu.Lock()
		p := c.pending[f.Request]
		c.mu.Unlock()
		if p != nil {
			p.push(f, nil)
		}
	}
}

// open allocates a request id and its queue.
func (c *Client) open() (uint32, *pending, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return 0, nil, c.err
	}
	c.next++
	if c.next == 0 {
		c.next = 1
	}
	p := &pending{wake: make(chan struct{}, 1)}
	c.pending[c.next] = p
	return c.next, p, nil
}

func (c *Client) close(id uint32) {
	c.mu.Lock()
	delete(c.pending, id)
	c.mu.Unlock()
}

func (c *Client) send(t Type, id uint32, body any, blob []byte) error {
	p, err := appendPayload(nil, body, blob)
	if err != nil {
		return fmt.Errorf("%s: %w", t, err)
	}
	if err := c.w.WriteFrame(&Frame{Type: t, Request: id, Payload: p}); err != nil {
		return fmt.Errorf("%s: %w (%v)", t, ErrLost, err)
	}
	return nil
}

// replyErr turns an error or end frame into an error.
func replyErr(f Frame) error {
	var b ErrorBody
	if _, err := decodeBody(f.Payload, &b); err != nil {
		return fmt.Errorf("error reply from the guest: %w", err)
	}
	return &RemoteError{Op: b.Op, Code: b.Code, Message: b.Message}
}

// call sends one request and decodes its one reply into out.
func (c *Client) call(ctx context.Context, t Type, body any, blob []byte, out any) ([]byte, error) {
	id, p, err := c.open()
	if err != nil {
		return nil, err
	}
	defer c.close(id)
	if err := c.send(t, id, body, blob); err != nil {
		return nil, err
	}
	f, err := p.pop(ctx)
	if err != nil {
		if ctx.Err() != nil {
			c.send(TypeCancel, 0, CancelBody{Request: id}, nil)
		}
		return nil, fmt.Errorf("%s: %w", t, err)
	}
	switch f.Type {
	case TypeError:
		return nil, replyErr(f)
	case t:
		return decodeBody(f.Payload, out)
	}
	return nil, fmt.Errorf("%s: %w: reply of type %s", t, ErrMalformed, f.Type)
}

// Hello checks that the guest speaks this protocol version.
func (c *Client) Hello(ctx context.Context, client string) (HelloReply, error) {
	var h HelloReply
	_, err := c.call(ctx, TypeHello, Hello{Versions: []int{Version}, Client: client}, nil, &h)
	return h, err
}

// Ping sends data and returns what came back.
func (c *Client) Ping(ctx context.Context, data []byte) ([]byte, error) {
	return c.call(ctx, TypePing, nil, data, nil)
}

// Load ships one bundle archive.
func (c *Client) Load(ctx context.Context, r LoadRequest) (LoadReply, error) {
	var rep LoadReply
	_, err := c.call(ctx, TypeLoad, r, r.Archive, &rep)
	return rep, err
}

// Unload unloads a bundle.
func (c *Client) Unload(ctx context.Context, r UnloadRequest) (UnloadReply, error) {
	var rep UnloadReply
	_, err := c.call(ctx, TypeUnload, r, nil, &rep)
	return rep, err
}

// Replace swaps a loaded bundle for the archive's version.
func (c *Client) Replace(ctx context.Context, r ReplaceRequest) (ReplaceReply, error) {
	var rep ReplaceReply
	_, err := c.call(ctx, TypeReplace, r, r.Archive, &rep)
	return rep, err
}

// Stat returns the NKE table and the hook chains.
func (c *Client) Stat(ctx context.Context) (Stat, error) {
	var st Stat
	_, err := c.call(ctx, TypeStat, nil, nil, &st)
	return st, err
}

// stream runs a streaming request: item is called with each item's
// payload until the stream ends (nil for a normal end) or ctx ends (the
// stream is cancelled; nil once the guest confirmed the end).
func (c *Client) stream(ctx context.Context, t Type, body any, item func(Frame) error) error {
	id, p, err := c.open()
	if err != nil {
		return err
	}
	defer c.close(id)
	if err := c.send(t, id, body, nil); err != nil {
		return err
	}
	cancelled := false
	wait := ctx
	for {
		f, err := p.pop(wait)
		if err != nil {
			if ctx.Err() != nil && !cancelled {
				// Ask the guest to end the stream, and wait for its end.
				cancelled = true
				if err := c.send(TypeCancel, 0, CancelBody{Request: id}, nil); err != nil {
					return err
				}
				wait = context.WithoutCancel(ctx)
				continue
			}
			return fmt.Errorf("%s: %w", t, err)
		}
		switch f.Type {
		case TypeError:
			return replyErr(f)
		case TypeEnd:
			var b EndBody
			if _, err := decodeBody(f.Payload, &b); err != nil {
				return fmt.Errorf("%s: %w", t, err)
			}
			if b.Code != "" {
				return &RemoteError{Op: t.String(), Code: b.Code, Message: b.Message}
			}
			return nil
		}
		if cancelled {
			continue
		}
		if err := item(f); err != nil {
			c.send(TypeCancel, 0, CancelBody{Request: id}, nil)
			return err
		}
	}
}

// Events calls fn with each kernel event until ctx ends (then it returns
// nil) or fn fails.
func (c *Client) Events(ctx context.Context, fn func(Event) error) error {
	return c.stream(ctx, TypeEvents, nil, func(f Frame) error {
		if f.Type != TypeEvent {
			return fmt.Errorf("events: %w: item of type %s", ErrMalformed, f.Type)
		}
		var e Event
		if _, err := decodeBody(f.Payload, &e); err != nil {
			return fmt.Errorf("events: %w", err)
		}
		return fn(e)
	})
}

// Capture copies the capture's pcapng stream to w until the guest ends it
// (count reached) or ctx ends.
func (c *Client) Capture(ctx context.Context, r CaptureRequest, w io.Writer) error {
	return c.stream(ctx, TypeCapture, r, func(f Frame) error {
		if f.Type != TypeCaptureData {
			return fmt.Errorf("capture: %w: item of type %s", ErrMalformed, f.Type)
		}
		blob, err := decodeBody(f.Payload, nil)
		if err != nil {
			return fmt.Errorf("capture: %w", err)
		}
		_, err = w.Write(blob)
		return err
	})
}

// CtlSession is a kernel-control connection from the host: the client end
// of an NKE's control endpoint.
type CtlSession struct {
	c     *Client
	id    uint32
	p     *pending
	Reply CtlConnectReply

	endMu sync.Mutex
	// +checklocks:endMu
	end error // the stream's end, once seen
}

// CtlConnect connects to the NKE control endpoint r.Name.
func (c *Client) CtlConnect(ctx context.Context, r CtlConnectRequest) (*CtlSession, error) {
	id, p, err := c.open()
	if err != nil {
		return nil, err
	}
	if err := c.send(TypeCtlConnect, id, r, nil); err != nil {
		c.close(id)
		return nil, err
	}
	f, err := p.pop(ctx)
	if err == nil && f.Type == TypeError {
		err = replyErr(f)
	} else if err == nil && f.Type != TypeCtlConnect {
		err = fmt.Errorf("ctl-connect: %w: reply of type %s", ErrMalformed, f.Type)
	}
	k := &CtlSession{c: c, id: id, p: p}
	if err == nil {
		_, err = decodeBody(f.Payload, &k.Reply)
	}
	if err != nil {
		if ctx.Err() != nil {
			c.send(TypeCancel, 0, CancelBody{Request: id}, nil)
		}
		c.close(id)
		return nil, err
	}
	return k, nil
}

// Send hands data to the NKE's send callback.
func (k *CtlSession) Send(ctx context.Context, data []byte) error {
	_, err := k.c.call(ctx, TypeCtlSend, CtlOp{Conn: k.id}, data, nil)
	return err
}

// SetOpt sets option opt.
func (k *CtlSession) SetOpt(ctx context.Context, opt uint32, val []byte) error {
	_, err := k.c.call(ctx, TypeCtlSetopt, CtlOp{Conn: k.id, Opt: opt}, val, nil)
	return err
}

// GetOpt reads at most size bytes of option opt.
func (k *CtlSession) GetOpt(ctx context.Context, opt uint32, size int) ([]byte, error) {
	return k.c.call(ctx, TypeCtlGetopt, CtlOp{Conn: k.id, Opt: opt, Size: size}, nil, nil)
}

// Recv returns the next data the NKE enqueued; io.EOF once the
// connection ended normally.
func (k *CtlSession) Recv(ctx context.Context) ([]byte, error) {
	k.endMu.Lock()
	end := k.end
	k.endMu.Unlock()
	if end != nil {
		return nil, end
	}
	f, err := k.p.pop(ctx)
	if err != nil {
		return nil, err
	}
	switch f.Type {
	case TypeCtlData:
		return decodeBody(f.Payload, nil)
	case TypeEnd:
		var b EndBody
		if _, err = decodeBody(f.Payload, &b); err == nil {
			err = io.EOF
			if b.Code != "" {
				err = &RemoteError{Op: "ctl", Code: b.Code, Message: b.Message}
			}
		}
	case TypeError:
		err = replyErr(f)
	default:
		err = fmt.Errorf("ctl: %w: item of type %s", ErrMalformed, f.Type)
	}
	k.endMu.Lock()
	k.end = err
	k.endMu.Unlock()
	return nil, err
}

// Close disconnects; Recv then returns io.EOF.
func (k *CtlSession) Close() error {
	defer k.c.close(k.id)
	k.endMu.Lock()
	if k.end == nil {
		k.end = io.EOF
	}
	k.endMu.Unlock()
	_, err := k.c.call(context.Background(), TypeCtlDisconnect, CtlOp{Conn: k.id}, nil, nil)
	if errors.Is(err, ErrLost) || CodeOf(err) == CodeNotConn {
		return nil // already gone
	}
	return err
}
