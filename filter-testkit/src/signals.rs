//! Ctrl-C for the demo and the benchmarks: a handler records the signal, and their long
//! loops poll for it so that they clean up (namespaces, pins, the agent) before exiting.

use std::sync::atomic::{AtomicI32, Ordering};

/// The signal that interrupted this process, or 0.
static SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(signal: libc::c_int) {
    SIGNAL.store(signal, Ordering::SeqCst);
}

/// Records each of `signals` instead of letting it end the process.
pub fn install(signals: &[libc::c_int]) {
    for &signal in signals {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe;
        // SA_RESTART keeps blocking calls elsewhere from failing with EINTR.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
}

/// The signal that interrupted this process, if one of those [`install`]ed arrived.
pub fn interrupted() -> Option<i32> {
    match SIGNAL.load(Ordering::SeqCst) {
        0 => None,
        signal => Some(signal),
    }
}

/// An error once a signal has arrived, for `?` in long loops.
pub fn check() -> anyhow::Result<()> {
    match interrupted() {
        Some(signal) => anyhow::bail!("interrupted by signal {signal}"),
        None => Ok(()),
    }
}
