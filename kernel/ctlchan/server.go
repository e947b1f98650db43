package ctlchan

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"runtime/debug"
	"sync"
	"time"
)

// Limits on what one peer can have in flight at once.
const (
	DefaultMaxRequests = 64   // per session
	maxCalls           = 1024 // on the channel
	ctlQueue           = 16   // ctl operations waiting per connection
	streamChunk        = 64 << 10
)

// Config tunes a server.
type Config struct {
	Name           string        // HelloReply.Server; "" means "nke-harness guest"
	PartialTimeout time.Duration // see Decoder; 0 means DefaultPartialTimeout
	MaxRequests    int           // per session; 0 means DefaultMaxRequests
	// Logf reports what the peers cannot be told (garbage on the
	// channel, a backend panic); nil discards it.
	Logf func(format string, args ...any)
}

// Serve answers requests on rw with b until ctx ends or rw fails, then
// cancels every call in flight and waits for them; a clean end of the
// stream returns nil. Serve does not close rw: closing it is what ends
// the reading goroutine if ctx ended first.
func Serve(ctx context.Context, rw io.ReadWriter, b Backend) error {
	return Config{}.Serve(ctx, rw, b)
}

type callKey struct{ session, request uint32 }

type call struct {
	cancel context.CancelFunc
	ctl    chan ctlOp // set once a ctl connect succeeded
}

type ctlOp struct {
	typ     Type
	session uint32
	request uint32
	op      CtlOp
	blob    []byte
}

type server struct {
	b   Backend
	cfg Config
	w   *Writer
	wg  sync.WaitGroup

	mu sync.Mutex
	// +checklocks:mu
	calls map[callKey]*call
	// +checklocks:mu
	perSession map[uint32]int
}

// Serve is Serve with c's settings.
func (c Config) Serve(ctx context.Context, rw io.ReadWriter, b Backend) error {
	if c.Name == "" {
		c.Name = "nke-harness guest"
	}
	if c.MaxRequests <= 0 {
		c.MaxRequests = DefaultMaxRequests
	}
	if c.Logf == nil {
		c.Logf = func(string, ...any) {}
	}
	s := &server{b: b, cfg: c, w: NewWriter(rw), calls: map[callKey]*call{}, perSession: map[uint32]int{}}
	ctx, cancel := context.WithCancel(ctx)
	dec := NewDecoder(rw, c.PartialTimeout)
	stop := context.AfterFunc(ctx, dec.Close)
	defer func() {
		stop()
		cancel()
		dec.Close()
		s.wg.Wait()
	}()
	for {
		f, err := dec.Next()
		if err != nil {
			var fe *FrameError
			if errors.As(err, &fe) {
				s.frameError(fe)
				continue
			}
			if err == io.EOF || ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("ctlchan: serve: %w", err)
		}
		s.dispatch(ctx, f)
	}
}

func (s *server) frameError(fe *FrameError) {
	s.cfg.Logf("ctlchan: %v", fe)
	var sess, req uint32
	op := "frame"
	if fe.Header {
		sess, req, op = fe.Session, fe.Request, fe.Type.String()
	}
	s.writeErr(sess, req, op, CodeOf(fe), fe.Error())
}

