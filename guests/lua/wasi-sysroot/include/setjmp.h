/* setjmp/longjmp for wasm32 with the exception-handling proposal: LLVM
 * (-mllvm -wasm-enable-sjlj) lowers these calls to __wasm_setjmp,
 * __wasm_setjmp_test and __wasm_longjmp, defined in wasm-sjlj/rt.c. */
#ifndef _SETJMP_H
#define _SETJMP_H

#ifdef __cplusplus
extern "C" {
#endif

typedef struct __jmp_buf_tag {
    unsigned long long __jb[8];
} jmp_buf[1];

int setjmp(jmp_buf) __attribute__((__returns_twice__));
_Noreturn void longjmp(jmp_buf, int);

#define _setjmp setjmp
#define _longjmp longjmp

#ifdef __cplusplus
}
#endif

#endif
