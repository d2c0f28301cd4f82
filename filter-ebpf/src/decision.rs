//! What the program decided about one frame, passed from `decide` to counting, records
//! and the reply. A leaf: it depends on nothing in this crate.

use filter_common::{Family, Reason, Verdict};

pub struct Decision {
    pub verdict: Verdict,
    pub reason: Reason,
    pub family: Family,
    /// Group whose prefix matched the source; 0 when none was looked up or matched.
    pub group: u32,
    /// A blocked attempt (or, in monitor mode, one that would have been): the source's
    /// offender record counts it.
    pub blocked_attempt: bool,
    /// Offsets of the PPPoE header, the IP header and the TCP segment; 0 when unknown.
    pub pppoe: usize,
    pub l3: usize,
    pub l4: usize,
}

impl Decision {
    #[inline(always)]
    pub fn pass(family: Family, reason: Reason) -> Self {
        Decision {
            verdict: Verdict::Pass,
            reason,
            family,
            group: 0,
            blocked_attempt: false,
            pppoe: 0,
            l3: 0,
            l4: 0,
        }
    }

    /// Worth an offender record and a drop event: dropped, rejected or monitored.
    #[inline(always)]
    pub fn noteworthy(&self) -> bool {
        !matches!(self.verdict, Verdict::Pass) || matches!(self.reason, Reason::Monitored)
    }
}

/// What the headers alone say about a frame.
pub enum Judged {
    /// Passed without looking at the source (not IP, not TCP, a later fragment, another
    /// port, unreadable headers without an address).
    Passed(Decision),
    /// The source's rule decides (see `decide::decide_source`): a TCP segment to a
    /// filtered port (reason `Port` until then), or a malformed frame whose source
    /// address is in it (reason `Malformed`). Offsets and family are set.
    NeedsSource(Decision),
}
