package ctlchan

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"syscall"
)

// Code is an error's errno-like name on the wire ("EBUSY"), the part of an
// error scripts can rely on.
type Code string

const (
	CodeBusy        Code = "EBUSY"      // in use: dependants or control clients (unload), too many requests
	CodeNotFound    Code = "ENOENT"     // no such NKE, control endpoint or hook
	CodeExists      Code = "EEXIST"     // already loaded
	CodeInvalid     Code = "EINVAL"     // bad argument or manifest
	CodeUnsupported Code = "EOPNOTSUPP" // unknown option or message type
	CodeNoBufs      Code = "ENOBUFS"    // a queue is full
	CodeTooLarge    Code = "EMSGSIZE"   // a message over the limit
	CodePerm        Code = "EPERM"      // refused by policy
	CodeNotConn     Code = "ENOTCONN"   // no such control connection
	CodeCanceled    Code = "ECANCELED"  // the request was cancelled
	CodeTimeout     Code = "ETIMEDOUT"  // a bounded wait ran out (drain, stop)
	CodeBadMessage  Code = "EBADMSG"    // a frame or message that does not decode
	CodeVersion     Code = "EPROTONOSUPPORT"
	// CodeUnreachable is the host multiplexer's, not the guest's: it
	// could not pass the request on (QEMU's socket failed).
	CodeUnreachable Code = "EHOSTUNREACH"
	CodeFailed      Code = "EFAIL" // anything else
)

var codeErrno = map[Code]syscall.Errno{
	CodeBusy: syscall.EBUSY, CodeNotFound: syscall.ENOENT, CodeExists: syscall.EEXIST,
	CodeInvalid: syscall.EINVAL, CodeUnsupported: syscall.EOPNOTSUPP, CodeNoBufs: syscall.ENOBUFS,
	CodeTooLarge: syscall.EMSGSIZE, CodePerm: syscall.EPERM, CodeNotConn: syscall.ENOTCONN,
	CodeCanceled: syscall.ECANCELED, CodeTimeout: syscall.ETIMEDOUT, CodeBadMessage: syscall.EBADMSG,
	CodeVersion: syscall.EPROTONOSUPPORT, CodeUnreachable: syscall.EHOSTUNREACH,
}

// Coder is an error that names its own Code.
type Coder interface{ ErrorCode() Code }

// CodeOf classifies err for the wire: its own Code, a syscall.Errno in
// its chain, a context or fs error, else CodeFailed.
func CodeOf(err error) Code {
	var c Coder
	if errors.As(err, &c) {
		return c.ErrorCode()
	}
	var fe *FrameError
	if errors.As(err, &fe) {
		if errors.Is(fe.Err, ErrVersion) {
			return CodeVersion
		}
		if errors.Is(fe.Err, ErrTooLarge) {
			return CodeTooLarge
		}
		return CodeBadMessage
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		for c, e := range codeErrno {
			if e == errno {
				return c
			}
		}
	}
	switch {
	case errors.Is(err, context.Canceled):
		return CodeCanceled
	case errors.Is(err, context.DeadlineExceeded):
		return CodeTimeout
	case errors.Is(err, fs.ErrNotExist):
		return CodeNotFound
	case errors.Is(err, fs.ErrExist):
		return CodeExists
	case errors.Is(err, fs.ErrPermission):
		return CodePerm
	case errors.Is(err, ErrMalformed):
		return CodeBadMessage
	case errors.Is(err, ErrTooLarge):
		return CodeTooLarge
	}
	return CodeFailed
}

// RemoteError is an error the guest replied with.
type RemoteError struct {
	Op      string
	Code    Code
	Message string
}

func (e *RemoteError) Error() string {
	return fmt.Sprintf("%s: %s [%s]", e.Op, e.Message, e.Code)
}

// Is matches the syscall.Errno of the error's code, so that
// errors.Is(err, syscall.EBUSY) holds for a refused unload.
func (e *RemoteError) Is(target error) bool {
	errno, ok := target.(syscall.Errno)
	return ok && codeErrno[e.Code] == errno && errno != 0
}

// ErrorCode implements Coder.
func (e *RemoteError) ErrorCode() Code { return e.Code }
