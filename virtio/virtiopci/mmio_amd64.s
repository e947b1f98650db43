#include "textflag.h"

// One device access each, of exactly the width in the name.

// func mmioLoad8(p unsafe.Pointer) uint8
TEXT ·mmioLoad8(SB), NOSPLIT, $0-9
	MOVQ	p+0(FP), AX
	MOVBLZX	(AX), BX
	MOVB	BX, ret+8(FP)
	RET

// func mmioLoad16(p unsafe.Pointer) uint16
TEXT ·mmioLoad16(SB), NOSPLIT, $0-10
	MOVQ	p+0(FP), AX
	MOVWLZX	(AX), BX
	MOVW	BX, ret+8(FP)
	RET

// func mmioLoad32(p unsafe.Pointer) uint32
TEXT ·mmioLoad32(SB), NOSPLIT, $0-12
	MOVQ	p+0(FP), AX
	MOVL	(AX), BX
	MOVL	BX, ret+8(FP)
	RET

// func mmioStore8(p unsafe.Pointer, v uint8)
TEXT ·mmioStore8(SB), NOSPLIT, $0-9
	MOVQ	p+0(FP), AX
	MOVB	v+8(FP), BX
	MOVB	BX, (AX)
	RET

// func mmioStore16(p unsafe.Pointer, v uint16)
TEXT ·mmioStore16(SB), NOSPLIT, $0-10
	MOVQ	p+0(FP), AX
	MOVW	v+8(FP), BX
	MOVW	BX, (AX)
	RET

// func mmioStore32(p unsafe.Pointer, v uint32)
TEXT ·mmioStore32(SB), NOSPLIT, $0-12
	MOVQ	p+0(FP), AX
	MOVL	v+8(FP), BX
	MOVL	BX, (AX)
	RET