func (s *server) dispatch(ctx context.Context, f Frame) {
	if f.Flags&FlagReply != 0 {
		s.writeErr(f.Session, f.Request, f.Type.String(), CodeInvalid, "a reply frame sent to the guest: only requests go this way")
		return
	}
	switch f.Type {
	case TypeHello:
		var h Hello
		if _, err := decodeBody(f.Payload, &h); err != nil {
			s.replyErr(f, err)
			return
		}
		for _, v := range h.Versions {
			if v == Version {
				s.reply(f.Session, f.Request, TypeHello, HelloReply{Version: Version, Server: s.cfg.Name}, nil)
				return
			}
		}
		s.writeErr(f.Session, f.Request, "hello", CodeVersion,
			fmt.Sprintf("the guest speaks protocol version %d, the client %v: use an nkectl built from the same tree as the image", Version, h.Versions))
	case TypePing:
		s.w.WriteFrame(&Frame{Type: TypePing, Flags: FlagReply, Session: f.Session, Request: f.Request, Payload: f.Payload})
	case TypeCancel:
		var c CancelBody
		if _, err := decodeBody(f.Payload, &c); err != nil {
			s.replyErr(f, err)
			return
		}
		s.mu.Lock()
		if cl := s.calls[callKey{f.Session, c.Request}]; cl != nil {
			cl.cancel()
		}
		s.mu.Unlock()
	case TypeSessionClose:
		s.mu.Lock()
		for k, cl := range s.calls {
			if k.session == f.Session {
				cl.cancel()
			}
		}
		s.mu.Unlock()
	case TypeLoad, TypeUnload, TypeReplace, TypeStat, TypeEvents, TypeCapture, TypeCtlConnect:
		s.start(ctx, Frame{Type: f.Type, Session: f.Session, Request: f.Request, Payload: bytes.Clone(f.Payload)})
	case TypeCtlSend, TypeCtlSetopt, TypeCtlGetopt, TypeCtlDisconnect:
		var op CtlOp
		blob, err := decodeBody(f.Payload, &op)
		if err != nil {
			s.replyErr(f, err)
			return
		}
		o := ctlOp{typ: f.Type, session: f.Session, request: f.Request, op: op, blob: bytes.Clone(blob)}
		s.mu.Lock()
		cl := s.calls[callKey{f.Session, op.Conn}]
		queued, conn := false, cl != nil && cl.ctl != nil
		if conn {
			select {
			case cl.ctl <- o:
				queued = true
			default:
			}
		}
		s.mu.Unlock()
		switch {
		case !conn:
			s.writeErr(f.Session, f.Request, f.Type.String(), CodeNotConn,
				fmt.Sprintf("no control connection %d in this session: connect first (nkectl ctl NAME)", op.Conn))
		case !queued:
			s.writeErr(f.Session, f.Request, f.Type.String(), CodeBusy,
				fmt.Sprintf("%d control operations already waiting on connection %d: wait for their replies", ctlQueue, op.Conn))
		}
	default:
		s.writeErr(f.Session, f.Request, f.Type.String(), CodeUnsupported,
			fmt.Sprintf("unknown message type %d (the guest speaks protocol version %d)", uint8(f.Type), Version))
	}
}

// start registers the call and runs it on its own goroutine.
func (s *server) start(ctx context.Context, f Frame) {
	k := callKey{f.Session, f.Request}
	s.mu.Lock()
	var refuse string
	var code Code
	switch {
	case s.calls[k] != nil:
		refuse, code = fmt.Sprintf("request id %d is already in flight in this session: use a new id per request", f.Request), CodeInvalid
	case s.perSession[f.Session] >= s.cfg.MaxRequests:
		refuse, code = fmt.Sprintf("%d requests already in flight in this session: wait for some to end", s.cfg.MaxRequests), CodeBusy
	case len(s.calls) >= maxCalls:
		refuse, code = fmt.Sprintf("%d requests already in flight on the channel: wait for some to end", maxCalls), CodeBusy
	}
	if refuse != "" {
		s.mu.Unlock()
		s.writeErr(f.Session, f.Request, f.Type.String(), code, refuse)
		return
	}
	cctx, cancel := context.WithCancel(ctx)
	cl := &call{cancel: cancel}
	s.calls[k] = cl
	s.perSession[f.Session]++
	s.mu.Unlock()

	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		defer s.finish(k, cl)
		defer func() {
			if r := recover(); r != nil {
				s.cfg.Logf("ctlchan: %s: backend panic: %v\n%s", f.Type, r, debug.Stack())
				s.writeErr(f.Session, f.Request, f.Type.String(), CodeFailed, fmt.Sprintf("internal error in the guest (a panic, logged on its console): %v", r))
			}
		}()
		s.run(cctx, f, cl)
	}()
}

