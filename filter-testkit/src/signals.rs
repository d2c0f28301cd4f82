//! Ctrl-C for the demo and the benchmarks: a handler records the signal, and their long
//! loops poll for it so that they clean up (namespaces, pins, the agent) before exiting.

use std::{
    ffi::c_int,
    sync::atomic::{AtomicI32, Ordering},
};

use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};

/// The signal that interrupted this process, or 0.
static SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(signal: c_int) {
    SIGNAL.store(signal, Ordering::SeqCst);
}

/// Records each of `signals` instead of letting it end the process.
pub fn install(signals: &[c_int]) {
    // SA_RESTART keeps blocking calls elsewhere from failing with EINTR.
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for &signal in signals {
        let signal = Signal::try_from(signal).expect("a signal number");
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { sigaction(signal, &action) }.expect("a signal that can be caught");
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
