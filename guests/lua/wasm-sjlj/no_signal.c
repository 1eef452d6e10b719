/* Stand-in for -lwasi-emulated-signal, which lua-src asks the linker for:
 * Lua's standard library uses no signal on WASI. */
void __moonbox_no_signal(void) {}
