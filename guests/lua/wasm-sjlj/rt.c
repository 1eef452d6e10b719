/* The runtime of setjmp/longjmp lowered to Wasm exceptions. A jmp_buf
 * records the invocation of the function that called setjmp and the label
 * to return to; longjmp throws the C_LONGJMP tag with (env, val), which the
 * try_table of that function catches and tests. */
#include <stddef.h>
#include <stdint.h>

/* LLVM 22 no longer defines the tag; the runtime does. */
__asm__(".globl __c_longjmp\n.tagtype __c_longjmp i32\n__c_longjmp:\n");

struct arg {
    void *env;
    int val;
};

struct jmp_buf_impl {
    void *func_invocation_id;
    uint32_t label;
    struct arg arg;
};

void __wasm_setjmp(void *env, uint32_t label, void *func_invocation_id) {
    struct jmp_buf_impl *jb = env;
    if (label == 0 || func_invocation_id == NULL) {
        __builtin_trap();
    }
    jb->func_invocation_id = func_invocation_id;
    jb->label = label;
}

uint32_t __wasm_setjmp_test(void *env, void *func_invocation_id) {
    struct jmp_buf_impl *jb = env;
    if (jb->label == 0 || func_invocation_id == NULL) {
        __builtin_trap();
    }
    return jb->func_invocation_id == func_invocation_id ? jb->label : 0;
}

void __wasm_longjmp(void *env, int val) {
    struct jmp_buf_impl *jb = env;
    struct arg *arg = &jb->arg;
    /* setjmp never returns 0 through longjmp. */
    arg->env = env;
    arg->val = val == 0 ? 1 : val;
    __builtin_wasm_throw(1, arg);
}
