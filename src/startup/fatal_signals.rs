//! A last word before a fatal signal: the process never dies without a log line.
//!
//! SQLite maps its `-shm` file into memory; if that file can no longer be written or extended (made
//! immutable, on a disk that failed), touching the mapping raises `SIGBUS`, which kills the process
//! before any Rust code can report it. This handler writes one line to stderr (which the host logs
//! as an error) and lets the signal take its default course, so the host still sees the crash and
//! restarts the handler.

/// Installs the handler for `SIGBUS`. Call once, first thing in `main`.
pub fn install() {
    // SAFETY: `sigaction` with a zeroed struct, an empty mask and a handler that only calls the
    // async-signal-safe `write`; SA_RESETHAND restores the default action before the handler runs,
    // so returning from it re-raises the fault with the default action (terminate).
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_fatal_signal as *const () as libc::sighandler_t;
        action.sa_flags = libc::SA_RESETHAND;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut());
    }
}

extern "C" fn on_fatal_signal(_signal: libc::c_int) {
    const LINE: &[u8] = b"handler: fatal: SIGBUS: a memory-mapped file could not be read or written (is the SQLite store's -shm/-wal file writable, and its disk healthy?); the handler stops and the host restarts it\n";
    // SAFETY: `write` is async-signal-safe; the buffer is a static byte string.
    unsafe {
        libc::write(2, LINE.as_ptr().cast(), LINE.len());
    }
}