func (s *server) finish(k callKey, cl *call) {
	cl.cancel()
	s.mu.Lock()
	delete(s.calls, k)
	if s.perSession[k.session]--; s.perSession[k.session] <= 0 {
		delete(s.perSession, k.session)
	}
	ops := cl.ctl
	s.mu.Unlock()
	if ops == nil {
		return
	}
	// No one can queue more: the call is gone from the map.
	for {
		select {
		case o := <-ops:
			s.writeErr(o.session, o.request, o.typ.String(), CodeNotConn, fmt.Sprintf("control connection %d has closed", o.op.Conn))
		default:
			return
		}
	}
}

func (s *server) run(ctx context.Context, f Frame, cl *call) {
	sess, req := f.Session, f.Request
	switch f.Type {
	case TypeLoad:
		var r LoadRequest
		blob, err := decodeBody(f.Payload, &r)
		if err == nil {
			r.Archive = blob
			var rep LoadReply
			if rep, err = s.b.Load(ctx, r); err == nil {
				s.reply(sess, req, f.Type, rep, nil)
				return
			}
		}
		s.replyErr(f, err)
	case TypeReplace:
		var r ReplaceRequest
		blob, err := decodeBody(f.Payload, &r)
		if err == nil {
			r.Archive = blob
			var rep ReplaceReply
			if rep, err = s.b.Replace(ctx, r); err == nil {
				s.reply(sess, req, f.Type, rep, nil)
				return
			}
		}
		s.replyErr(f, err)
	case TypeUnload:
		var r UnloadRequest
		_, err := decodeBody(f.Payload, &r)
		if err == nil && r.ID == "" {
			err = fmt.Errorf("%w: unload without an identifier", ErrMalformed)
		}
		if err == nil {
			var rep UnloadReply
			if rep, err = s.b.Unload(ctx, r); err == nil {
				s.reply(sess, req, f.Type, rep, nil)
				return
			}
		}
		s.replyErr(f, err)
	case TypeStat:
		st, err := s.b.Stat(ctx)
		if err != nil {
			s.replyErr(f, err)
			return
		}
		s.reply(sess, req, f.Type, st, nil)
	case TypeEvents:
		err := s.b.Events(ctx, func(e Event) error { return s.reply(sess, req, TypeEvent, e, nil) })
		s.end(ctx, sess, req, err)
	case TypeCapture:
		var r CaptureRequest
		if _, err := decodeBody(f.Payload, &r); err != nil {
			s.replyErr(f, err)
			return
		}
		if r.Hook == "" || r.Before != "" && r.After != "" || r.Count < 0 {
			s.writeErr(sess, req, "capture", CodeInvalid, "capture wants a hook, at most one of before and after, and a count >= 0")
			return
		}
		w := &streamWriter{s: s, session: sess, request: req, typ: TypeCaptureData}
		err := s.b.Capture(ctx, r, w)
		if err == nil || ctx.Err() != nil {
			s.end(ctx, sess, req, nil)
			return
		}
		s.end(ctx, sess, req, err)
	case TypeCtlConnect:
		s.ctlConnect(ctx, f, cl)
	}
}

func (s *server) ctlConnect(ctx context.Context, f Frame, cl *call) {
	var r CtlConnectRequest
	if _, err := decodeBody(f.Payload, &r); err != nil {
		s.replyErr(f, err)
		return
	}
	if r.Name == "" {
		s.writeErr(f.Session, f.Request, "ctl-connect", CodeInvalid, "connect wants a control name (the NKE's, e.g. com.nke-harness.ipfw)")
		return
	}
	conn, rep, err := s.b.CtlConnect(ctx, r)
	if err != nil {
		s.replyErr(f, err)
		return
	}
	defer conn.Close()
	ops := make(chan ctlOp, ctlQueue)
	s.mu.Lock()
	cl.ctl = ops
	s.mu.Unlock()
	if s.reply(f.Session, f.Request, TypeCtlConnect, rep, nil) != nil {
		return
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			select {
			case o := <-ops:
				s.ctlDo(ctx, conn, o, cl)
			case <-ctx.Done():
				return
			}
		}
	}()
	w := &streamWriter{s: s, session: f.Session, request: f.Request, typ: TypeCtlData}
	for {
		data, err := conn.Recv(ctx)
		if err != nil {
			if err == io.EOF || ctx.Err() != nil {
				s.end(ctx, f.Session, f.Request, nil)
			} else {
				s.end(ctx, f.Session, f.Request, err)
			}
			return
		}
		if _, err := w.Write(data); err != nil {
			return
		}
	}
}

func (s *server) ctlDo(ctx context.Context, conn CtlConn, o ctlOp, cl *call) {
	defer func() {
		if r := recover(); r != nil {
			s.cfg.Logf("ctlchan: %s: backend panic: %v\n%s", o.typ, r, debug.Stack())
			s.writeErr(o.session, o.request, o.typ.String(), CodeFailed, fmt.Sprintf("internal error in the guest (a panic, logged on its console): %v", r))
		}
	}()
	if ctx.Err() != nil {
		s.writeErr(o.session, o.request, o.typ.String(), CodeNotConn, fmt.Sprintf("control connection %d has closed", o.op.Conn))
		return
	}
	var err error
	var out []byte
	switch o.typ {
	case TypeCtlSend:
		err = conn.Send(ctx, o.blob)
	case TypeCtlSetopt:
		err = conn.SetOpt(ctx, o.op.Opt, o.blob)
	case TypeCtlGetopt:
		if o.op.Size < 0 || o.op.Size > MaxPayload-64 {
			err = fmt.Errorf("%w: getopt size %d out of range", ErrTooLarge, o.op.Size)
			break
		}
		if out, err = conn.GetOpt(ctx, o.op.Opt, o.op.Size); err == nil && len(out) > o.op.Size {
			out = out[:o.op.Size]
		}
	case TypeCtlDisconnect:
		cl.cancel()
	}
	if err != nil {
		s.writeErr(o.session, o.request, o.typ.String(), CodeOf(err), err.Error())
		return
	}
	s.reply(o.session, o.request, o.typ, nil, out)
}

// end ends a stream; a nil error or a cancelled ctx is a normal end.
func (s *server) end(ctx context.Context, sess, req uint32, err error) {
	var b EndBody
	switch {
	case err == nil && ctx.Err() != nil:
		b.Reason = "cancelled"
	case err == nil:
		b.Reason = "done"
	default:
		b = EndBody{Reason: "failed", Code: CodeOf(err), Message: err.Error()}
	}
	s.reply(sess, req, TypeEnd, b, nil)
}

func (s *server) reply(sess, req uint32, t Type, body any, blob []byte) error {
	p, err := appendPayload(nil, body, blob)
	if err != nil {
		return s.writeErr(sess, req, t.String(), CodeOf(err), err.Error())
	}
	return s.w.WriteFrame(&Frame{Type: t, Flags: FlagReply, Session: sess, Request: req, Payload: p})
}

func (s *server) replyErr(f Frame, err error) {
	s.writeErr(f.Session, f.Request, f.Type.String(), CodeOf(err), err.Error())
}

func (s *server) writeErr(sess, req uint32, op string, code Code, msg string) error {
	p, _ := appendPayload(nil, ErrorBody{Op: op, Code: code, Message: msg}, nil)
	return s.w.WriteFrame(&Frame{Type: TypeError, Flags: FlagReply, Session: sess, Request: req, Payload: p})
}

// streamWriter sends stream items (blob only) from one reused buffer.
type streamWriter struct {
	s                *server
	session, request uint32
	typ              Type
	buf              []byte
}

func (w *streamWriter) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		k := min(len(p), streamChunk)
		w.buf = append(append(w.buf[:0], 0), p[:k]...) // 0: an empty body
		err := w.s.w.WriteFrame(&Frame{Type: w.typ, Flags: FlagReply, Session: w.session, Request: w.request, Payload: w.buf})
		if err != nil {
			return n, err
		}
		n += k
		p = p[k:]
	}
	return n, nil
}
